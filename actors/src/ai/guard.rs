//! What stands between the pipeline and a provider: a circuit breaker per credential, a
//! response cache, and each tenant's call rate. Plain state machines over an injected time,
//! tested without sleeping.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// A circuit's state as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

/// One credential's circuit: `threshold` failures in a row open it for `open_for`; then one
/// probe is let through (half-open): its success closes the circuit, its failure opens it
/// again.
#[derive(Debug, Clone)]
pub struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

impl Breaker {
    pub fn new() -> Self {
        Self {
            failures: 0,
            open_until: None,
            probing: false,
        }
    }

    pub fn state(&self, now: Instant) -> CircuitState {
        match self.open_until {
            None => CircuitState::Closed,
            Some(until) if now < until => CircuitState::Open,
            Some(_) => CircuitState::HalfOpen,
        }
    }

    /// May a call go out now? In half-open, only one (the probe) at a time.
    pub fn admit(&mut self, now: Instant) -> bool {
        match self.state(now) {
            CircuitState::Closed => true,
            CircuitState::Open => false,
            CircuitState::HalfOpen if self.probing => false,
            CircuitState::HalfOpen => {
                self.probing = true;
                true
            }
        }
    }

    pub fn success(&mut self) {
        *self = Self::new();
    }

    /// Returns `true` when this failure opened the circuit.
    pub fn failure(&mut self, now: Instant, threshold: u32, open_for: Duration) -> bool {
        self.failures += 1;
        let was_probe = self.probing;
        self.probing = false;
        if was_probe || self.failures >= threshold.max(1) {
            self.open_until = Some(now + open_for);
            return true;
        }
        false
    }
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new()
    }
}

/// Answers to identical requests (same agent version, same conversation), kept for `ttl`, at
/// most `capacity` of them, oldest out first. Each entry remembers its chat, so a chat's
/// entries can be dropped when its agent changes.
pub struct ResponseCache {
    capacity: usize,
    ttl: Duration,
    entries: HashMap<u64, (Instant, String, (Uuid, String))>,
    order: VecDeque<u64>,
}

impl ResponseCache {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            capacity,
            ttl,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn get(&self, key: u64, now: Instant) -> Option<String> {
        self.entries
            .get(&key)
            .filter(|(at, ..)| now.duration_since(*at) < self.ttl)
            .map(|(_, text, _)| text.clone())
    }

    pub fn put(&mut self, key: u64, text: String, chat: (Uuid, String), now: Instant) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.insert(key, (now, text, chat)).is_none() {
            self.order.push_back(key);
        }
        while self.entries.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
    }

    /// Drops every answer cached for a chat; returns how many.
    pub fn clear_chat(&mut self, session: Uuid, chat: &str) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, (_, _, (s, c))| !(*s == session && c == chat));
        self.order.retain(|k| self.entries.contains_key(k));
        before - self.entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A tenant's model calls in the last minute (a sliding window).
#[derive(Debug, Default, Clone)]
pub struct CallWindow {
    calls: VecDeque<Instant>,
}

impl CallWindow {
    const WINDOW: Duration = Duration::from_secs(60);

    fn trim(&mut self, now: Instant) {
        while self
            .calls
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Self::WINDOW)
        {
            self.calls.pop_front();
        }
    }

    /// Takes a call if the tenant has room; otherwise how long until it has.
    pub fn take(&mut self, now: Instant, per_minute: u32) -> Result<(), Duration> {
        self.trim(now);
        if per_minute == 0 || self.calls.len() < per_minute as usize {
            self.calls.push_back(now);
            return Ok(());
        }
        let oldest = self.calls.front().copied().unwrap_or(now);
        Err(Self::WINDOW.saturating_sub(now.duration_since(oldest)))
    }

    pub fn used(&mut self, now: Instant) -> usize {
        self.trim(now);
        self.calls.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_circuit_opens_after_repeated_failures_and_a_probe_closes_it() {
        let t0 = Instant::now();
        let open_for = Duration::from_secs(30);
        let mut b = Breaker::new();
        assert!(b.admit(t0));
        assert!(!b.failure(t0, 3, open_for));
        assert!(!b.failure(t0, 3, open_for));
        assert!(b.failure(t0, 3, open_for));
        assert_eq!(b.state(t0), CircuitState::Open);
        assert!(!b.admit(t0 + Duration::from_secs(29)));
        // Half-open: one probe, the next call waits for it.
        let later = t0 + Duration::from_secs(31);
        assert_eq!(b.state(later), CircuitState::HalfOpen);
        assert!(b.admit(later));
        assert!(!b.admit(later));
        // A failed probe opens it again at once.
        assert!(b.failure(later, 3, open_for));
        assert!(!b.admit(later + Duration::from_secs(1)));
        let again = later + Duration::from_secs(31);
        assert!(b.admit(again));
        b.success();
        assert_eq!(b.state(again), CircuitState::Closed);
        assert!(b.admit(again));
    }

    #[test]
    fn the_cache_expires_is_bounded_and_forgets_a_chat() {
        let t0 = Instant::now();
        let s = Uuid::new_v4();
        let mut c = ResponseCache::new(2, Duration::from_secs(10));
        c.put(1, "one".into(), (s, "+1".into()), t0);
        c.put(2, "two".into(), (s, "+2".into()), t0);
        assert_eq!(c.get(1, t0).as_deref(), Some("one"));
        assert_eq!(c.get(1, t0 + Duration::from_secs(11)), None);
        c.put(3, "three".into(), (s, "+1".into()), t0);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(1, t0), None, "the oldest went first");
        assert_eq!(c.clear_chat(s, "+1"), 1);
        assert_eq!(c.get(3, t0), None);
        assert_eq!(c.get(2, t0).as_deref(), Some("two"));
    }

    #[test]
    fn a_tenant_gets_its_calls_per_minute_then_waits_for_the_oldest() {
        let t0 = Instant::now();
        let mut w = CallWindow::default();
        assert!(w.take(t0, 2).is_ok());
        assert!(w.take(t0 + Duration::from_secs(10), 2).is_ok());
        let wait = w.take(t0 + Duration::from_secs(20), 2).unwrap_err();
        assert_eq!(wait, Duration::from_secs(40));
        assert!(w.take(t0 + Duration::from_secs(60), 2).is_ok());
        assert!(w.take(t0, 0).is_ok(), "0: unlimited");
    }
}
