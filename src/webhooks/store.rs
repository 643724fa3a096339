//! Webhook subscriptions and the delivery outbox. Each query takes a connection so callers
//! can run it inside their own transaction.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::PrepareOnce;
use crate::schema::{webhook_deliveries, webhooks};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = webhooks)]
pub struct WebhookRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub session_id: Option<Uuid>,
    pub url: String,
    pub events: Vec<String>,
    pub secret: String,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = webhook_deliveries)]
pub struct DeliveryRow {
    pub id: String,
    pub webhook_id: Uuid,
    pub tenant_id: Uuid,
    pub event_id: i64,
    pub event_type: String,
    pub payload: serde_json::Value,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub locked_until: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

pub async fn insert(conn: &mut AsyncPgConnection, row: &WebhookRow) -> QueryResult<WebhookRow> {
    diesel::insert_into(webhooks::table)
        .values(row)
        .returning(WebhookRow::as_returning())
        .get_result(conn)
        .await
}

pub async fn get(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<WebhookRow>> {
    webhooks::table
        .find(id)
        .select(WebhookRow::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn list(
    conn: &mut AsyncPgConnection,
    tenant_id: Option<Uuid>,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<WebhookRow>> {
    let mut q = webhooks::table
        .select(WebhookRow::as_select())
        .order(webhooks::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(t) = tenant_id {
        q = q.filter(webhooks::tenant_id.eq(t));
    }
    if let Some(a) = after {
        q = q.filter(webhooks::id.gt(a));
    }
    q.load(conn).await
}

#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = webhooks)]
pub struct WebhookChange {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub secret: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
}

pub async fn update(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    change: &WebhookChange,
) -> QueryResult<Option<WebhookRow>> {
    diesel::update(webhooks::table.find(id))
        .set(change)
        .returning(WebhookRow::as_returning())
        .get_result(conn)
        .await
        .optional()
}

pub async fn delete(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<bool> {
    Ok(diesel::delete(webhooks::table.find(id))
        .execute(conn)
        .await?
        > 0)
}

/// A delivery claimed by this worker, with where and how to send it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery: DeliveryRow,
    pub url: String,
    pub secret: String,
}

#[derive(QueryableByName)]
struct Candidate {
    #[diesel(sql_type = sql_types::Text)]
    id: String,
    #[diesel(sql_type = sql_types::Uuid)]
    webhook_id: Uuid,
}

/// Claims due deliveries: at most `room(webhook)` per endpoint, holding each until
/// `lock_secs` from now. Rows another worker holds are skipped, never waited for.
pub async fn claim_due(
    conn: &mut AsyncPgConnection,
    limit: i64,
    lock_secs: f64,
    mut room: impl FnMut(Uuid) -> bool + Send,
) -> QueryResult<Vec<Claimed>> {
    conn.transaction(async move |conn| {
        let candidates: Vec<Candidate> = diesel::sql_query(
            "SELECT id, webhook_id FROM webhook_deliveries \
             WHERE status = 'pending' AND next_attempt_at <= now() \
             AND (locked_until IS NULL OR locked_until < now()) \
             ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind::<sql_types::BigInt, _>(limit)
        .load(conn)
        .await?;
        let chosen: Vec<String> = candidates
            .into_iter()
            .filter(|c| room(c.webhook_id))
            .map(|c| c.id)
            .collect();
        if chosen.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<DeliveryRow> = diesel::sql_query(
            "UPDATE webhook_deliveries SET locked_until = now() + make_interval(secs => $2) \
             WHERE id = ANY($1) RETURNING *",
        )
        .bind::<sql_types::Array<sql_types::Text>, _>(&chosen)
        .bind::<sql_types::Double, _>(lock_secs)
        .load(conn)
        .await?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.webhook_id).collect();
        let hooks: Vec<(Uuid, String, String)> = webhooks::table
            .filter(webhooks::id.eq_any(&ids))
            .select((webhooks::id, webhooks::url, webhooks::secret))
            .load(conn)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|d| {
                let (_, url, secret) = hooks.iter().find(|h| h.0 == d.webhook_id)?;
                Some(Claimed {
                    url: url.clone(),
                    secret: secret.clone(),
                    delivery: d,
                })
            })
            .collect())
    })
    .await
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: String,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    /// `None`: delivered. `Some(None)`: dead. `Some(Some(t))`: retry at `t`.
    pub retry: Option<Option<DateTime<Utc>>>,
    /// When the attempt started, and how long it took until an answer or a failure.
    pub attempted_at: DateTime<Utc>,
    pub duration_ms: i32,
}

/// Records attempts' outcomes, and each attempt in the delivery log, in one statement.
pub async fn record_outcomes(
    conn: &mut AsyncPgConnection,
    outcomes: &[Outcome],
) -> QueryResult<()> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = outcomes.iter().map(|o| o.id.as_str()).collect();
    let statuses: Vec<&str> = outcomes
        .iter()
        .map(|o| match o.retry {
            None => "delivered",
            Some(None) => "dead",
            Some(Some(_)) => "pending",
        })
        .collect();
    let codes: Vec<Option<i32>> = outcomes.iter().map(|o| o.status_code).collect();
    let errors: Vec<Option<&str>> = outcomes.iter().map(|o| o.error.as_deref()).collect();
    let next: Vec<Option<DateTime<Utc>>> = outcomes.iter().map(|o| o.retry.flatten()).collect();
    let started: Vec<DateTime<Utc>> = outcomes.iter().map(|o| o.attempted_at).collect();
    let took: Vec<i32> = outcomes.iter().map(|o| o.duration_ms).collect();
    diesel::sql_query(
        "WITH u AS (SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::text[], \
                      $5::timestamptz[], $6::timestamptz[], $7::int4[]) \
                    AS u(id, status, code, error, next, started, took)), \
         moved AS (UPDATE webhook_deliveries d SET \
           status = u.status, attempts = d.attempts + 1, locked_until = NULL, \
           last_status_code = u.code, last_error = u.error, updated_at = now(), \
           next_attempt_at = COALESCE(u.next, d.next_attempt_at), \
           delivered_at = CASE WHEN u.status = 'delivered' THEN now() ELSE d.delivered_at END \
         FROM u WHERE d.id = u.id \
         RETURNING d.id) \
         INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at, status_code, error, \
                                       duration_ms) \
         SELECT moved.id, \
           COALESCE((SELECT max(a.attempt) FROM webhook_attempts a WHERE a.delivery_id = moved.id), 0) + 1, \
           u.started, u.code, u.error, u.took \
         FROM moved JOIN u ON u.id = moved.id \
         ON CONFLICT (delivery_id, attempt) DO NOTHING",
    )
    .bind::<sql_types::Array<sql_types::Text>, _>(ids)
    .bind::<sql_types::Array<sql_types::Text>, _>(statuses)
    .bind::<sql_types::Array<sql_types::Nullable<sql_types::Integer>>, _>(codes)
    .bind::<sql_types::Array<sql_types::Nullable<sql_types::Text>>, _>(errors)
    .bind::<sql_types::Array<sql_types::Nullable<sql_types::Timestamptz>>, _>(next)
    .bind::<sql_types::Array<sql_types::Timestamptz>, _>(started)
    .bind::<sql_types::Array<sql_types::Integer>, _>(took)
    .prepared()
    .execute(conn)
    .await?;
    Ok(())
}

/// One attempt of a delivery, as the delivery log shows it. Numbered across replays (a
/// replay restarts the retry schedule, not the log).
#[derive(Debug, Clone, QueryableByName)]
pub struct AttemptRow {
    #[diesel(sql_type = sql_types::Integer)]
    pub attempt: i32,
    #[diesel(sql_type = sql_types::Timestamptz)]
    pub attempted_at: DateTime<Utc>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Integer>)]
    pub status_code: Option<i32>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    pub error: Option<String>,
    #[diesel(sql_type = sql_types::Integer)]
    pub duration_ms: i32,
}

/// A delivery's attempts, first first.
pub async fn attempts(
    conn: &mut AsyncPgConnection,
    delivery_id: &str,
) -> QueryResult<Vec<AttemptRow>> {
    diesel::sql_query(
        "SELECT attempt, attempted_at, status_code, error, duration_ms FROM webhook_attempts \
         WHERE delivery_id = $1 ORDER BY attempt",
    )
    .bind::<sql_types::Text, _>(delivery_id)
    .load(conn)
    .await
}

pub async fn list_deliveries(
    conn: &mut AsyncPgConnection,
    webhook_id: Uuid,
    status: Option<&str>,
    before: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> QueryResult<Vec<DeliveryRow>> {
    let mut q = webhook_deliveries::table
        .filter(webhook_deliveries::webhook_id.eq(webhook_id))
        .order((
            webhook_deliveries::created_at.desc(),
            webhook_deliveries::id.desc(),
        ))
        .limit(limit)
        .select(DeliveryRow::as_select())
        .into_boxed();
    if let Some(s) = status {
        q = q.filter(webhook_deliveries::status.eq(s.to_owned()));
    }
    if let Some((at, id)) = before {
        q = q.filter(
            webhook_deliveries::created_at
                .lt(at)
                .or(webhook_deliveries::created_at
                    .eq(at)
                    .and(webhook_deliveries::id.lt(id))),
        );
    }
    q.load(conn).await
}

/// Sends dead (or delivered, to resend) deliveries again, with a fresh retry schedule and
/// the same `webhook-id`. `None`: every dead delivery of the webhook.
pub async fn replay(
    conn: &mut AsyncPgConnection,
    webhook_id: Uuid,
    delivery_id: Option<&str>,
) -> QueryResult<Vec<DeliveryRow>> {
    let target = webhook_deliveries::table
        .filter(webhook_deliveries::webhook_id.eq(webhook_id))
        .into_boxed();
    let target = match delivery_id {
        Some(id) => target
            .filter(webhook_deliveries::id.eq(id.to_owned()))
            .filter(webhook_deliveries::status.ne("pending")),
        None => target.filter(webhook_deliveries::status.eq("dead")),
    };
    let ids: Vec<String> = target.select(webhook_deliveries::id).load(conn).await?;
    diesel::update(webhook_deliveries::table.filter(webhook_deliveries::id.eq_any(&ids)))
        .set((
            webhook_deliveries::status.eq("pending"),
            webhook_deliveries::attempts.eq(0),
            webhook_deliveries::next_attempt_at.eq(Utc::now()),
            webhook_deliveries::locked_until.eq(None::<DateTime<Utc>>),
            webhook_deliveries::updated_at.eq(Utc::now()),
        ))
        .returning(DeliveryRow::as_returning())
        .get_results(conn)
        .await
}

pub async fn get_delivery(
    conn: &mut AsyncPgConnection,
    webhook_id: Uuid,
    id: &str,
) -> QueryResult<Option<DeliveryRow>> {
    webhook_deliveries::table
        .filter(webhook_deliveries::webhook_id.eq(webhook_id))
        .filter(webhook_deliveries::id.eq(id))
        .select(DeliveryRow::as_select())
        .first(conn)
        .await
        .optional()
}
