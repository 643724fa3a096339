//! Event rows in Postgres: each stored with the tenant's next event id and, in the same
//! statement, its webhook deliveries (one per matching subscription), so the webhook outbox
//! can never miss an event. Other statements that store events with their own change (a
//! session's state, a message's status) build on the SQL pieces here.

use chrono::{DateTime, SubsecRound, Utc};
use diesel::prelude::*;
use diesel::sql_types;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::EventPayload;
use crate::db::PrepareOnce;
use crate::schema::events;

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = events)]
pub struct EventRow {
    pub tenant_id: Uuid,
    pub id: i64,
    pub session_id: Option<Uuid>,
    pub kind: String,
    pub data: serde_json::Value,
    pub at: DateTime<Utc>,
}

/// The rest of a statement that stores one event, after a `next` CTE that took the tenant's
/// next event id (`last_event_id`). Binds: $1 tenant, $2 session, $3 kind, $4 data, $5 time,
/// $6 the time as JSON. Stores the event and its webhook deliveries and returns the event row.
/// Built once: it sits on every session state change.
pub(crate) static EVENT_AND_DELIVERIES: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| {
        format!(
            "ev AS (INSERT INTO events (tenant_id, id, session_id, kind, data, at) \
                SELECT $1, next.last_event_id, $2, $3, $4, $5 FROM next \
                RETURNING tenant_id, id, session_id, kind, data, at), \
         {DELIVERIES_FOR_EVENTS} \
         SELECT tenant_id, id, session_id, kind, data, at FROM ev"
        )
    });

/// A `hooks` CTE that writes the webhook deliveries of the events an `ev` CTE inserted (one
/// per matching subscription, with the payload `EventRow::to_json` gives), in the same
/// statement as the events, so the outbox can never miss one. `$6` is the events' time as
/// JSON.
pub(crate) const DELIVERIES_FOR_EVENTS: &str = "\
    hooks AS (INSERT INTO webhook_deliveries \
                  (id, webhook_id, tenant_id, event_id, event_type, payload) \
              SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''), w.id, ev.tenant_id, \
                     ev.id, ev.kind, \
                     jsonb_build_object('id', ev.id, 'type', ev.kind, \
                                        'session_id', ev.session_id, 'tenant_id', ev.tenant_id, \
                                        'at', $6::jsonb, 'data', ev.data) \
              FROM ev JOIN webhooks w ON w.tenant_id = ev.tenant_id AND w.enabled \
                   AND (w.session_id IS NULL OR w.session_id = ev.session_id) \
                   AND (cardinality(w.events) = 0 OR ev.kind = ANY(w.events)))";

/// An event's time, taken here to the microsecond Postgres keeps, so the webhook payload
/// built inside the statement shows it exactly as `EventRow::to_json` does.
pub(crate) fn event_time() -> (DateTime<Utc>, serde_json::Value) {
    let at = Utc::now().trunc_subsecs(6);
    (
        at,
        serde_json::to_value(at).unwrap_or(serde_json::Value::Null),
    )
}

/// Stores an event with the tenant's next event id, and its webhook deliveries (one per
/// matching subscription), in one statement: the outbox can never miss an event, and the
/// tenant's counter row stays locked for one round trip instead of three. Publish the
/// returned row after the surrounding transaction commits.
pub async fn insert_event(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    session_id: Option<Uuid>,
    payload: &EventPayload,
) -> QueryResult<EventRow> {
    let (kind, data) = payload
        .to_stored()
        .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?;
    insert_stored(conn, tenant_id, session_id, kind, data).await
}

/// Stores an event whose data is already serialised (the test hooks' synthetic events).
pub(crate) async fn insert_stored(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    session_id: Option<Uuid>,
    kind: &str,
    data: serde_json::Value,
) -> QueryResult<EventRow> {
    let (at, at_json) = event_time();
    diesel::sql_query(format!(
        "WITH next AS (UPDATE tenants SET last_event_id = last_event_id + 1 WHERE id = $1 \
                       RETURNING last_event_id), \
         {}",
        *EVENT_AND_DELIVERIES
    ))
    .bind::<sql_types::Uuid, _>(tenant_id)
    .bind::<sql_types::Nullable<sql_types::Uuid>, _>(session_id)
    .bind::<sql_types::Text, _>(kind)
    .bind::<sql_types::Jsonb, _>(data)
    .bind::<sql_types::Timestamptz, _>(at)
    .bind::<sql_types::Jsonb, _>(at_json)
    .prepared()
    .get_result(conn)
    .await
}

/// Stores one event of no session for every tenant (an admin's broadcast), each with its
/// tenant's next event id and its webhook deliveries, in one statement whatever the number of
/// tenants.
pub async fn insert_for_every_tenant(
    conn: &mut AsyncPgConnection,
    payload: &EventPayload,
) -> QueryResult<Vec<EventRow>> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH next AS (UPDATE tenants SET last_event_id = last_event_id + 1 \
                           RETURNING id AS tenant_id, last_event_id), \
             ev AS (INSERT INTO events (tenant_id, id, session_id, kind, data, at) \
                    SELECT next.tenant_id, next.last_event_id, NULL, $1, $2, $3 FROM next \
                    RETURNING tenant_id, id, session_id, kind, data, at), \
             {} \
             SELECT tenant_id, id, session_id, kind, data, at FROM ev",
            // The deliveries' time is this statement's fourth bind.
            DELIVERIES_FOR_EVENTS.replace("$6", "$4")
        )
    });
    let (kind, data) = payload
        .to_stored()
        .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?;
    let (at, at_json) = event_time();
    diesel::sql_query(SQL.as_str())
        .bind::<sql_types::Text, _>(kind)
        .bind::<sql_types::Jsonb, _>(data)
        .bind::<sql_types::Timestamptz, _>(at)
        .bind::<sql_types::Jsonb, _>(at_json)
        .load(conn)
        .await
}

/// A tenant's events after `since`, oldest first (optionally one session's).
pub async fn tenant_events(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    since: i64,
    before: Option<i64>,
    limit: i64,
) -> QueryResult<Vec<EventRow>> {
    let mut q = events::table
        .filter(events::tenant_id.eq(tenant_id))
        .filter(events::id.gt(since))
        .order(events::id.asc())
        .limit(limit)
        .select(EventRow::as_select())
        .into_boxed();
    if let Some(b) = before {
        q = q.filter(events::id.lt(b));
    }
    q.load(conn).await
}

/// A session's events after `since`, oldest first.
pub async fn session_events(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    session_id: Uuid,
    since: i64,
    limit: i64,
) -> QueryResult<Vec<EventRow>> {
    events::table
        .filter(events::tenant_id.eq(tenant_id))
        .filter(events::session_id.eq(session_id))
        .filter(events::id.gt(since))
        .order(events::id.asc())
        .limit(limit)
        .select(EventRow::as_select())
        .load(conn)
        .await
}
