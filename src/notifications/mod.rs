//! Notifications for a tenant's people. The `NotificationActor` makes them of system events
//! (through [`PgNoticeStore`]); the gateway makes them where it knows something a member must
//! hear (a card assigned, a webhook endpoint dead-lettering); the admin sends them to one
//! tenant or to all. Each is stored and announced as a `notification.created` event (so it
//! arrives over the WebSocket). Read state is per reader: a member, or an API key.

pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;
use wagate_actors::notices::{Notice, NoticeStore, SystemEvent};
use wagate_actors::notification::StoredEvent;

use crate::app::AppState;
use crate::db::DbPool;
use crate::events::EventPayload;
use crate::events::store::EventRow;
use crate::schema::notifications;

pub use routes::routes;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = notifications)]
pub struct NotificationRow {
    pub id: Uuid,
    pub tenant_id: Option<Uuid>,
    pub member_id: Option<Uuid>,
    pub kind: String,
    pub level: String,
    pub title: String,
    pub body: String,
    pub data: Value,
    pub source: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A notification as the API (and its event) shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NotificationOut {
    pub id: Uuid,
    /// `null`: the admin's, to every tenant.
    pub tenant_id: Option<Uuid>,
    /// `null`: for every member.
    pub member_id: Option<Uuid>,
    /// `session.logged_out`, `session.reconnect_failed`, `session.health_check_failed`,
    /// `ai.handoff`, `flow.failed`, `webhook.dead_letter`, `card.assigned`, `flow` (a flow's
    /// `notify` step), `admin`.
    pub kind: String,
    /// `info`, `warning` or `critical`.
    pub level: String,
    pub title: String,
    pub body: String,
    #[schema(value_type = Object)]
    pub data: Value,
    /// Whether the caller has read it.
    pub read: bool,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl NotificationOut {
    pub fn new(r: &NotificationRow, read: bool) -> NotificationOut {
        NotificationOut {
            id: r.id,
            tenant_id: r.tenant_id,
            member_id: r.member_id,
            kind: r.kind.clone(),
            level: r.level.clone(),
            title: r.title.clone(),
            body: r.body.clone(),
            data: r.data.clone(),
            read,
            created_at: r.created_at,
            expires_at: r.expires_at,
        }
    }
}

/// A notification to make.
pub struct NewNotification {
    pub tenant_id: Option<Uuid>,
    pub member_id: Option<Uuid>,
    pub kind: String,
    pub level: &'static str,
    pub title: String,
    pub body: String,
    pub data: Value,
    /// Made at most once per source.
    pub source: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Stores `n` and its `notification.created` events (one per tenant it is for), in the
/// caller's transaction. `None`: its source made one already.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    n: NewNotification,
) -> QueryResult<Option<(NotificationRow, Vec<EventRow>)>> {
    let row = NotificationRow {
        id: Uuid::now_v7(),
        tenant_id: n.tenant_id,
        member_id: n.member_id,
        kind: n.kind,
        level: n.level.to_owned(),
        title: n.title,
        body: n.body,
        data: n.data,
        source: n.source,
        created_at: Utc::now(),
        expires_at: n.expires_at,
    };
    let inserted = diesel::insert_into(notifications::table)
        .values(&row)
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    if inserted == 0 {
        return Ok(None);
    }
    let data = serde_json::to_value(NotificationOut::new(&row, false))
        .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?;
    let payload = EventPayload::Platform(crate::events::NOTIFICATION_CREATED, data);
    let events = match row.tenant_id {
        Some(t) => vec![crate::events::store::insert_event(conn, t, None, &payload).await?],
        // One statement for every tenant, however many there are.
        None => crate::events::store::insert_for_every_tenant(conn, &payload).await?,
    };
    Ok(Some((row, events)))
}

/// Makes a notification now (its own transaction) and publishes its events.
pub async fn notify(
    state: &AppState,
    n: NewNotification,
) -> anyhow::Result<Option<NotificationRow>> {
    let mut conn = state.db.get().await?;
    let made = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| insert(conn, n).await)
        .await?;
    Ok(made.map(|(row, events)| {
        state.events.publish(events);
        row
    }))
}

/// The notification that tells a member a card is theirs now.
pub fn assigned_notice(card: &crate::crm::CardRow, member: Uuid) -> NewNotification {
    NewNotification {
        tenant_id: Some(card.tenant_id),
        member_id: Some(member),
        kind: "card.assigned".into(),
        level: "info",
        title: "A card was assigned to you".into(),
        body: card.title.clone(),
        data: json!({"card_id": card.id, "board_id": card.board_id}),
        source: None,
        expires_at: None,
    }
}

/// Share of a quota at which the tenant is warned, in percent.
pub const QUOTA_WARNING_PERCENT: u64 = 80;

/// After an AI call was recorded: when the tenant's tokens today (UTC) reached
/// [`QUOTA_WARNING_PERCENT`] of its tier's daily budget, its members are told, once a day.
/// One statement when under; a call that crashed before checking is made up by the next.
pub async fn ai_tokens_warning(
    conn: &mut AsyncPgConnection,
    settings: &crate::configuration::Settings,
    tenant: Uuid,
) -> QueryResult<Vec<EventRow>> {
    #[derive(QueryableByName)]
    struct Usage {
        #[diesel(sql_type = sql_types::Text)]
        tier: String,
        #[diesel(sql_type = sql_types::BigInt)]
        tokens: i64,
    }
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT t.tier, {} AS tokens FROM tenants t WHERE t.id = $1",
            crate::ai::store::tokens_today_sql("t.id")
        )
    });
    let usage: Option<Usage> = diesel::sql_query(SQL.as_str())
        .bind::<sql_types::Uuid, _>(tenant)
        .get_result(conn)
        .await
        .optional()?;
    let Some(usage) = usage else {
        return Ok(Vec::new());
    };
    let tier = wagate_actors::tier::Tier::parse(&usage.tier)
        .unwrap_or(wagate_actors::tier::Tier::Standard);
    let limit = u64::from(settings.ai.tokens_per_day.for_tier(tier));
    let used = u64::try_from(usage.tokens).unwrap_or(0);
    if limit == 0 || used * 100 < limit * QUOTA_WARNING_PERCENT {
        return Ok(Vec::new());
    }
    let today = Utc::now().date_naive();
    let made = insert(
        conn,
        NewNotification {
            tenant_id: Some(tenant),
            member_id: None,
            kind: "quota.warning".into(),
            level: if used >= limit { "critical" } else { "warning" },
            title: format!("AI tokens at {}% of today's budget", used * 100 / limit),
            body: format!(
                "{used} of {limit} tokens used today (UTC). At the limit the agents send their \
                 fallback text and /ai/generate is refused until midnight UTC."
            ),
            data: json!({"quota": "ai_tokens_per_day", "used": used, "limit": limit}),
            source: Some(format!("quota:ai_tokens_per_day:{tenant}:{today}")),
            // Stale once the budget starts over.
            expires_at: today
                .succ_opt()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|d| d.and_utc() + chrono::Duration::days(1)),
        },
    )
    .await?;
    Ok(made.map(|(_, events)| events).unwrap_or_default())
}

/// A quota of the tenant's tier (sessions, boards, …) at [`QUOTA_WARNING_PERCENT`] or more
/// after something was created: its members are told, once a day per quota. `limit` 0 is
/// unlimited (nothing to tell).
pub async fn quota_warning(
    state: &AppState,
    tenant: Uuid,
    quota: &str,
    used: i64,
    limit: u32,
) -> anyhow::Result<()> {
    let used = u64::try_from(used).unwrap_or(0);
    let limit = u64::from(limit);
    if limit == 0 || used * 100 < limit * QUOTA_WARNING_PERCENT {
        return Ok(());
    }
    let today = Utc::now().date_naive();
    let name = quota.replace('_', " ");
    notify(
        state,
        NewNotification {
            tenant_id: Some(tenant),
            member_id: None,
            kind: "quota.warning".into(),
            level: if used >= limit { "critical" } else { "warning" },
            title: format!("{name} at {}% of the tier's quota", used * 100 / limit),
            body: format!(
                "{used} of {limit} {name} used. At the quota, more are refused (403 \
                 quota_exceeded) until the tenant moves to a larger tier."
            ),
            data: json!({"quota": quota, "used": used, "limit": limit}),
            source: Some(format!("quota:{quota}:{tenant}:{today}")),
            expires_at: today
                .succ_opt()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|d| d.and_utc() + chrono::Duration::days(1)),
        },
    )
    .await?;
    Ok(())
}

/// A card was assigned to a member: tell them.
pub async fn card_assigned(state: &AppState, card: &crate::crm::CardRow, member: Uuid) {
    let made = notify(state, assigned_notice(card, member)).await;
    if let Err(e) = made {
        tracing::warn!(error = %e, card_id = %card.id, "notifying a card's assignee");
    }
}

/// A webhook endpoint dead-lettered a delivery: tell the tenant, once a day per endpoint.
pub async fn webhook_dead_letter(state: &AppState, tenant: Uuid, webhook: Uuid, url: &str) {
    let day = Utc::now().format("%Y-%m-%d");
    let made = notify(
        state,
        NewNotification {
            tenant_id: Some(tenant),
            member_id: None,
            kind: "webhook.dead_letter".into(),
            level: "warning",
            title: "A webhook endpoint is failing".into(),
            body: format!(
                "Deliveries to {url} were given up after every retry. Fix the endpoint and replay them."
            ),
            data: json!({"webhook_id": webhook}),
            source: Some(format!("webhook:{webhook}:{day}")),
            expires_at: None,
        },
    )
    .await;
    if let Err(e) = made {
        tracing::warn!(error = %e, webhook_id = %webhook, "notifying a dead-lettering webhook");
    }
}

/// The `NotificationActor`'s store: system events claimed from `notification_work`.
pub struct PgNoticeStore {
    pub db: DbPool,
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = sql_types::Uuid)]
    tenant_id: Uuid,
    #[diesel(sql_type = sql_types::BigInt)]
    event_id: i64,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Uuid>)]
    session_id: Option<Uuid>,
    #[diesel(sql_type = sql_types::Text)]
    kind: String,
    #[diesel(sql_type = sql_types::Jsonb)]
    data: Value,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    session_name: Option<String>,
}

#[async_trait]
impl NoticeStore for PgNoticeStore {
    async fn claim(&self, limit: usize) -> anyhow::Result<Vec<SystemEvent>> {
        let mut conn = self.db.get().await?;
        let rows: Vec<Claimed> = diesel::sql_query(
            "WITH c AS (SELECT tenant_id, event_id FROM notification_work \
                        WHERE locked_until IS NULL OR locked_until < now() \
                        ORDER BY event_id LIMIT $1 FOR UPDATE SKIP LOCKED), \
             locked AS (UPDATE notification_work w SET locked_until = now() + interval '60 seconds' \
                        FROM c WHERE w.tenant_id = c.tenant_id AND w.event_id = c.event_id \
                        RETURNING w.tenant_id, w.event_id) \
             SELECT e.tenant_id, e.id AS event_id, e.session_id, e.kind, e.data, s.name AS session_name \
             FROM locked l JOIN events e ON e.tenant_id = l.tenant_id AND e.id = l.event_id \
             LEFT JOIN sessions s ON s.id = e.session_id",
        )
        .bind::<sql_types::BigInt, _>(i64::try_from(limit).unwrap_or(100))
        .load(&mut conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| SystemEvent {
                tenant_id: r.tenant_id,
                event_id: r.event_id,
                session_id: r.session_id,
                kind: r.kind,
                data: r.data,
                session_name: r.session_name,
            })
            .collect())
    }

    async fn settle(
        &self,
        made: Vec<(SystemEvent, Option<Notice>)>,
    ) -> anyhow::Result<Vec<Arc<StoredEvent>>> {
        let mut conn = self.db.get().await?;
        let events = conn
            .transaction::<_, anyhow::Error, _>(async |conn| {
                let mut events = Vec::new();
                for (event, notice) in made {
                    if let Some(n) = notice {
                        let made = insert(
                            conn,
                            NewNotification {
                                tenant_id: Some(event.tenant_id),
                                member_id: n.member_id,
                                kind: n.kind.to_owned(),
                                level: n.level.as_str(),
                                title: n.title,
                                body: n.body,
                                data: json!({
                                    "event_id": event.event_id,
                                    "session_id": event.session_id,
                                    "chat": event.data.get("chat"),
                                    "execution_id": event.data.get("execution_id"),
                                }),
                                source: Some(format!(
                                    "event:{}:{}",
                                    event.tenant_id, event.event_id
                                )),
                                expires_at: None,
                            },
                        )
                        .await?;
                        if let Some((_, rows)) = made {
                            events.extend(rows);
                        }
                    }
                    diesel::sql_query(
                        "DELETE FROM notification_work WHERE tenant_id = $1 AND event_id = $2",
                    )
                    .bind::<sql_types::Uuid, _>(event.tenant_id)
                    .bind::<sql_types::BigInt, _>(event.event_id)
                    .execute(conn)
                    .await?;
                }
                Ok(events)
            })
            .await?;
        Ok(events.into_iter().map(crate::events::stored).collect())
    }
}

/// Starts the NotificationActor's work, and removes expired and old notifications.
pub fn schedule(jobs: &mut crate::app::jobs::Jobs, state: &AppState) {
    let settings = state.settings.notifications.clone();
    state
        .events
        .notifier
        .do_send(wagate_actors::notification::StartNotices {
            store: Arc::new(PgNoticeStore {
                db: state.db.clone(),
            }),
            every: Duration::from_millis(settings.poll_interval_ms.max(10)),
            batch: 200,
        });
    let db = state.db.clone();
    jobs.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let swept = async {
                let mut conn = db.get().await?;
                let n = diesel::sql_query(
                    "DELETE FROM notifications WHERE expires_at < now() \
                        OR created_at < now() - make_interval(days => $1)",
                )
                .bind::<sql_types::Integer, _>(
                    i32::try_from(settings.retention_days.max(1)).unwrap_or(90),
                )
                .execute(&mut conn)
                .await?;
                anyhow::Ok(n)
            }
            .await;
            match swept {
                Ok(0) => {}
                Ok(n) => tracing::info!(notifications = n, "expired notifications removed"),
                Err(e) => tracing::warn!(error = %e, "removing expired notifications"),
            }
        }
    });
}
