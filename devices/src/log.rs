//! Rate-limited log lines for anything a guest can trigger (a malformed descriptor chain, an
//! unknown register): a hostile guest must not be able to flood the host's logs or spend the
//! VMM's time writing them.
//!
//! Each call site owns one [`RateLimited`] (usually a `static`). It lets [`BURST`] lines
//! through per [`WINDOW`]; later lines in the same window are counted, and the first line of
//! the next window is preceded by one that says how many were suppressed.

use std::fmt;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines allowed per window and call site.
pub const BURST: u32 = 10;
/// Length of a window.
pub const WINDOW: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    printed: u32,
    suppressed: u64,
}

/// One call site's limiter.
#[derive(Debug)]
pub struct RateLimited {
    window: Mutex<Window>,
}

impl Default for RateLimited {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimited {
    /// A limiter with an empty window (usable in a `static`).
    pub const fn new() -> RateLimited {
        RateLimited {
            window: Mutex::new(Window {
                start: None,
                printed: 0,
                suppressed: 0,
            }),
        }
    }

    /// Decides what to print for a line logged at `now`: nothing when over the limit,
    /// else the line, preceded by a note of what the previous window suppressed.
    pub fn admit(&self, now: Instant, line: fmt::Arguments) -> Option<String> {
        let mut w = match self.window.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut out = String::new();
        let expired = w
            .start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW);
        if expired {
            if w.suppressed > 0 {
                out.push_str(&format!(
                    "edgevisor: {} similar guest-triggered messages suppressed\n",
                    w.suppressed
                ));
            }
            *w = Window {
                start: Some(now),
                printed: 0,
                suppressed: 0,
            };
        }
        if w.printed >= BURST {
            w.suppressed += 1;
            return None;
        }
        w.printed += 1;
        out.push_str(&format!("edgevisor: {line}\n"));
        Some(out)
    }

    /// Logs a guest-triggered warning to stderr, within the limit.
    pub fn warn(&self, line: fmt::Arguments) {
        if let Some(text) = self.admit(Instant::now(), line) {
            let _ = std::io::stderr().lock().write_all(text.as_bytes());
        }
    }

    /// Lines suppressed so far in the current window.
    pub fn suppressed(&self) -> u64 {
        self.window.lock().map(|w| w.suppressed).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_a_burst_through_then_counts_and_reports_the_rest() {
        let log = RateLimited::new();
        let t0 = Instant::now();
        for i in 0..BURST {
            let out = log.admit(t0, format_args!("bad chain {i}")).unwrap();
            assert_eq!(out, format!("edgevisor: bad chain {i}\n"));
        }
        for _ in 0..1000 {
            assert!(log
                .admit(t0 + Duration::from_secs(1), format_args!("x"))
                .is_none());
        }
        assert_eq!(log.suppressed(), 1000);
        let out = log.admit(t0 + WINDOW, format_args!("again")).unwrap();
        assert_eq!(
            out,
            "edgevisor: 1000 similar guest-triggered messages suppressed\nedgevisor: again\n"
        );
        assert_eq!(log.suppressed(), 0);
    }

    #[test]
    fn a_quiet_window_reports_nothing_suppressed() {
        let log = RateLimited::new();
        let t0 = Instant::now();
        assert!(log.admit(t0, format_args!("one")).is_some());
        let out = log.admit(t0 + WINDOW * 3, format_args!("two")).unwrap();
        assert_eq!(out, "edgevisor: two\n");
    }
}
