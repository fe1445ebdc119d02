//! edgevisor's node agent: tells the control plane above what this node can do, runs guests
//! for it (one supervised `edgevisor` process each) and exports their metrics.

pub mod capabilities;
pub mod metrics;
pub mod nfd;
pub mod push;
