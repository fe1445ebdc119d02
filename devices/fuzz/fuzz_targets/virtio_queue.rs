//! Descriptor chains from arbitrary guest memory: the input lays out guest RAM (one or two
//! regions, adjacent or with a hole), the queue configuration, the descriptor table and the
//! available ring, then a sequence of operations a device performs (pop, complete, undo,
//! notification handling, a `RequestQueue::drain`). Every chain `QueueHandler::pop` accepts
//! must satisfy the checks `DescriptorChainView::walk` promises, and reading or writing it
//! must stay inside guest memory (the guard pages around each region turn a stray access
//! into a crash).
#![no_main]

use std::sync::Arc;

use devices::log::RateLimited;
use devices::virtio::queue::{DescriptorChainView, Popped, QueueHandler, RequestQueue};
use devices::virtio::{Interrupt, VirtioCounters};
use devices_fuzz::{Input, MemLayout, Memory, RingSpec};
use libfuzzer_sys::fuzz_target;
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

const MAX_QUEUE: u16 = 256;
/// Device operations per input at most.
const MAX_OPS: usize = 64;

static LOG: RateLimited = RateLimited::new();

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let layout = MemLayout::from_input(&mut input);
    let mem = layout.build();
    let spec = RingSpec::from_input(&mut input, &layout, MAX_QUEUE);
    let Some(queue) = spec.queue(&mem, MAX_QUEUE) else {
        return;
    };
    spec.fill(&mem, &layout, &mut input);

    let counters = Arc::new(VirtioCounters::default());
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let mut rq = RequestQueue {
        mem: mem.clone(),
        queue: QueueHandler::new(queue),
        interrupt: Arc::new(Interrupt::new(irq, counters.clone())),
    };
    let mut popped_head: Option<u16> = None;
    for _ in 0..MAX_OPS {
        if input.remaining() == 0 {
            break;
        }
        let handler = &mut rq.queue;
        match input.u8() % 8 {
            0..=2 => match handler.pop(&mem) {
                Some(Popped::Chain(view)) => {
                    check_chain(&layout, &spec, &view);
                    exercise(&mem, &view, &mut input);
                    popped_head = Some(view.head);
                }
                Some(Popped::Malformed(e)) => {
                    let _ = e.to_string();
                    popped_head = None;
                }
                None => popped_head = None,
            },
            3 => {
                if let Some(head) = popped_head.take() {
                    let _ = handler.complete(&mem, head, input.u32());
                }
            }
            4 => {
                // Only right after a pop, as net's RX path does.
                if popped_head.take().is_some() {
                    handler.undo_pop();
                }
            }
            5 => {
                let _ = handler.enable_notification(&mem);
            }
            6 => {
                let _ = handler.needs_notification(&mem);
                let _ = handler.pending(&mem);
            }
            _ => {
                popped_head = None;
                let skip = u64::from(input.u16());
                rq.drain(&counters, &LOG, "fuzz", |mem, chain| {
                    check_chain(&layout, &spec, chain);
                    let data = [0xa5u8; 512];
                    let written = chain.write_at(mem, skip, &data).unwrap_or(0);
                    assert!(written as u64 <= chain.writable_len());
                    written as u32
                });
            }
        }
    }
});

/// What `walk` promises about an accepted chain, checked against the layout (not against
/// the memory object the code under test consulted).
fn check_chain(layout: &MemLayout, spec: &RingSpec, view: &DescriptorChainView) {
    assert!(
        view.head < spec.size,
        "head {} in a queue of {}",
        view.head,
        spec.size
    );
    let count = view.readable.len() + view.writable.len();
    assert!(
        count <= usize::from(spec.size),
        "{count} descriptors in a queue of {}",
        spec.size
    );
    for s in view.readable.iter().chain(&view.writable) {
        assert!(
            layout.contains(s.addr.0, u64::from(s.len)),
            "accepted buffer {:#x}+{:#x} is not inside one region of {:x?}",
            s.addr.0,
            s.len,
            layout.regions
        );
    }
    assert!(view.readable_len() + view.writable_len() <= u64::from(u32::MAX));
}

/// Reads and writes the chain the ways devices do, from an input-chosen offset.
fn exercise(mem: &Memory, view: &DescriptorChainView, input: &mut Input) {
    let readable = view.readable_len();
    let writable = view.writable_len();
    let skip = u64::from(input.u32()) % (readable.max(writable) + 2);

    let mut buf = vec![0u8; usize::from(input.u16() % 4096)];
    let got = view
        .read_at(mem, skip, &mut buf)
        .expect("read_at on a valid chain");
    assert_eq!(
        got as u64,
        (buf.len() as u64).min(readable.saturating_sub(skip))
    );

    let put = view
        .write_at(mem, skip, &buf)
        .expect("write_at on a valid chain");
    assert_eq!(
        put as u64,
        (buf.len() as u64).min(writable.saturating_sub(skip))
    );

    for (slices, total) in [
        (view.readable_slices(mem, skip), readable),
        (view.writable_slices(mem, skip), writable),
    ] {
        let slices = slices.expect("slices of a valid chain");
        let sum: u64 = slices.iter().map(|s| s.len() as u64).sum();
        assert_eq!(sum, total.saturating_sub(skip));
        for s in &slices {
            // First and last byte: a slice reaching past its region hits a guard page.
            if !s.is_empty() {
                let first: u8 = s.read_obj(0).expect("first byte of a slice");
                let _: u8 = s.read_obj(s.len() - 1).expect("last byte of a slice");
                s.write_obj(first, 0).expect("writing a slice");
            }
        }
    }
}
