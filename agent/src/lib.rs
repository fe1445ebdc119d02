//! edgevisor's node agent: tells the control plane above what this node can do, runs guests
//! for it (one supervised `edgevisor` process each) and exports their metrics.
//!
//! Part A (guest lifecycle): [`http`] (the small HTTP/1.1 server side), [`server`] (routes,
//! authentication, connection threads), [`supervisor`] (guests and their VM processes),
//! [`store`] (state on disk), [`process`] (spawning and /proc), [`sampling`] (VM readings
//! for metrics). Part B (node facts and
//! metrics): [`capabilities`], [`metrics`], [`nfd`], [`push`].

pub mod capabilities;
pub mod metrics;
pub mod nfd;
pub mod push;

pub mod http;
pub mod jail;
pub mod process;
pub mod sampling;
pub mod server;
pub mod store;
pub mod supervisor;
