//! Verified credentials kept in memory, so an authenticated request costs no database round
//! trip — and a revoked key or a deleted tenant fails at the very next request on the node
//! that made the change, and on every other node as soon as its listener has read the notice
//! Postgres sent it at the commit (milliseconds).
//!
//! Postgres tells every node: a trigger on `api_keys` (migration
//! `2026-12-03-000009_credential_changes`) sends `NOTIFY wagate_credentials, '<tenant id>'`
//! whenever a key is revoked, changes role or is deleted (a tenant's deletion cascades to its
//! keys), in the transaction that makes the change, so the notice goes out exactly when the
//! change commits. Each node LISTENs on a connection of its own and drops that tenant's
//! entries. While a node is not listening (starting, or its connection lost) it caches
//! nothing and every request reads the key's row, as before; when it listens again it starts
//! from an empty cache, since it may have missed notices.
//!
//! The node that makes a change also drops the entries itself, at once, and waits (briefly)
//! until its own listener has heard the notice: every other node's listener was sent the
//! same notice at the same commit, so by the time the change is answered the whole fleet has
//! been told (each node drops the entries when its listener task reads the notice, which on a
//! loaded node may be a little after the answer).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use uuid::Uuid;

use super::Role;

/// The Postgres channel the trigger notifies.
pub const CHANNEL: &str = "wagate_credentials";

/// How long a change waits for its own notice to come back before answering anyway.
const ECHO_WAIT: Duration = Duration::from_secs(2);

/// A listener whose connection failed tries again after this long.
const RELISTEN_AFTER: Duration = Duration::from_secs(1);

/// A verified credential: an API key (by its prefix) or the key a JWT was traded for (by id).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CredentialKey {
    Prefix(String),
    KeyId(Uuid),
    /// A member, for their login tokens.
    Member(Uuid),
}

/// What a cached credential stands for.
#[derive(Debug, Clone)]
pub struct CachedKey {
    pub tenant_id: Uuid,
    pub key_id: Uuid,
    pub role: Role,
    /// The SHA-256 of the key's secret, checked on every request that presents the key (a
    /// token's signature is checked instead).
    pub secret_hash: Vec<u8>,
    /// When the key's use was last recorded (`api_keys.last_used_at`), so a cached key is
    /// still touched about once a minute.
    pub last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    /// A member's role and credentials version (a token names the version it was issued
    /// under); `None` for an API key.
    pub member: Option<(super::permissions::MemberRole, u32)>,
}

struct Entries {
    map: HashMap<CredentialKey, CachedKey>,
    /// Bumped by every invalidation: a row read before an invalidation must not be cached
    /// after it (it may be the revoked key).
    generation: u64,
}

/// The node's cache of verified credentials (see the module's notes).
pub struct CredentialCache {
    /// Where the listener connects (its own connection, outside the pool).
    database_url: String,
    entries: std::sync::Mutex<Entries>,
    capacity: usize,
    /// Whether this node hears other nodes' changes; nothing is cached while it does not.
    listening: AtomicBool,
    /// Notices heard per tenant, so a change can wait for its own.
    heard: tokio::sync::watch::Sender<HashMap<Uuid, u64>>,
}

/// A ticket taken before a lookup: the generation it may be cached under.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(Option<u64>);

/// Taken before a change to a tenant's credentials; [`CredentialCache::changed`] then waits
/// until this node has heard the change's notice.
pub struct PendingChange {
    tenant: Uuid,
    heard_before: u64,
}

impl CredentialCache {
    pub fn new(capacity: usize, database_url: String) -> Arc<Self> {
        Arc::new(Self {
            database_url,
            entries: std::sync::Mutex::new(Entries {
                map: HashMap::new(),
                generation: 0,
            }),
            capacity,
            listening: AtomicBool::new(false),
            heard: tokio::sync::watch::Sender::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding this lock leaves plain data behind: keep using it.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, key: &CredentialKey) -> Option<CachedKey> {
        if !self.listening.load(Ordering::Acquire) {
            return None;
        }
        self.lock().map.get(key).cloned()
    }

    /// Taken before reading a credential from the store; `insert` keeps the row only if no
    /// invalidation came in between.
    pub fn ticket(&self) -> Ticket {
        if !self.listening.load(Ordering::Acquire) {
            return Ticket(None);
        }
        Ticket(Some(self.lock().generation))
    }

    pub fn insert(&self, ticket: Ticket, key: CredentialKey, value: CachedKey) {
        let Ticket(Some(generation)) = ticket else {
            return;
        };
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.lock();
        if entries.generation != generation || !self.listening.load(Ordering::Acquire) {
            return;
        }
        if entries.map.len() >= self.capacity {
            // Bounded: starting over costs one read per active key, and never holds more.
            entries.map.clear();
        }
        entries.map.insert(key, value);
    }

    /// Records that a cached key's use was just written to the store.
    pub fn touched(&self, key: &CredentialKey, at: chrono::DateTime<chrono::Utc>) {
        if let Some(e) = self.lock().map.get_mut(key) {
            e.last_used_at = Some(at);
        }
    }

    /// Drops every entry of `tenant`.
    pub fn invalidate_tenant(&self, tenant: Uuid) {
        let mut entries = self.lock();
        entries.generation += 1;
        entries.map.retain(|_, v| v.tenant_id != tenant);
    }

    fn clear(&self) {
        let mut entries = self.lock();
        entries.generation += 1;
        entries.map.clear();
    }

    /// Call before changing `tenant`'s credentials in the store.
    pub fn change(&self, tenant: Uuid) -> PendingChange {
        PendingChange {
            tenant,
            heard_before: self.heard.borrow().get(&tenant).copied().unwrap_or(0),
        }
    }

    /// Call after the change committed: drops the tenant's entries here, and waits until this
    /// node's listener has heard the change's notice (so every node has been sent it). A node
    /// that is not listening caches nothing and has nothing to wait for.
    pub async fn changed(&self, change: PendingChange) {
        self.invalidate_tenant(change.tenant);
        if !self.listening.load(Ordering::Acquire) {
            return;
        }
        let mut heard = self.heard.subscribe();
        let wait =
            heard.wait_for(|h| h.get(&change.tenant).copied().unwrap_or(0) > change.heard_before);
        if tokio::time::timeout(ECHO_WAIT, wait).await.is_err() {
            tracing::warn!(tenant_id = %change.tenant, "a credential change's notice did not come back in time");
        }
    }

    fn heard(&self, tenant: Uuid) {
        self.invalidate_tenant(tenant);
        self.heard.send_modify(|h| {
            // Bounded like the entries: a count only needs to grow while a change waits.
            if h.len() >= 4096 {
                h.clear();
            }
            *h.entry(tenant).or_default() += 1;
        });
    }

    /// Whether this node is hearing changes (and so caching).
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    fn set_listening(&self, on: bool) {
        if on {
            // Notices may have been missed while not listening.
            self.clear();
        }
        self.listening.store(on, Ordering::Release);
        if !on {
            self.clear();
        }
    }
}

/// Listens for credential changes while the node runs (unless the cache is off).
pub fn schedule(jobs: &mut crate::app::jobs::Jobs, state: &crate::app::AppState) {
    if state.credentials.capacity > 0 {
        jobs.spawn(listen(state.credentials.clone()));
    }
}

/// Listens for credential changes on a connection of its own for as long as the node runs,
/// reconnecting after a failure (caching nothing meanwhile).
pub async fn listen(cache: Arc<CredentialCache>) {
    loop {
        if let Err(e) = listen_once(&cache, &cache.database_url).await {
            tracing::warn!(error = %e, "listening for credential changes; the cache is off until it works again");
        }
        cache.set_listening(false);
        tokio::time::sleep(RELISTEN_AFTER).await;
    }
}

async fn listen_once(cache: &CredentialCache, database_url: &str) -> anyhow::Result<()> {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let mut conn = AsyncPgConnection::establish(database_url).await?;
    diesel::sql_query(format!("LISTEN {CHANNEL}"))
        .execute(&mut conn)
        .await?;
    cache.set_listening(true);
    let started = Instant::now();
    let mut notices = std::pin::pin!(conn.notifications_stream());
    while let Some(notice) = notices.next().await {
        let notice = notice?;
        match notice.payload.parse::<Uuid>() {
            Ok(tenant) => cache.heard(tenant),
            // Not ours to read: forget everything rather than guess.
            Err(_) => cache.clear(),
        }
    }
    anyhow::bail!(
        "the listening connection ended after {:?}",
        started.elapsed()
    )
}
