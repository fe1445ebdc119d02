//! The device event loop: one thread running an event-manager `EventManager` that waits on
//! every virtio device's queue-kick eventfds and back-end descriptors.
//!
//! A kick (the guest's QueueNotify write, turned into an eventfd signal by KVM's ioeventfd)
//! wakes [`DeviceSubscriber::process`], which drains the eventfd and calls
//! [`VirtioDevice::queue_notified`] with the device locked. Back-end events (a TAP with a
//! frame, a vsock socket) go to [`VirtioDevice::backend_event`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::counters::{bump, VirtioCounters};
use super::{MmioTransport, VirtioDevice, BACKEND_EVENT_BASE};
use crate::log::RateLimited;

static LOG: RateLimited = RateLimited::new();

/// Serves one device on the event loop.
pub struct DeviceSubscriber {
    device: Arc<Mutex<dyn VirtioDevice>>,
    queue_events: Vec<Arc<EventFd>>,
    active: Arc<AtomicBool>,
    counters: Arc<VirtioCounters>,
}

impl DeviceSubscriber {
    /// A subscriber for the device behind `transport` (sharing its kick eventfds).
    pub fn new(transport: &MmioTransport) -> std::io::Result<DeviceSubscriber> {
        let queue_events = transport.queue_events().to_vec();
        Ok(DeviceSubscriber {
            device: transport.device(),
            queue_events,
            active: transport.active_flag(),
            counters: transport.counters(),
        })
    }

    fn device(&self) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
        match self.device.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl MutEventSubscriber for DeviceSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let kicks = if self.device().handles_kicks_itself() {
            &[][..]
        } else {
            &self.queue_events[..]
        };
        for (index, event) in kicks.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(&**event, index as u32, EventSet::IN)) {
                LOG.warn(format_args!("cannot watch queue {index} kicks: {e:?}"));
            }
        }
        let backend = self.device().backend_events();
        for (fd, data, set) in backend {
            if let Err(e) = ops.add(Events::with_data_raw(fd, data, set)) {
                LOG.warn(format_args!("cannot watch a device back end: {e:?}"));
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let data = events.data();
        if data >= BACKEND_EVENT_BASE {
            self.device().backend_event(events, ops);
            return;
        }
        let index = data as usize;
        let Some(event) = self.queue_events.get(index) else {
            return;
        };
        // Drain the kick; an empty read (EAGAIN) just means a spurious wake-up.
        if event.read().is_err() {
            return;
        }
        bump(&self.counters.kicks, 1);
        if self.active.load(Ordering::SeqCst) {
            self.device().queue_notified(index);
        }
    }
}

/// Ends the loop when its eventfd is written.
struct StopSubscriber {
    event: EventFd,
    stop: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.event, EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.event.read();
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A running event loop.
pub struct EventLoop {
    stop_event: EventFd,
    thread: Option<JoinHandle<()>>,
}

/// Why the event loop could not start.
#[derive(Debug, thiserror::Error)]
#[error("could not start the device event loop: {0}")]
pub struct EventLoopError(String);

impl EventLoop {
    /// Starts a thread named `edgevisor-io` serving `subscribers`. `on_start` runs first on
    /// that thread (the VMM installs the thread's seccomp filter there); if it fails the
    /// loop does not run.
    pub fn spawn(
        subscribers: Vec<DeviceSubscriber>,
        on_start: Box<dyn FnOnce() -> Result<(), String> + Send>,
    ) -> Result<EventLoop, EventLoopError> {
        let err = |e: &dyn std::fmt::Debug| EventLoopError(format!("{e:?}"));
        let mut manager: EventManager<Box<dyn MutEventSubscriber + Send>> =
            EventManager::new().map_err(|e| err(&e))?;
        let stop_event = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| err(&e))?;
        let stop = Arc::new(AtomicBool::new(false));
        use event_manager::SubscriberOps;
        manager.add_subscriber(Box::new(StopSubscriber {
            event: stop_event.try_clone().map_err(|e| err(&e))?,
            stop: stop.clone(),
        }));
        for s in subscribers {
            manager.add_subscriber(Box::new(s));
        }
        let thread = std::thread::Builder::new()
            .name("edgevisor-io".into())
            .spawn(move || {
                if let Err(e) = on_start() {
                    eprintln!("edgevisor: the device event loop did not start: {e}");
                    return;
                }
                while !stop.load(Ordering::SeqCst) {
                    if let Err(e) = manager.run() {
                        // EINTR from the vCPU kick signal is harmless; anything else ends
                        // the loop, and the devices stop answering.
                        if !matches!(&e, event_manager::Error::Epoll(errno) if errno.errno() == libc::EINTR)
                        {
                            eprintln!("edgevisor: the device event loop failed: {e}");
                            return;
                        }
                    }
                }
            })
            .map_err(|e| err(&e))?;
        Ok(EventLoop {
            stop_event,
            thread: Some(thread),
        })
    }

    /// Stops the loop and joins its thread.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.stop_event.write(1);
            let _ = thread.join();
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop();
    }
}
