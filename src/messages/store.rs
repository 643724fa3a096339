//! Messages and chats in Postgres. Each query takes a connection so callers can run it in
//! their own transaction (a status change and its event are one transaction).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::PrepareOnce;
use crate::schema::{chats, messages, tenants};

#[derive(Debug, Clone, Queryable, Selectable, QueryableByName, Insertable)]
#[diesel(table_name = messages)]
pub struct MessageRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub session_id: Uuid,
    pub wa_id: String,
    pub direction: String,
    pub chat: String,
    pub own_phone: String,
    pub kind: String,
    pub body: serde_json::Value,
    pub text: Option<String>,
    pub quoted_id: Option<String>,
    pub status: String,
    pub error: Option<String>,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = chats)]
pub struct ChatRow {
    pub session_id: Uuid,
    pub chat: String,
    pub tenant_id: Uuid,
    pub contact_name: Option<String>,
    pub last_message_id: Option<Uuid>,
    pub last_message_at: Option<DateTime<Utc>>,
    pub unread_count: i32,
    pub messages_in: i64,
    pub messages_out: i64,
    pub bot_enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Stores a message. `None` when the session already has it: an outgoing one with the same
/// idempotency key, or a received one with the same WhatsApp id (a redelivery).
pub async fn insert_message(
    conn: &mut AsyncPgConnection,
    row: &MessageRow,
) -> QueryResult<Option<MessageRow>> {
    diesel::insert_into(messages::table)
        .values(row)
        .on_conflict_do_nothing()
        .returning(MessageRow::as_returning())
        .prepared()
        .get_result(conn)
        .await
        .optional()
}

pub async fn find_by_idempotency_key(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    key: &str,
) -> QueryResult<Option<MessageRow>> {
    messages::table
        .filter(messages::session_id.eq(session_id))
        .filter(messages::idempotency_key.eq(key))
        .select(MessageRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A message of the session by our id or its WhatsApp id.
pub async fn find_in_session(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    id_or_wa_id: &str,
) -> QueryResult<Option<MessageRow>> {
    let mut q = messages::table
        .filter(messages::session_id.eq(session_id))
        .select(MessageRow::as_select())
        .into_boxed();
    q = match Uuid::parse_str(id_or_wa_id) {
        Ok(id) => q.filter(messages::id.eq(id).or(messages::wa_id.eq(id_or_wa_id))),
        Err(_) => q.filter(messages::wa_id.eq(id_or_wa_id)),
    };
    q.first(conn).await.optional()
}

pub async fn queued_count_for_tenant(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
) -> QueryResult<i64> {
    messages::table
        .filter(messages::tenant_id.eq(tenant_id))
        .filter(messages::status.eq("queued"))
        .count()
        .get_result(conn)
        .await
}

/// The tenant's own send rate, if it has one.
pub async fn tenant_send_rate(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
) -> QueryResult<Option<i32>> {
    Ok(tenants::table
        .find(tenant_id)
        .select(tenants::send_rate_per_minute)
        .first::<Option<i32>>(conn)
        .await
        .optional()?
        .flatten())
}

/// Keeps the chat row current for a new message: last message, counters, unread count.
pub async fn touch_chat(
    conn: &mut AsyncPgConnection,
    m: &MessageRow,
    contact_name: Option<&str>,
) -> QueryResult<()> {
    let inbound = m.direction == "in";
    diesel::sql_query(
        "INSERT INTO chats (session_id, chat, tenant_id, contact_name, last_message_id, last_message_at, \
           unread_count, messages_in, messages_out) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (session_id, chat) DO UPDATE SET \
           contact_name = COALESCE(chats.contact_name, EXCLUDED.contact_name), \
           last_message_id = CASE WHEN chats.last_message_at IS NULL OR EXCLUDED.last_message_at >= chats.last_message_at \
             THEN EXCLUDED.last_message_id ELSE chats.last_message_id END, \
           last_message_at = GREATEST(chats.last_message_at, EXCLUDED.last_message_at), \
           unread_count = chats.unread_count + EXCLUDED.unread_count, \
           messages_in = chats.messages_in + EXCLUDED.messages_in, \
           messages_out = chats.messages_out + EXCLUDED.messages_out, \
           updated_at = now()",
    )
    .bind::<sql_types::Uuid, _>(m.session_id)
    .bind::<sql_types::Text, _>(&m.chat)
    .bind::<sql_types::Uuid, _>(m.tenant_id)
    .bind::<sql_types::Nullable<sql_types::Text>, _>(contact_name)
    .bind::<sql_types::Uuid, _>(m.id)
    .bind::<sql_types::Timestamptz, _>(m.created_at)
    .bind::<sql_types::Integer, _>(i32::from(inbound))
    .bind::<sql_types::BigInt, _>(i64::from(inbound))
    .bind::<sql_types::BigInt, _>(i64::from(!inbound))
    .prepared()
    .execute(conn)
    .await?;
    Ok(())
}

/// A session's oldest queued outgoing messages.
pub async fn queued_for_session(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    limit: i64,
) -> QueryResult<Vec<MessageRow>> {
    messages::table
        .filter(messages::session_id.eq(session_id))
        .filter(messages::status.eq("queued"))
        .order((messages::created_at.asc(), messages::id.asc()))
        .limit(limit)
        .select(MessageRow::as_select())
        .load(conn)
        .await
}

/// The status order: a message only moves forward, and `failed` only from `queued`/`sent`.
const MOVES_FORWARD: &str = "status <> 'failed' AND ( \
    ($STATUS = 'failed' AND status IN ('queued', 'sent')) OR \
    ($STATUS <> 'failed' AND \
      (CASE status WHEN 'queued' THEN 0 WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 ELSE 3 END) < \
      (CASE $STATUS WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 WHEN 'read' THEN 3 ELSE 0 END)))";

fn moves_forward(status_param: &str) -> String {
    MOVES_FORWARD.replace("$STATUS", status_param)
}

/// Moves one outgoing message on; returns it when it moved.
pub async fn set_status(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    status: &str,
    error: Option<&str>,
) -> QueryResult<Option<MessageRow>> {
    let sql = format!(
        "UPDATE messages SET status = $2, error = $3, updated_at = now() \
         WHERE id = $1 AND direction = 'out' AND {} RETURNING *",
        moves_forward("$2")
    );
    let rows: Vec<MessageRow> = diesel::sql_query(sql)
        .bind::<sql_types::Uuid, _>(id)
        .bind::<sql_types::Text, _>(status)
        .bind::<sql_types::Nullable<sql_types::Text>, _>(error)
        .prepared()
        .load(conn)
        .await?;
    Ok(rows.into_iter().next())
}

/// Moves a session's outgoing messages named by WhatsApp id; returns those that moved.
pub async fn set_status_by_wa_ids(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    wa_ids: &[String],
    status: &str,
    error: Option<&str>,
) -> QueryResult<Vec<MessageRow>> {
    let sql = format!(
        "UPDATE messages SET status = $3, error = $4, updated_at = now() \
         WHERE session_id = $1 AND direction = 'out' AND wa_id = ANY($2) AND {} RETURNING *",
        moves_forward("$3")
    );
    diesel::sql_query(sql)
        .bind::<sql_types::Uuid, _>(session_id)
        .bind::<sql_types::Array<sql_types::Text>, _>(wa_ids)
        .bind::<sql_types::Text, _>(status)
        .bind::<sql_types::Nullable<sql_types::Text>, _>(error)
        .prepared()
        .load(conn)
        .await
}

/// Queued messages of sessions that are not connected, older than `older_than`.
pub async fn stale_queued(
    conn: &mut AsyncPgConnection,
    older_than: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<MessageRow>> {
    diesel::sql_query(
        "SELECT m.* FROM messages m \
         WHERE m.status = 'queued' AND m.created_at < $1 \
         AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = m.session_id AND s.status = 'connected') \
         ORDER BY m.created_at LIMIT $2",
    )
    .bind::<sql_types::Timestamptz, _>(older_than)
    .bind::<sql_types::BigInt, _>(limit)
    .load(conn)
    .await
}

/// Sessions held by `node` that have queued messages (one index probe per held session).
pub async fn sessions_with_queued(
    conn: &mut AsyncPgConnection,
    node: &str,
) -> QueryResult<Vec<Uuid>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = sql_types::Uuid)]
        id: Uuid,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT s.id FROM sessions s WHERE s.owner_node = $1 AND s.status = 'connected' \
         AND EXISTS (SELECT 1 FROM messages m WHERE m.session_id = s.id AND m.status = 'queued')",
    )
    .bind::<sql_types::Text, _>(node)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// A session's messages, newest first (one chat's when `chat` is given).
pub async fn list_messages(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    chat: Option<&str>,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> QueryResult<Vec<MessageRow>> {
    let mut q = messages::table
        .filter(messages::session_id.eq(session_id))
        .order((messages::created_at.desc(), messages::id.desc()))
        .limit(limit)
        .select(MessageRow::as_select())
        .into_boxed();
    if let Some(chat) = chat {
        q = q.filter(messages::chat.eq(chat.to_owned()));
    }
    if let Some((at, id)) = before {
        q = q.filter(
            messages::created_at
                .lt(at)
                .or(messages::created_at.eq(at).and(messages::id.lt(id))),
        );
    }
    q.load(conn).await
}

/// A session's chats, most recent first, with their last message.
pub async fn list_chats(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    before: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> QueryResult<Vec<(ChatRow, Option<MessageRow>)>> {
    let mut q = chats::table
        .left_join(messages::table.on(messages::id.nullable().eq(chats::last_message_id)))
        .filter(chats::session_id.eq(session_id))
        .order((
            chats::last_message_at.desc().nulls_last(),
            chats::chat.asc(),
        ))
        .limit(limit)
        .select((ChatRow::as_select(), Option::<MessageRow>::as_select()))
        .into_boxed();
    if let Some((at, chat)) = before {
        q = q.filter(
            chats::last_message_at
                .lt(at)
                .or(chats::last_message_at.eq(at).and(chats::chat.gt(chat))),
        );
    }
    q.load(conn).await
}

pub async fn get_chat(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    chat: &str,
) -> QueryResult<Option<(ChatRow, Option<MessageRow>)>> {
    chats::table
        .left_join(messages::table.on(messages::id.nullable().eq(chats::last_message_id)))
        .filter(chats::session_id.eq(session_id))
        .filter(chats::chat.eq(chat))
        .select((ChatRow::as_select(), Option::<MessageRow>::as_select()))
        .first(conn)
        .await
        .optional()
}

/// Changes a chat's settings; returns false when there is no such chat.
pub async fn update_chat(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    chats_: &[String],
    bot_enabled: Option<bool>,
    contact_name: Option<Option<String>>,
    mark_read: bool,
) -> QueryResult<usize> {
    let target = chats::table
        .filter(chats::session_id.eq(session_id))
        .filter(chats::chat.eq_any(chats_));
    let mut changed = 0;
    if let Some(b) = bot_enabled {
        changed = diesel::update(target.clone())
            .set((chats::bot_enabled.eq(b), chats::updated_at.eq(Utc::now())))
            .execute(conn)
            .await?;
    }
    if let Some(name) = contact_name {
        changed = diesel::update(target.clone())
            .set((
                chats::contact_name.eq(name),
                chats::updated_at.eq(Utc::now()),
            ))
            .execute(conn)
            .await?;
    }
    if mark_read {
        changed = diesel::update(target.clone())
            .set((chats::unread_count.eq(0), chats::updated_at.eq(Utc::now())))
            .execute(conn)
            .await?;
    }
    Ok(changed)
}

/// Turns the bot back on in every chat of the session; returns how many changed.
pub async fn reset_activations(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
) -> QueryResult<usize> {
    diesel::update(
        chats::table
            .filter(chats::session_id.eq(session_id))
            .filter(chats::bot_enabled.eq(false)),
    )
    .set((
        chats::bot_enabled.eq(true),
        chats::updated_at.eq(Utc::now()),
    ))
    .execute(conn)
    .await
}

/// Deletes a chat's history (its messages and its row); returns the messages deleted.
pub async fn clear_chat(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    chat: &str,
) -> QueryResult<usize> {
    let n = diesel::delete(
        messages::table
            .filter(messages::session_id.eq(session_id))
            .filter(messages::chat.eq(chat))
            // Still to be sent: clearing history does not cancel what was accepted.
            .filter(messages::status.ne("queued")),
    )
    .execute(conn)
    .await?;
    diesel::update(
        chats::table
            .filter(chats::session_id.eq(session_id))
            .filter(chats::chat.eq(chat)),
    )
    .set((
        chats::last_message_id.eq(None::<Uuid>),
        chats::unread_count.eq(0),
        chats::updated_at.eq(Utc::now()),
    ))
    .execute(conn)
    .await?;
    Ok(n)
}

/// Counts of a session's (or one chat's) messages by direction and status.
pub async fn stats(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    chat: Option<&str>,
) -> QueryResult<Vec<(String, String, i64)>> {
    let mut q = messages::table
        .filter(messages::session_id.eq(session_id))
        .group_by((messages::direction, messages::status))
        .select((
            messages::direction,
            messages::status,
            diesel::dsl::count_star(),
        ))
        .into_boxed();
    if let Some(chat) = chat {
        q = q.filter(messages::chat.eq(chat.to_owned()));
    }
    q.load(conn).await
}
