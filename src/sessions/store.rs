//! Session rows, leases and events. Each query takes a connection so callers can run it
//! inside their own transaction.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::PrepareOnce;
use crate::events::EventPayload;
use crate::events::store::{EVENT_AND_DELIVERIES, EventRow, event_time};
use crate::schema::{
    chats, contacts, events, inbound_dead_letters, messages, sessions, tenants, wa_store_devices,
    wa_store_entries,
};
use wagate_actors::session::SessionStatus;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = sessions)]
pub struct SessionRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub webhook_url: Option<String>,
    pub status: String,
    pub desired: String,
    pub phone: Option<String>,
    pub jid: Option<String>,
    pub reconnect_attempts: i32,
    pub last_error: Option<String>,
    pub qr_code: Option<String>,
    pub qr_expires_at: Option<DateTime<Utc>>,
    pub owner_node: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a session's actor writes about its live state.
#[derive(Debug, Clone, AsChangeset)]
#[diesel(table_name = sessions, treat_none_as_null = true)]
pub struct SessionStateChange {
    pub status: String,
    pub reconnect_attempts: i32,
    pub last_error: Option<String>,
    pub qr_code: Option<String>,
    pub qr_expires_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

pub async fn insert_session(
    conn: &mut AsyncPgConnection,
    row: &SessionRow,
) -> QueryResult<SessionRow> {
    diesel::insert_into(sessions::table)
        .values(row)
        .returning(SessionRow::as_returning())
        .get_result(conn)
        .await
}

/// Locks the tenant row while counting, so two concurrent creates cannot both pass the quota.
pub async fn lock_and_count_sessions(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
) -> QueryResult<Option<(String, i64)>> {
    let tier: Option<String> = tenants::table
        .find(tenant_id)
        .select(tenants::tier)
        .for_update()
        .first(conn)
        .await
        .optional()?;
    let Some(tier) = tier else {
        return Ok(None);
    };
    let count = sessions::table
        .filter(sessions::tenant_id.eq(tenant_id))
        .count()
        .get_result(conn)
        .await?;
    Ok(Some((tier, count)))
}

pub async fn get_session(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<(SessionRow, String)>> {
    sessions::table
        .inner_join(tenants::table)
        .filter(sessions::id.eq(id))
        .select((SessionRow::as_select(), tenants::tier))
        .first(conn)
        .await
        .optional()
}

/// A tenant's sessions (or everyone's for `None`), oldest first, after `after`.
pub async fn list_sessions(
    conn: &mut AsyncPgConnection,
    tenant_id: Option<Uuid>,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<(SessionRow, String)>> {
    let mut q = sessions::table
        .inner_join(tenants::table)
        .select((SessionRow::as_select(), tenants::tier))
        .order(sessions::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(t) = tenant_id {
        q = q.filter(sessions::tenant_id.eq(t));
    }
    if let Some(a) = after {
        q = q.filter(sessions::id.gt(a));
    }
    q.load(conn).await
}

pub async fn set_desired(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    running: bool,
) -> QueryResult<usize> {
    diesel::update(sessions::table.find(id))
        .set((
            sessions::desired.eq(if running { "running" } else { "stopped" }),
            sessions::updated_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await
}

/// Sets the state of a session no node is running (stopped, logged out).
pub async fn set_idle_status(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    status: SessionStatus,
    forget_phone: bool,
) -> QueryResult<usize> {
    let status = status.as_str();
    let now = Utc::now();
    if forget_phone {
        diesel::update(sessions::table.find(id))
            .set((
                sessions::status.eq(status),
                sessions::phone.eq(None::<String>),
                sessions::jid.eq(None::<String>),
                sessions::qr_code.eq(None::<String>),
                sessions::qr_expires_at.eq(None::<DateTime<Utc>>),
                sessions::updated_at.eq(now),
            ))
            .execute(conn)
            .await
    } else {
        diesel::update(sessions::table.find(id))
            .set((
                sessions::status.eq(status),
                sessions::qr_code.eq(None::<String>),
                sessions::qr_expires_at.eq(None::<DateTime<Utc>>),
                sessions::updated_at.eq(now),
            ))
            .execute(conn)
            .await
    }
}

/// Deletes a session, its keys and its uploads; `purge` also its history (events,
/// messages, chats).
pub async fn delete_session(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    purge: bool,
) -> QueryResult<bool> {
    conn.transaction(async move |conn| {
        delete_keys(conn, &[id]).await?;
        // Uploads only serve sends, and a deleted session sends nothing more.
        crate::media::store::delete_for_session(conn, id).await?;
        if purge {
            diesel::delete(events::table.filter(events::session_id.eq(id)))
                .execute(conn)
                .await?;
            diesel::delete(messages::table.filter(messages::session_id.eq(id)))
                .execute(conn)
                .await?;
            diesel::delete(chats::table.filter(chats::session_id.eq(id)))
                .execute(conn)
                .await?;
            diesel::delete(contacts::table.filter(contacts::session_id.eq(id)))
                .execute(conn)
                .await?;
            diesel::delete(
                inbound_dead_letters::table.filter(inbound_dead_letters::session_id.eq(id)),
            )
            .execute(conn)
            .await?;
        }
        let n = diesel::delete(sessions::table.find(id))
            .execute(conn)
            .await?;
        Ok(n > 0)
    })
    .await
}

/// Deletes the WhatsApp keys of these sessions.
pub async fn delete_keys(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<()> {
    diesel::delete(wa_store_entries::table.filter(wa_store_entries::store_id.eq_any(ids)))
        .execute(conn)
        .await?;
    diesel::delete(wa_store_devices::table.filter(wa_store_devices::store_id.eq_any(ids)))
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn tenant_session_ids(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
) -> QueryResult<Vec<Uuid>> {
    sessions::table
        .filter(sessions::tenant_id.eq(tenant_id))
        .select(sessions::id)
        .load(conn)
        .await
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = sql_types::Uuid)]
    id: Uuid,
}

/// Takes the lease for `node` if it is free, expired, or already `node`'s, and with it
/// writes `state` when given (nothing is written unless the lease is taken).
pub async fn acquire_lease(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    node: &str,
    ttl_secs: f64,
    state: Option<&SessionStateChange>,
) -> QueryResult<bool> {
    let rows: Vec<IdRow> = diesel::sql_query(
        "UPDATE sessions SET owner_node = $2, lease_expires_at = now() + make_interval(secs => $3), \
                status = CASE WHEN $4 THEN $5 ELSE status END, \
                reconnect_attempts = CASE WHEN $4 THEN $6 ELSE reconnect_attempts END, \
                last_error = CASE WHEN $4 THEN $7 ELSE last_error END, \
                qr_code = CASE WHEN $4 THEN $8 ELSE qr_code END, \
                qr_expires_at = CASE WHEN $4 THEN $9 ELSE qr_expires_at END, \
                updated_at = CASE WHEN $4 THEN $10 ELSE updated_at END \
         WHERE id = $1 AND desired = 'running' \
         AND (owner_node IS NULL OR owner_node = $2 OR lease_expires_at < now()) \
         RETURNING id",
    )
    .bind::<sql_types::Uuid, _>(id)
    .bind::<sql_types::Text, _>(node)
    .bind::<sql_types::Double, _>(ttl_secs)
    .bind::<sql_types::Bool, _>(state.is_some())
    .bind::<sql_types::Text, _>(state.map_or("", |s| s.status.as_str()))
    .bind::<sql_types::Integer, _>(state.map_or(0, |s| s.reconnect_attempts))
    .bind::<sql_types::Nullable<sql_types::Text>, _>(state.and_then(|s| s.last_error.as_deref()))
    .bind::<sql_types::Nullable<sql_types::Text>, _>(state.and_then(|s| s.qr_code.as_deref()))
    .bind::<sql_types::Nullable<sql_types::Timestamptz>, _>(state.and_then(|s| s.qr_expires_at))
    .bind::<sql_types::Timestamptz, _>(state.map_or_else(Utc::now, |s| s.updated_at))
    .prepared()
    .load(conn)
    .await?;
    Ok(!rows.is_empty())
}

/// Extends `node`'s leases among `ids`; returns the ids it still holds.
pub async fn renew_leases(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    node: &str,
    ttl_secs: f64,
) -> QueryResult<Vec<Uuid>> {
    let rows: Vec<IdRow> = diesel::sql_query(
        "UPDATE sessions SET lease_expires_at = now() + make_interval(secs => $3) \
         WHERE owner_node = $1 AND id = ANY($2) AND desired = 'running' RETURNING id",
    )
    .bind::<sql_types::Text, _>(node)
    .bind::<sql_types::Array<sql_types::Uuid>, _>(ids)
    .bind::<sql_types::Double, _>(ttl_secs)
    .prepared()
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

pub async fn release_lease(conn: &mut AsyncPgConnection, id: Uuid, node: &str) -> QueryResult<()> {
    diesel::update(
        sessions::table
            .find(id)
            .filter(sessions::owner_node.eq(node)),
    )
    .set((
        sessions::owner_node.eq(None::<String>),
        sessions::lease_expires_at.eq(None::<DateTime<Utc>>),
    ))
    .prepared()
    .execute(conn)
    .await?;
    Ok(())
}

/// Running sessions this node may take: no owner, its own (a restart of this node), or an
/// owner whose lease expired. With their tenant's tier.
pub async fn claimable_sessions(
    conn: &mut AsyncPgConnection,
    node: &str,
    limit: i64,
) -> QueryResult<Vec<(Uuid, Uuid, String)>> {
    sessions::table
        .inner_join(tenants::table)
        .filter(sessions::desired.eq("running"))
        .filter(
            sessions::owner_node
                .is_null()
                .or(sessions::owner_node.eq(node))
                .or(sessions::lease_expires_at.lt(diesel::dsl::now)),
        )
        .select((sessions::id, sessions::tenant_id, tenants::tier))
        .order(sessions::id.asc())
        .limit(limit)
        .load(conn)
        .await
}

/// A session's state as its actor reports it.
pub struct StateWrite<'a> {
    pub change: &'a SessionStateChange,
    /// The linked number and JID to store; `None` keeps the stored ones (an actor that has
    /// not connected yet does not know them).
    pub identity: Option<(Option<String>, Option<String>)>,
    /// The session ended by itself: not to be resumed.
    pub settled: bool,
}

/// Writes a session's state (only while `node` holds its lease) and its event, atomically,
/// in one statement. Returns the event when one was stored.
pub async fn record_state(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    tenant_id: Uuid,
    node: &str,
    state: StateWrite<'_>,
    event: Option<&EventPayload>,
) -> QueryResult<Option<EventRow>> {
    let StateWrite {
        change,
        identity,
        settled,
    } = state;
    let Some((kind, data)) = event
        .map(EventPayload::to_stored)
        .transpose()
        .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?
    else {
        let identity =
            identity.map(|(phone, jid)| (sessions::phone.eq(phone), sessions::jid.eq(jid)));
        let settled = settled.then_some(sessions::desired.eq("stopped"));
        diesel::update(
            sessions::table
                .find(id)
                .filter(sessions::owner_node.eq(node)),
        )
        .set((change, identity, settled))
        .prepared()
        .execute(conn)
        .await?;
        return Ok(None);
    };
    let (at, at_json) = event_time();
    let (set_identity, phone, jid) = match identity {
        Some((phone, jid)) => (true, phone, jid),
        None => (false, None, None),
    };
    let rows: Vec<EventRow> = diesel::sql_query(format!(
        "WITH s AS (UPDATE sessions SET status = $7, reconnect_attempts = $8, last_error = $9, \
                      qr_code = $10, qr_expires_at = $11, updated_at = $12, \
                      phone = CASE WHEN $13 THEN $14 ELSE phone END, \
                      jid = CASE WHEN $13 THEN $15 ELSE jid END, \
                      desired = CASE WHEN $16 THEN 'stopped' ELSE desired END \
                    WHERE id = $2 AND owner_node = $17 RETURNING id), \
         next AS (UPDATE tenants SET last_event_id = last_event_id + 1 \
                  WHERE id = $1 AND EXISTS (SELECT 1 FROM s) RETURNING last_event_id), \
         {}",
        *EVENT_AND_DELIVERIES
    ))
    .bind::<sql_types::Uuid, _>(tenant_id)
    .bind::<sql_types::Nullable<sql_types::Uuid>, _>(Some(id))
    .bind::<sql_types::Text, _>(kind)
    .bind::<sql_types::Jsonb, _>(data)
    .bind::<sql_types::Timestamptz, _>(at)
    .bind::<sql_types::Jsonb, _>(at_json)
    .bind::<sql_types::Text, _>(&change.status)
    .bind::<sql_types::Integer, _>(change.reconnect_attempts)
    .bind::<sql_types::Nullable<sql_types::Text>, _>(&change.last_error)
    .bind::<sql_types::Nullable<sql_types::Text>, _>(&change.qr_code)
    .bind::<sql_types::Nullable<sql_types::Timestamptz>, _>(change.qr_expires_at)
    .bind::<sql_types::Timestamptz, _>(change.updated_at)
    .bind::<sql_types::Bool, _>(set_identity)
    .bind::<sql_types::Nullable<sql_types::Text>, _>(phone)
    .bind::<sql_types::Nullable<sql_types::Text>, _>(jid)
    .bind::<sql_types::Bool, _>(settled)
    .bind::<sql_types::Text, _>(node)
    .prepared()
    .load(conn)
    .await?;
    Ok(rows.into_iter().next())
}
