//! The audit log: every mutating request of the authenticated API — who (an API key, a member
//! or the admin), what (method, route pattern, the object the path names), the status and
//! when. Never a body, a query string or a credential: only what the route pattern and the
//! path's ids say.
//!
//! Recording costs a request one `try_send` on a bounded channel; a writer job inserts what
//! arrives in batches (one statement per batch). When the channel is full — the database far
//! behind — entries are dropped and counted (`wagate_audit_dropped_total`) rather than
//! slowing requests. A graceful stop flushes what is buffered; a `kill -9` loses at most the
//! last `audit.flush_ms` of entries.

pub mod routes;

use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::db::DbPool;
use crate::schema::audit_log;

pub use routes::routes;

/// One audited request.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = audit_log)]
pub struct AuditEntry {
    pub tenant_id: Option<Uuid>,
    pub actor_kind: String,
    pub actor_id: Option<Uuid>,
    pub method: String,
    pub route: String,
    pub object_id: Option<String>,
    pub status: i16,
    pub request_id: Option<String>,
    pub at: DateTime<Utc>,
}

/// Who a caller is, as the audit log and the CRM's activity record it: `admin`, `key` (with
/// the key's id) or `member` (with the member's id).
pub fn actor_of(caller: &Caller) -> (&'static str, Option<Uuid>) {
    match caller {
        Caller::Admin => ("admin", None),
        Caller::Tenant {
            key_id,
            member: Some(_),
            ..
        } => ("member", Some(*key_id)),
        Caller::Tenant { key_id, .. } => ("key", Some(*key_id)),
    }
}

impl AuditEntry {
    /// `caller` did `method` on `route` (a pattern), about `object_id`, answered `status`.
    pub fn new(caller: &Caller, method: &str, route: &str, status: u16) -> AuditEntry {
        let (actor_kind, actor_id) = actor_of(caller);
        let tenant_id = caller.tenant_id();
        AuditEntry {
            tenant_id,
            actor_kind: actor_kind.to_owned(),
            actor_id,
            method: method.to_owned(),
            route: route.to_owned(),
            object_id: None,
            status: i16::try_from(status).unwrap_or(i16::MAX),
            request_id: crate::telemetry::current_request_id(),
            at: Utc::now(),
        }
    }
}

enum Command {
    Record(Box<AuditEntry>),
    /// Answered once everything sent before it is written.
    Flush(oneshot::Sender<()>),
}

/// Where requests record; cheap to share.
pub struct AuditLog {
    sender: mpsc::Sender<Command>,
    /// Taken by the writer job when the node starts.
    receiver: std::sync::Mutex<Option<mpsc::Receiver<Command>>>,
}

impl AuditLog {
    pub fn new(capacity: usize) -> AuditLog {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        AuditLog {
            sender,
            receiver: std::sync::Mutex::new(Some(receiver)),
        }
    }

    /// Queues an entry without waiting; a full queue drops it (counted).
    pub fn record(&self, entry: AuditEntry) {
        if self
            .sender
            .try_send(Command::Record(Box::new(entry)))
            .is_err()
        {
            crate::metrics::AUDIT_DROPPED.inc();
        }
    }

    /// Waits (at most `within`) until everything recorded so far is written.
    pub async fn flush(&self, within: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.sender.send(Command::Flush(tx)).await.is_ok() {
            let _ = tokio::time::timeout(within, rx).await;
        }
    }
}

/// Records every mutating request that got past authentication. Sits inside the auth
/// middleware, so the caller is known; the route pattern comes from the router.
pub async fn audit_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let res = next.call(req).await?;
    if mutating {
        let request = res.request();
        let caller = request.extensions().get::<Caller>().cloned();
        if let (Some(caller), Some(state)) = (caller, request.app_data::<web::Data<AppState>>()) {
            let route = request
                .match_pattern()
                .unwrap_or_else(|| "(no route)".to_owned());
            let mut entry = AuditEntry::new(
                &caller,
                request.method().as_str(),
                &route,
                res.status().as_u16(),
            );
            // The object is the last id the path names; never anything from the body.
            entry.object_id = request
                .match_info()
                .iter()
                .last()
                .map(|(_, v)| v.chars().take(200).collect());
            if entry.tenant_id.is_none() {
                entry.tenant_id = request
                    .match_info()
                    .get("tenant_id")
                    .and_then(|t| t.parse().ok());
            }
            state.audit.record(entry);
        }
    }
    Ok(res)
}

/// The writer and the retention sweep, for as long as the node runs.
pub fn schedule(jobs: &mut crate::app::jobs::Jobs, state: &AppState) {
    let receiver = state
        .audit
        .receiver
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let settings = state.settings.audit.clone();
    if let Some(receiver) = receiver {
        jobs.spawn(write(
            state.db.clone(),
            receiver,
            settings.batch_size.max(1),
            Duration::from_millis(settings.flush_ms.max(1)),
        ));
    }
    let db = state.db.clone();
    jobs.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            match sweep(&db, settings.retention_days).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "audit entries past their retention deleted"),
                Err(e) => tracing::warn!(error = %e, "sweeping the audit log"),
            }
        }
    });
}

async fn write(
    db: DbPool,
    mut receiver: mpsc::Receiver<Command>,
    batch_size: usize,
    flush_every: Duration,
) {
    let mut batch: Vec<AuditEntry> = Vec::with_capacity(batch_size);
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = receiver.recv().await {
        let deadline = tokio::time::Instant::now() + flush_every;
        let mut next = Some(first);
        loop {
            match next.take() {
                Some(Command::Record(e)) => batch.push(*e),
                Some(Command::Flush(done)) => {
                    waiting.push(done);
                    break;
                }
                None => {}
            }
            if batch.len() >= batch_size {
                break;
            }
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(c)) => next = Some(c),
                _ => break,
            }
        }
        if !batch.is_empty() {
            insert(&db, std::mem::take(&mut batch)).await;
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Inserts a batch, retrying a database that is briefly away; gives up (logged, counted) after
/// a few tries rather than holding entries forever.
async fn insert(db: &DbPool, batch: Vec<AuditEntry>) {
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=5 {
        let result = async {
            let mut conn = db.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            diesel::insert_into(audit_log::table)
                .values(&batch)
                .execute(&mut conn)
                .await
                .map_err(anyhow::Error::from)
        }
        .await;
        match result {
            Ok(_) => {
                crate::metrics::AUDIT_WRITTEN.inc_by(batch.len() as u64);
                return;
            }
            Err(e) if attempt == 5 => {
                tracing::error!(error = %e, entries = batch.len(), "audit entries could not be written");
                crate::metrics::AUDIT_DROPPED.inc_by(batch.len() as u64);
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "writing audit entries; trying again");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

/// Deletes entries older than `retention_days`, a chunk at a time.
pub async fn sweep(db: &DbPool, retention_days: u32) -> anyhow::Result<usize> {
    let cutoff = Utc::now() - chrono::Duration::days(i64::from(retention_days.max(1)));
    let mut conn = db.get().await?;
    let mut total = 0;
    loop {
        let n = diesel::sql_query(
            "DELETE FROM audit_log WHERE id IN \
             (SELECT id FROM audit_log WHERE at < $1 LIMIT 10000)",
        )
        .bind::<diesel::sql_types::Timestamptz, _>(cutoff)
        .execute(&mut conn)
        .await?;
        total += n;
        if n < 10_000 {
            return Ok(total);
        }
    }
}
