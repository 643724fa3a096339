//! In-memory implementations: a single node's rate limits, cache and pub/sub.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use super::{Cache, Decision, KvError, PubSub, RateLimiter};

/// Entries are swept when the map grows past this many, so idle keys cannot pile up.
const SWEEP_THRESHOLD: usize = 10_000;
/// Messages a slow local subscriber may lag behind before it loses the oldest.
const CHANNEL_CAPACITY: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Each key's current window: when it ends, and the hits in it. A key keeps the end of its
/// own window, so a sweep started by a key with a short window (the auth limit's minute)
/// never wipes the counters of longer ones (a tenant's fifteen minutes).
#[derive(Default)]
pub struct MemoryRateLimiter {
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn hit(&self, key: &str, limit: u32, window: Duration) -> Result<Decision, KvError> {
        let now = Instant::now();
        let mut windows = lock(&self.windows);
        if windows.len() > SWEEP_THRESHOLD {
            windows.retain(|_, (ends, _)| *ends > now);
        }
        let entry = windows.entry(key.to_owned()).or_insert((now + window, 0));
        if now >= entry.0 {
            *entry = (now + window, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        let reset_after = entry.0.saturating_duration_since(now);
        Ok(Decision {
            allowed: entry.1 <= limit,
            limit,
            remaining: limit.saturating_sub(entry.1),
            reset_after,
        })
    }
}

#[derive(Default)]
pub struct MemoryCache {
    entries: Mutex<HashMap<String, (Instant, Vec<u8>)>>,
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let mut entries = lock(&self.entries);
        match entries.get(key) {
            Some((expires, v)) if *expires > Instant::now() => Ok(Some(v.clone())),
            Some(_) => {
                entries.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), KvError> {
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        if entries.len() > SWEEP_THRESHOLD {
            entries.retain(|_, (expires, _)| *expires > now);
        }
        entries.insert(key.to_owned(), (now + ttl, value.to_vec()));
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        lock(&self.entries).remove(key);
        Ok(())
    }
}

#[derive(Default)]
pub struct MemoryPubSub {
    channels: Mutex<HashMap<String, broadcast::Sender<Vec<u8>>>>,
}

impl MemoryPubSub {
    /// The channel's sender, created on first use.
    pub fn sender(&self, channel: &str) -> broadcast::Sender<Vec<u8>> {
        let mut channels = lock(&self.channels);
        // Channels nobody listens to any more are dropped as new ones appear.
        if channels.len() > SWEEP_THRESHOLD {
            channels.retain(|_, tx| tx.receiver_count() > 0);
        }
        channels
            .entry(channel.to_owned())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .clone()
    }
}

#[async_trait]
impl PubSub for MemoryPubSub {
    async fn publish(&self, channel: &str, payload: &[u8]) -> Result<(), KvError> {
        // No subscriber is not an error: pub/sub is fire-and-forget.
        let _ = self.sender(channel).send(payload.to_vec());
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<BoxStream<'static, Vec<u8>>, KvError> {
        let rx = self.sender(channel).subscribe();
        Ok(BroadcastStream::new(rx)
            .filter_map(|m| async move { m.ok() })
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limiter_counts_and_resets() {
        let l = MemoryRateLimiter::default();
        let w = Duration::from_millis(200);
        assert!(l.hit("k", 2, w).await.expect("hit").allowed);
        let d = l.hit("k", 2, w).await.expect("hit");
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert!(!l.hit("k", 2, w).await.expect("hit").allowed);
        assert!(
            l.hit("other", 2, w).await.expect("hit").allowed,
            "keys are independent"
        );
        tokio::time::sleep(w).await;
        assert!(
            l.hit("k", 2, w).await.expect("hit").allowed,
            "a new window starts"
        );
    }

    #[tokio::test]
    async fn a_sweep_keeps_the_counters_of_longer_windows() {
        let l = MemoryRateLimiter::default();
        let long = Duration::from_secs(900);
        for _ in 0..3 {
            l.hit("tenant:a", 100, long).await.expect("hit");
        }
        // More keys than the sweep threshold, with a short window, all made within it (so
        // no sweep runs while they are made); once they have ended, the next hit sweeps.
        let short = Duration::from_millis(500);
        let made = std::time::Instant::now();
        for n in 0..=SWEEP_THRESHOLD {
            l.hit(&format!("ip:{n}"), 30, short).await.expect("hit");
        }
        assert!(
            made.elapsed() < short,
            "took {:?} to make the keys",
            made.elapsed()
        );
        tokio::time::sleep(short + Duration::from_millis(100)).await;
        l.hit("ip:last", 30, short).await.expect("hit");
        let d = l.hit("tenant:a", 100, long).await.expect("hit");
        assert_eq!(d.remaining, 96, "the tenant's four hits are all counted");
        assert!(
            lock(&l.windows).len() < 100,
            "the expired short windows were swept"
        );
    }

    #[tokio::test]
    async fn cache_expires() {
        let c = MemoryCache::default();
        c.set("a", b"1", Duration::from_millis(50))
            .await
            .expect("set");
        assert_eq!(c.get("a").await.expect("get"), Some(b"1".to_vec()));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(c.get("a").await.expect("get"), None);
        c.set("b", b"2", Duration::from_secs(5)).await.expect("set");
        c.delete("b").await.expect("delete");
        assert_eq!(c.get("b").await.expect("get"), None);
    }

    #[tokio::test]
    async fn pubsub_delivers_to_every_subscriber_of_the_channel() {
        let p = MemoryPubSub::default();
        let mut a = p.subscribe("c").await.expect("sub");
        let mut b = p.subscribe("c").await.expect("sub");
        let mut other = p.subscribe("d").await.expect("sub");
        p.publish("c", b"hello").await.expect("pub");
        assert_eq!(a.next().await, Some(b"hello".to_vec()));
        assert_eq!(b.next().await, Some(b"hello".to_vec()));
        let nothing = tokio::time::timeout(Duration::from_millis(50), other.next()).await;
        assert!(nothing.is_err(), "another channel gets nothing");
    }
}
