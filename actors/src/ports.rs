//! Ports: what the actors need from the outside world, implemented by the server crate.

use std::time::SystemTime;

/// Wall-clock time, injectable so timing logic can be tested without sleeping.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}
