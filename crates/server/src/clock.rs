//! The server's one source of wall-clock time.
//!
//! Every expiry, window, throttle decision and keep-alive reads time from
//! the [`Clock`] held in `ServerState` (`state.now_ms()`), never from the
//! operating system directly, so that tests can move time by hand
//! ([`ManualClock`]) instead of sleeping. Durations the runtime itself
//! waits for (socket timeouts, flush intervals) stay on tokio's timer.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where the server reads the time of day.
pub trait Clock: Send + Sync + 'static {
    /// Unix time in milliseconds.
    fn now_ms(&self) -> u64;
}

/// The operating system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock standing at the operating system's time now.
    pub fn new() -> Arc<ManualClock> {
        ManualClock::at(SystemClock.now_ms())
    }

    /// A clock standing at `ms` (Unix milliseconds).
    pub fn at(ms: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now: AtomicU64::new(ms),
        })
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.now.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `ms` (Unix milliseconds).
    pub fn set(&self, ms: u64) {
        self.now.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// The clock a server is configured with (the system's by default).
#[derive(Clone)]
pub struct ClockHandle(pub Arc<dyn Clock>);

impl ClockHandle {
    /// Unix time in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }

    /// Unix time in seconds.
    pub fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }
}

impl Default for ClockHandle {
    fn default() -> ClockHandle {
        ClockHandle(Arc::new(SystemClock))
    }
}

impl<C: Clock> From<Arc<C>> for ClockHandle {
    fn from(c: Arc<C>) -> ClockHandle {
        ClockHandle(c)
    }
}

impl fmt::Debug for ClockHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClockHandle")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at(1_000);
        let h = ClockHandle::from(c.clone());
        assert_eq!(h.now_ms(), 1_000);
        c.advance(Duration::from_millis(2_500));
        assert_eq!(h.now_ms(), 3_500);
        assert_eq!(h.now_secs(), 3);
        c.set(10);
        assert_eq!(h.now_ms(), 10);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }

    /// Nothing in the server reads the time of day but [`SystemClock`]:
    /// every other module takes it from the configured clock.
    #[test]
    fn only_the_system_clock_reads_the_os_clock() {
        fn walk(dir: &std::path::Path, found: &mut Vec<String>) {
            let entries = std::fs::read_dir(dir).expect("read src");
            for e in entries {
                let path = e.expect("entry").path();
                if path.is_dir() {
                    walk(&path, found);
                } else if path.extension().is_some_and(|x| x == "rs") && !path.ends_with("clock.rs")
                {
                    let text = std::fs::read_to_string(&path).expect("read");
                    if text.contains("SystemTime") || text.contains("UNIX_EPOCH") {
                        found.push(path.display().to_string());
                    }
                }
            }
        }
        let mut found = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut found,
        );
        assert!(found.is_empty(), "reading the OS clock: {found:?}");
    }
}
