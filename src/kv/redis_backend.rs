//! Redis implementations, shared by every node pointed at the same Redis.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bb8_redis::RedisConnectionManager;
use bb8_redis::redis::{self, AsyncCommands};
use futures::StreamExt;
use tokio::sync::broadcast;

use super::{Decision, KvError};

const KEY_PREFIX: &str = "wagate:";

fn err(e: impl std::fmt::Display) -> KvError {
    KvError(e.to_string())
}

pub struct RedisBackend {
    client: redis::Client,
    pool: bb8::Pool<RedisConnectionManager>,
    relayed: Arc<Mutex<HashSet<String>>>,
    retry_interval: Duration,
}

impl RedisBackend {
    /// Builds the pool lazily: Redis may be down now and come up later.
    pub fn new(url: &str, op_timeout: Duration, retry_interval: Duration) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let manager = RedisConnectionManager::new(url)?;
        let pool = bb8::Pool::builder()
            .max_size(16)
            .min_idle(Some(0))
            .connection_timeout(op_timeout)
            .retry_connection(false)
            .build_unchecked(manager);
        Ok(Self {
            client,
            pool,
            relayed: Arc::default(),
            retry_interval,
        })
    }

    async fn conn(&self) -> Result<bb8::PooledConnection<'_, RedisConnectionManager>, KvError> {
        self.pool.get().await.map_err(err)
    }

    pub async fn ping(&self) -> Result<(), KvError> {
        let mut c = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut *c).await.map_err(err)?;
        Ok(())
    }

    pub async fn hit(&self, key: &str, limit: u32, window: Duration) -> Result<Decision, KvError> {
        let key = format!("{KEY_PREFIX}rl:{key}");
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let mut c = self.conn().await?;
        // One round trip, atomic: count, start the window on the first hit, read what is left.
        let (count, _, ttl_ms): (u64, i64, i64) = redis::pipe()
            .atomic()
            .incr(&key, 1)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(window_ms)
            .arg("NX")
            .cmd("PTTL")
            .arg(&key)
            .query_async(&mut *c)
            .await
            .map_err(err)?;
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        let reset_after = Duration::from_millis(u64::try_from(ttl_ms.max(0)).unwrap_or(0));
        Ok(Decision {
            allowed: count <= limit,
            limit,
            remaining: limit.saturating_sub(count),
            reset_after,
        })
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let mut c = self.conn().await?;
        c.get(format!("{KEY_PREFIX}cache:{key}")).await.map_err(err)
    }

    pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), KvError> {
        let mut c = self.conn().await?;
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        c.pset_ex::<_, _, ()>(format!("{KEY_PREFIX}cache:{key}"), value, ms)
            .await
            .map_err(err)
    }

    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        let mut c = self.conn().await?;
        c.del::<_, ()>(format!("{KEY_PREFIX}cache:{key}"))
            .await
            .map_err(err)
    }

    pub async fn publish(&self, channel: &str, payload: &[u8]) -> Result<(), KvError> {
        let mut c = self.conn().await?;
        c.publish::<_, _, ()>(format!("{KEY_PREFIX}ps:{channel}"), payload)
            .await
            .map_err(err)
    }

    /// Starts (once per channel) a task that copies the Redis channel into the local one,
    /// re-subscribing after Redis outages for as long as anyone listens locally.
    pub fn relay_into(&self, channel: &str, local: broadcast::Sender<Vec<u8>>) {
        {
            let mut relayed = self.relayed.lock().unwrap_or_else(|p| p.into_inner());
            if !relayed.insert(channel.to_owned()) {
                return;
            }
        }
        let client = self.client.clone();
        let relayed = Arc::clone(&self.relayed);
        let channel = channel.to_owned();
        let redis_channel = format!("{KEY_PREFIX}ps:{channel}");
        let retry = self.retry_interval;
        tokio::spawn(async move {
            while local.receiver_count() > 0 {
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => {
                        if let Err(e) = pubsub.subscribe(&redis_channel).await {
                            tracing::debug!(error = %e, "Redis subscribe failed");
                        } else {
                            let mut messages = pubsub.on_message();
                            while let Some(msg) = messages.next().await {
                                let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
                                if local.send(payload).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "Redis pub/sub connection failed"),
                }
                tokio::time::sleep(retry).await;
            }
            relayed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&channel);
        });
    }
}
