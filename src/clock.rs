//! Injected time, so that expiry, skew and rotation tests are exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The source of "now" for every time-dependent decision (token expiry, clock skew, signing).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Wall-clock time.
    fn now(&self) -> SystemTime;

    /// Seconds since the Unix epoch, as JWT claims count time.
    fn unix(&self) -> i64 {
        match self.now().duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    }
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to; for tests and benches.
#[derive(Debug, Clone)]
pub struct ManualClock {
    unix: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock stopped at `unix` seconds.
    pub fn at(unix: i64) -> Self {
        ManualClock {
            unix: Arc::new(AtomicI64::new(unix)),
        }
    }

    /// Moves the clock forward (or back, with a negative step).
    pub fn advance(&self, secs: i64) {
        self.unix.fetch_add(secs, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, unix: i64) {
        self.unix.store(unix, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.unix.load(Ordering::SeqCst).max(0) as u64)
    }
}

/// Shared handle to the clock in use.
pub type SharedClock = Arc<dyn Clock>;
