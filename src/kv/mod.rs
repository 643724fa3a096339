//! Short-lived shared state: rate-limit counters, a small cache and pub/sub.
//!
//! With `redis.url` set these live in Redis so every node sees the same counters and messages;
//! without it (or while Redis is failing) the in-memory implementations answer, so a single node
//! never depends on Redis. [`Ephemeral`] chooses per call and remembers Redis' health: one warning
//! when it starts failing, a gauge while the fallback is in use, and a retry every
//! `redis.retry_interval_secs`.

mod memory;
mod redis_backend;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::BoxStream;

pub use memory::{MemoryCache, MemoryPubSub, MemoryRateLimiter};
pub use redis_backend::RedisBackend;

/// What a rate limiter says about one more request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Until the current window ends.
    pub reset_after: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KvError(pub String);

/// Fixed-window counters: `limit` hits per `window` per key.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    async fn hit(&self, key: &str, limit: u32, window: Duration) -> Result<Decision, KvError>;
}

/// A byte cache whose entries expire.
#[async_trait]
pub trait Cache: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), KvError>;
    async fn delete(&self, key: &str) -> Result<(), KvError>;
}

/// Fire-and-forget messages on named channels, delivered to whoever listens at that moment.
#[async_trait]
pub trait PubSub: Send + Sync {
    async fn publish(&self, channel: &str, payload: &[u8]) -> Result<(), KvError>;
    async fn subscribe(&self, channel: &str) -> Result<BoxStream<'static, Vec<u8>>, KvError>;
}

/// Tracks whether Redis answers, so a dead Redis costs one warning and not one timeout a request.
#[derive(Debug)]
pub struct RedisHealth {
    degraded: AtomicBool,
    last_failure: std::sync::Mutex<Option<Instant>>,
    retry_interval: Duration,
}

impl RedisHealth {
    fn new(retry_interval: Duration) -> Self {
        Self {
            degraded: AtomicBool::new(false),
            last_failure: std::sync::Mutex::new(None),
            retry_interval,
        }
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn should_try(&self) -> bool {
        if !self.is_degraded() {
            return true;
        }
        let mut last = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        match *last {
            Some(at) if at.elapsed() < self.retry_interval => false,
            _ => {
                // Let one caller probe; the others keep using the fallback meanwhile.
                *last = Some(Instant::now());
                true
            }
        }
    }

    fn failed(&self, what: &str, error: &KvError) {
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, operation = what, "Redis is failing; using the in-memory fallback");
            crate::metrics::REDIS_FALLBACK_ACTIVE.set(1);
        }
    }

    fn succeeded(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis answers again; leaving the in-memory fallback");
            crate::metrics::REDIS_FALLBACK_ACTIVE.set(0);
        }
    }
}

/// Redis when configured and healthy, memory otherwise.
pub struct Ephemeral {
    redis: Option<RedisBackend>,
    health: RedisHealth,
    op_timeout: Duration,
    limiter: MemoryRateLimiter,
    cache: MemoryCache,
    pubsub: MemoryPubSub,
}

impl Ephemeral {
    /// In memory only (no `redis.url`).
    pub fn in_memory() -> Self {
        Self {
            redis: None,
            health: RedisHealth::new(Duration::from_secs(5)),
            op_timeout: Duration::from_millis(250),
            limiter: MemoryRateLimiter::default(),
            cache: MemoryCache::default(),
            pubsub: MemoryPubSub::default(),
        }
    }

    /// Backed by Redis at `url`. Redis need not be up yet: until it is, memory answers.
    pub fn with_redis(
        url: &str,
        op_timeout: Duration,
        retry_interval: Duration,
    ) -> anyhow::Result<Self> {
        let mut this = Self::in_memory();
        this.health = RedisHealth::new(retry_interval);
        this.op_timeout = op_timeout;
        this.redis = Some(RedisBackend::new(url, op_timeout, retry_interval)?);
        crate::metrics::REDIS_FALLBACK_ACTIVE.set(0);
        Ok(this)
    }

    pub fn redis_configured(&self) -> bool {
        self.redis.is_some()
    }

    pub fn health(&self) -> &RedisHealth {
        &self.health
    }

    /// Pings Redis now, even while it is marked failing (readiness): `None` when Redis is not
    /// configured.
    pub async fn ping_redis(&self) -> Option<Result<(), KvError>> {
        let redis = self.redis.as_ref()?;
        Some(self.run_redis("ping", redis.ping()).await)
    }

    /// Runs `op` on Redis when Redis is configured and worth trying; `None` means "use the
    /// fallback".
    async fn try_redis<'a, T, Fut>(
        &'a self,
        what: &str,
        op: impl FnOnce(&'a RedisBackend) -> Fut,
    ) -> Option<T>
    where
        Fut: std::future::Future<Output = Result<T, KvError>>,
    {
        let redis = self.redis.as_ref()?;
        if !self.health.should_try() {
            return None;
        }
        self.run_redis(what, op(redis)).await.ok()
    }

    /// Runs one Redis operation under the operation timeout and records the outcome in the
    /// health state.
    async fn run_redis<T>(
        &self,
        what: &str,
        op: impl std::future::Future<Output = Result<T, KvError>>,
    ) -> Result<T, KvError> {
        let result = match tokio::time::timeout(self.op_timeout, op).await {
            Ok(r) => r,
            Err(_) => Err(KvError(format!("no answer within {:?}", self.op_timeout))),
        };
        match &result {
            Ok(_) => self.health.succeeded(),
            Err(e) => self.health.failed(what, e),
        }
        result
    }
}

#[async_trait]
impl RateLimiter for Ephemeral {
    async fn hit(&self, key: &str, limit: u32, window: Duration) -> Result<Decision, KvError> {
        if let Some(d) = self
            .try_redis("rate_limit", |r| r.hit(key, limit, window))
            .await
        {
            return Ok(d);
        }
        self.limiter.hit(key, limit, window).await
    }
}

#[async_trait]
impl Cache for Ephemeral {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        if let Some(v) = self.try_redis("cache_get", |r| r.get(key)).await {
            return Ok(v);
        }
        self.cache.get(key).await
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), KvError> {
        if self
            .try_redis("cache_set", |r| r.set(key, value, ttl))
            .await
            .is_some()
        {
            return Ok(());
        }
        self.cache.set(key, value, ttl).await
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        // Delete on both sides: a value may have been written to either.
        let _ = self.try_redis("cache_delete", |r| r.delete(key)).await;
        self.cache.delete(key).await
    }
}

#[async_trait]
impl PubSub for Ephemeral {
    async fn publish(&self, channel: &str, payload: &[u8]) -> Result<(), KvError> {
        if self
            .try_redis("publish", |r| r.publish(channel, payload))
            .await
            .is_some()
        {
            return Ok(());
        }
        // Redis is absent or failing: reach at least this node's subscribers.
        self.pubsub.publish(channel, payload).await
    }

    async fn subscribe(&self, channel: &str) -> Result<BoxStream<'static, Vec<u8>>, KvError> {
        let local = self.pubsub.subscribe(channel).await?;
        match &self.redis {
            None => Ok(local),
            // The Redis relay feeds the same local channel (and re-subscribes after an outage),
            // so a subscriber sees messages from every node, or from this one while Redis is down.
            Some(redis) => {
                redis.relay_into(channel, self.pubsub.sender(channel));
                Ok(local)
            }
        }
    }
}
