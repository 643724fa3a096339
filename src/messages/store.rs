//! Messages and chats in Postgres. Each query takes a connection so callers can run it in
//! their own transaction (a status change and its event are one transaction).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;
use wagate_actors::messaging::chat_key;

use crate::db::PrepareOnce;
use crate::events::store::{DELIVERIES_FOR_EVENTS, EventRow, event_time};
use crate::events::{DeadLettered, EventPayload, MESSAGE_RECEIVED, MESSAGE_STATUS};
use crate::schema::{messages, tenants};

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

/// How a chat row takes in one new message: last message, counters, unread count. The
/// inserted values are that one message's (`unread_count`, `messages_in`, `messages_out` of
/// 0 or 1).
const CHAT_TAKES_MESSAGE: &str = "ON CONFLICT (session_id, chat) DO UPDATE SET \
       contact_name = COALESCE(chats.contact_name, EXCLUDED.contact_name), \
       last_message_id = CASE WHEN chats.last_message_at IS NULL OR EXCLUDED.last_message_at >= chats.last_message_at \
         THEN EXCLUDED.last_message_id ELSE chats.last_message_id END, \
       last_message_at = GREATEST(chats.last_message_at, EXCLUDED.last_message_at), \
       unread_count = chats.unread_count + EXCLUDED.unread_count, \
       messages_in = chats.messages_in + EXCLUDED.messages_in, \
       messages_out = chats.messages_out + EXCLUDED.messages_out, \
       updated_at = now()";

/// Stores a message and keeps its chat row current, in one statement. `None` when the
/// session already has it (an outgoing one with the same idempotency key, a received one with
/// the same WhatsApp id) or, with `queue_limit`, when the tenant already has that many
/// messages queued (the caller tells the two apart, off the hot path).
pub async fn insert_message_with_chat(
    conn: &mut AsyncPgConnection,
    m: &MessageRow,
    contact_name: Option<&str>,
    queue_limit: Option<i64>,
) -> QueryResult<Option<MessageRow>> {
    // The room check counts at most `limit` rows (the partial tenant index), so a full queue
    // costs no more than a nearly full one.
    let rows: Vec<MessageRow> = diesel::sql_query(format!(
        "WITH room AS ( \
           SELECT $17::bigint IS NULL OR count(*) < $17 AS ok FROM ( \
             SELECT 1 FROM messages WHERE $17::bigint IS NOT NULL AND tenant_id = $2 \
             AND status = 'queued' LIMIT $17) q), \
         ins AS ( \
           INSERT INTO messages (id, tenant_id, session_id, wa_id, direction, chat, own_phone, \
             kind, body, text, quoted_id, status, error, idempotency_key, created_at, updated_at) \
           SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16 \
           FROM room WHERE room.ok \
           ON CONFLICT DO NOTHING RETURNING *), \
         chat AS ( \
           INSERT INTO chats (session_id, chat, tenant_id, contact_name, last_message_id, \
             last_message_at, unread_count, messages_in, messages_out) \
           SELECT session_id, chat, tenant_id, $18, id, created_at, \
             (direction = 'in')::int, (direction = 'in')::int, (direction = 'out')::int FROM ins \
           {CHAT_TAKES_MESSAGE}) \
         SELECT * FROM ins"
    ))
    .bind::<sql_types::Uuid, _>(m.id)
    .bind::<sql_types::Uuid, _>(m.tenant_id)
    .bind::<sql_types::Uuid, _>(m.session_id)
    .bind::<sql_types::Text, _>(&m.wa_id)
    .bind::<sql_types::Text, _>(&m.direction)
    .bind::<sql_types::Text, _>(&m.chat)
    .bind::<sql_types::Text, _>(&m.own_phone)
    .bind::<sql_types::Text, _>(&m.kind)
    .bind::<sql_types::Jsonb, _>(&m.body)
    .bind::<sql_types::Nullable<sql_types::Text>, _>(&m.text)
    .bind::<sql_types::Nullable<sql_types::Text>, _>(&m.quoted_id)
    .bind::<sql_types::Text, _>(&m.status)
    .bind::<sql_types::Nullable<sql_types::Text>, _>(&m.error)
    .bind::<sql_types::Nullable<sql_types::Text>, _>(&m.idempotency_key)
    .bind::<sql_types::Timestamptz, _>(m.created_at)
    .bind::<sql_types::Timestamptz, _>(m.updated_at)
    .bind::<sql_types::Nullable<sql_types::BigInt>, _>(queue_limit)
    .bind::<sql_types::Nullable<sql_types::Text>, _>(contact_name)
    .prepared()
    .load(conn)
    .await?;
    Ok(rows.into_iter().next())
}

/// [`insert_message_with_chat`] for many outgoing messages (of any sessions and tenants) in
/// one statement: each chat row takes all of its new messages at once, and each tenant's
/// queue room is counted once, the batch's messages taking it in order. Returns the messages
/// stored; one missing was refused (an idempotency key the session already has, or no room
/// left in its tenant's queue) and is for the caller to look at alone.
pub async fn insert_outgoing_batch(
    conn: &mut AsyncPgConnection,
    rows: &[MessageRow],
    queue_limit: i64,
) -> QueryResult<Vec<MessageRow>> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH input AS ( \
               SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], \
                 $6::text[], $7::text[], $8::text[], $9::jsonb[], $10::text[], $11::text[], \
                 $12::text[], $13::text[], $14::text[], $15::timestamptz[], $16::timestamptz[]) \
               WITH ORDINALITY AS i(id, tenant_id, session_id, wa_id, direction, chat, own_phone, \
                 kind, body, text, quoted_id, status, error, idempotency_key, created_at, \
                 updated_at, ord)), \
             room AS ( \
               SELECT t.tenant_id, (SELECT count(*) FROM ( \
                 SELECT 1 FROM messages m WHERE m.tenant_id = t.tenant_id \
                 AND m.status = 'queued' LIMIT $17) q) AS used \
               FROM (SELECT DISTINCT tenant_id FROM input) t), \
             ranked AS ( \
               SELECT i.*, row_number() OVER (PARTITION BY i.tenant_id ORDER BY i.ord) AS rk \
               FROM input i), \
             ins AS ( \
               INSERT INTO messages (id, tenant_id, session_id, wa_id, direction, chat, own_phone, \
                 kind, body, text, quoted_id, status, error, idempotency_key, created_at, updated_at) \
               SELECT r.id, r.tenant_id, r.session_id, r.wa_id, r.direction, r.chat, r.own_phone, \
                 r.kind, r.body, r.text, r.quoted_id, r.status, r.error, r.idempotency_key, \
                 r.created_at, r.updated_at \
               FROM ranked r JOIN room ON room.tenant_id = r.tenant_id \
               WHERE room.used + r.rk <= $17 \
               ORDER BY r.ord \
               ON CONFLICT DO NOTHING RETURNING *), \
             chat AS ( \
               INSERT INTO chats (session_id, chat, tenant_id, contact_name, last_message_id, \
                 last_message_at, unread_count, messages_in, messages_out) \
               SELECT session_id, chat, tenant_id, NULL, \
                 (array_agg(id ORDER BY created_at DESC, id DESC))[1], max(created_at), 0, 0, count(*) \
               FROM ins GROUP BY session_id, chat, tenant_id \
               ORDER BY session_id, chat \
               {CHAT_TAKES_MESSAGE}) \
             SELECT * FROM ins"
        )
    });
    diesel::sql_query(SQL.as_str())
        .bind::<sql_types::Array<sql_types::Uuid>, _>(rows.iter().map(|m| m.id).collect::<Vec<_>>())
        .bind::<sql_types::Array<sql_types::Uuid>, _>(
            rows.iter().map(|m| m.tenant_id).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Uuid>, _>(
            rows.iter().map(|m| m.session_id).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Text>, _>(
            rows.iter().map(|m| m.wa_id.as_str()).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Text>, _>(
            rows.iter()
                .map(|m| m.direction.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Text>, _>(
            rows.iter().map(|m| m.chat.as_str()).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Text>, _>(
            rows.iter()
                .map(|m| m.own_phone.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Text>, _>(
            rows.iter().map(|m| m.kind.as_str()).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Jsonb>, _>(
            rows.iter().map(|m| &m.body).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Nullable<sql_types::Text>>, _>(
            rows.iter().map(|m| m.text.as_deref()).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Nullable<sql_types::Text>>, _>(
            rows.iter()
                .map(|m| m.quoted_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Text>, _>(
            rows.iter().map(|m| m.status.as_str()).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Nullable<sql_types::Text>>, _>(
            rows.iter().map(|m| m.error.as_deref()).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Nullable<sql_types::Text>>, _>(
            rows.iter()
                .map(|m| m.idempotency_key.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Timestamptz>, _>(
            rows.iter().map(|m| m.created_at).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Timestamptz>, _>(
            rows.iter().map(|m| m.updated_at).collect::<Vec<_>>(),
        )
        .bind::<sql_types::BigInt, _>(queue_limit)
        .prepared()
        .load(conn)
        .await
}

/// A received message as [`insert_inbound_batch`] stores it: the row, the sender's push name
/// (the chat's contact name when it has none) and its `message.received` event data.
pub struct Inbound {
    pub row: MessageRow,
    pub push_name: Option<String>,
    pub event: serde_json::Value,
}

/// Stores many received messages (of any sessions and tenants) in one statement: each
/// message once (a redelivered WhatsApp id is skipped), its chat row, its `message.received`
/// event with the tenant's next event id, and the event's webhook deliveries. Chat rows are
/// taken in (session, chat) order and the tenants' event counters in tenant order, as the
/// other group writers take theirs. Returns the events of the messages that were new.
pub async fn insert_inbound_batch(
    conn: &mut AsyncPgConnection,
    messages: &[Inbound],
) -> QueryResult<Vec<EventRow>> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH input AS ( \
               SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], \
                 $6::text[], $7::text[], $8::jsonb[], $9::text[], $10::text[], \
                 $11::timestamptz[], $12::text[], $13::jsonb[]) \
               WITH ORDINALITY AS i(id, tenant_id, session_id, wa_id, chat, own_phone, kind, \
                 body, text, quoted_id, created_at, push_name, data, ord)), \
             ins AS ( \
               INSERT INTO messages (id, tenant_id, session_id, wa_id, direction, chat, own_phone, \
                 kind, body, text, quoted_id, status, error, idempotency_key, created_at, updated_at) \
               SELECT id, tenant_id, session_id, wa_id, 'in', chat, own_phone, kind, body, text, \
                 quoted_id, 'received', NULL, NULL, created_at, created_at \
               FROM input ORDER BY ord \
               ON CONFLICT DO NOTHING RETURNING id), \
             new AS ( \
               SELECT i.* FROM input i JOIN ins ON ins.id = i.id), \
             chat AS ( \
               INSERT INTO chats (session_id, chat, tenant_id, contact_name, last_message_id, \
                 last_message_at, unread_count, messages_in, messages_out) \
               SELECT session_id, chat, tenant_id, \
                 (array_agg(push_name ORDER BY ord DESC) FILTER (WHERE push_name IS NOT NULL))[1], \
                 (array_agg(id ORDER BY created_at DESC, id DESC))[1], max(created_at), \
                 count(*), count(*), 0 \
               FROM new GROUP BY session_id, chat, tenant_id \
               ORDER BY session_id, chat \
               {CHAT_TAKES_MESSAGE}), \
             numbered AS ( \
               SELECT new.*, row_number() OVER (PARTITION BY tenant_id ORDER BY ord) AS n, \
                 count(*) OVER (PARTITION BY tenant_id) AS total \
               FROM new), \
             next AS ( \
               UPDATE tenants t SET last_event_id = t.last_event_id + c.k \
               FROM (SELECT tenant_id, count(*) AS k FROM new GROUP BY tenant_id \
                     ORDER BY tenant_id) c \
               WHERE t.id = c.tenant_id \
               RETURNING t.id AS tenant_id, t.last_event_id), \
             ev AS ( \
               INSERT INTO events (tenant_id, id, session_id, kind, data, at) \
               SELECT numbered.tenant_id, next.last_event_id - numbered.total + numbered.n, \
                 numbered.session_id, '{MESSAGE_RECEIVED}', numbered.data, $14 \
               FROM numbered JOIN next ON next.tenant_id = numbered.tenant_id \
               RETURNING tenant_id, id, session_id, kind, data, at), \
             {deliveries}, \
             {ai_pending} \
             SELECT tenant_id, id, session_id, kind, data, at FROM ev ORDER BY tenant_id, id",
            deliveries = DELIVERIES_FOR_EVENTS.replace("$6", "$15"),
            ai_pending = crate::ai::store::PENDING_FOR_EVENTS.replace("$AT", "$14"),
        )
    });
    let rows = || messages.iter().map(|m| &m.row);
    let (at, at_json) = event_time();
    diesel::sql_query(SQL.as_str())
        .bind::<sql_types::Array<sql_types::Uuid>, _>(rows().map(|m| m.id).collect::<Vec<_>>())
        .bind::<sql_types::Array<sql_types::Uuid>, _>(
            rows().map(|m| m.tenant_id).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Uuid>, _>(
            rows().map(|m| m.session_id).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Text>, _>(
            rows().map(|m| m.wa_id.as_str()).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Text>, _>(
            rows().map(|m| m.chat.as_str()).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Text>, _>(
            rows().map(|m| m.own_phone.as_str()).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Text>, _>(
            rows().map(|m| m.kind.as_str()).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Jsonb>, _>(rows().map(|m| &m.body).collect::<Vec<_>>())
        .bind::<sql_types::Array<sql_types::Nullable<sql_types::Text>>, _>(
            rows().map(|m| m.text.as_deref()).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Nullable<sql_types::Text>>, _>(
            rows().map(|m| m.quoted_id.as_deref()).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Timestamptz>, _>(
            rows().map(|m| m.created_at).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Nullable<sql_types::Text>>, _>(
            messages
                .iter()
                .map(|m| m.push_name.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Jsonb>, _>(
            messages.iter().map(|m| &m.event).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Timestamptz, _>(at)
        .bind::<sql_types::Jsonb, _>(&at_json)
        .prepared()
        .load(conn)
        .await
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
/// `$CUR` is the stored status, `$NEW` the one moved to.
const MOVES_FORWARD: &str = "$CUR <> 'failed' AND ( \
    ($NEW = 'failed' AND $CUR IN ('queued', 'sent')) OR \
    ($NEW <> 'failed' AND \
      (CASE $CUR WHEN 'queued' THEN 0 WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 ELSE 3 END) < \
      (CASE $NEW WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 WHEN 'read' THEN 3 ELSE 0 END)))";

fn moves_forward(current: &str, new: &str) -> String {
    MOVES_FORWARD.replace("$CUR", current).replace("$NEW", new)
}

/// Which outgoing messages a status move names.
pub enum Move {
    /// One message, by our id.
    One(Uuid),
    /// A session's messages, by WhatsApp id.
    ByWaIds(Uuid, Vec<String>),
}

/// Moves outgoing messages on and stores a `message.status` event (with its webhook
/// deliveries) for each one that moved, in one statement: no transaction held open across
/// round trips, and the tenant's event counter locked for one statement. Returns the events,
/// oldest first; a move backwards moves nothing and stores nothing.
pub async fn move_status(
    conn: &mut AsyncPgConnection,
    which: &Move,
    status: &str,
    error: Option<&str>,
) -> QueryResult<Vec<EventRow>> {
    let (target, key, wa_ids): (&str, Uuid, &[String]) = match which {
        Move::One(id) => ("id = $1", *id, &[]),
        Move::ByWaIds(session, ids) => ("session_id = $1 AND wa_id = ANY($2)", *session, ids),
    };
    let (at, at_json) = event_time();
    // The event's data is the message's `message.status` shape: id, wa_id, chat, status,
    // error.
    let sql = format!(
        "WITH moved AS ( \
           UPDATE messages SET status = $3, error = $4, updated_at = now() \
           WHERE {target} AND direction = 'out' AND {forward} \
           RETURNING id, tenant_id, session_id, wa_id, chat, status, error), \
         numbered AS ( \
           SELECT moved.*, row_number() OVER (ORDER BY id) AS n, count(*) OVER () AS total \
           FROM moved), \
         next AS ( \
           UPDATE tenants SET last_event_id = last_event_id + (SELECT count(*) FROM moved) \
           WHERE id = (SELECT tenant_id FROM moved LIMIT 1) \
           RETURNING id AS tenant_id, last_event_id), \
         ev AS ( \
           INSERT INTO events (tenant_id, id, session_id, kind, data, at) \
           SELECT next.tenant_id, next.last_event_id - numbered.total + numbered.n, \
             numbered.session_id, '{MESSAGE_STATUS}', \
             jsonb_build_object('id', numbered.id, 'wa_id', numbered.wa_id, \
               'chat', numbered.chat, 'status', numbered.status, 'error', numbered.error), \
             $5 \
           FROM numbered CROSS JOIN next \
           RETURNING tenant_id, id, session_id, kind, data, at), \
         {DELIVERIES_FOR_EVENTS} \
         SELECT tenant_id, id, session_id, kind, data, at FROM ev ORDER BY id",
        forward = moves_forward("status", "$3"),
    );
    diesel::sql_query(sql)
        .bind::<sql_types::Uuid, _>(key)
        .bind::<sql_types::Array<sql_types::Text>, _>(wa_ids)
        .bind::<sql_types::Text, _>(status)
        .bind::<sql_types::Nullable<sql_types::Text>, _>(error)
        .bind::<sql_types::Timestamptz, _>(at)
        .bind::<sql_types::Jsonb, _>(at_json)
        .prepared()
        .load(conn)
        .await
}

/// One message's move in a [`move_statuses`] batch.
#[derive(Debug, Clone)]
pub struct StatusMove {
    pub id: Uuid,
    pub status: String,
    pub error: Option<String>,
}

/// [`move_status`] for many messages of any tenants at once, in one statement that moves
/// every message and stores the events and their webhook deliveries. It takes its locks in
/// the order [`move_status`] and the receipts take theirs — the messages' rows first, then the
/// tenants' event counters (in tenant order) — so the two never wait on each other in a
/// cycle. Each tenant's events keep consecutive ids in message order. A message may appear
/// only once per batch. Returns the events, by tenant and id.
pub async fn move_statuses(
    conn: &mut AsyncPgConnection,
    moves: &[StatusMove],
) -> QueryResult<Vec<EventRow>> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH input AS ( \
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) AS i(id, status, error)), \
             moved AS ( \
               UPDATE messages m SET status = i.status, error = i.error, updated_at = now() \
               FROM input i \
               WHERE m.id = i.id AND m.direction = 'out' AND {forward} \
               RETURNING m.id, m.tenant_id, m.session_id, m.wa_id, m.chat, m.status, m.error), \
             numbered AS ( \
               SELECT moved.*, row_number() OVER (PARTITION BY tenant_id ORDER BY id) AS n, \
                 count(*) OVER (PARTITION BY tenant_id) AS total \
               FROM moved), \
             next AS ( \
               UPDATE tenants t SET last_event_id = t.last_event_id + c.k \
               FROM (SELECT tenant_id, count(*) AS k FROM moved GROUP BY tenant_id \
                     ORDER BY tenant_id) c \
               WHERE t.id = c.tenant_id \
               RETURNING t.id AS tenant_id, t.last_event_id), \
             ev AS ( \
               INSERT INTO events (tenant_id, id, session_id, kind, data, at) \
               SELECT numbered.tenant_id, next.last_event_id - numbered.total + numbered.n, \
                 numbered.session_id, '{MESSAGE_STATUS}', \
                 jsonb_build_object('id', numbered.id, 'wa_id', numbered.wa_id, \
                   'chat', numbered.chat, 'status', numbered.status, 'error', numbered.error), \
                 $4 \
               FROM numbered JOIN next ON next.tenant_id = numbered.tenant_id \
               RETURNING tenant_id, id, session_id, kind, data, at), \
             {deliveries} \
             SELECT tenant_id, id, session_id, kind, data, at FROM ev ORDER BY tenant_id, id",
            forward = moves_forward("m.status", "i.status"),
            deliveries = DELIVERIES_FOR_EVENTS.replace("$6", "$5"),
        )
    });
    let ids: Vec<Uuid> = moves.iter().map(|m| m.id).collect();
    let statuses: Vec<&str> = moves.iter().map(|m| m.status.as_str()).collect();
    let errors: Vec<Option<&str>> = moves.iter().map(|m| m.error.as_deref()).collect();
    let (at, at_json) = event_time();
    diesel::sql_query(SQL.as_str())
        .bind::<sql_types::Array<sql_types::Uuid>, _>(&ids)
        .bind::<sql_types::Array<sql_types::Text>, _>(&statuses)
        .bind::<sql_types::Array<sql_types::Nullable<sql_types::Text>>, _>(&errors)
        .bind::<sql_types::Timestamptz, _>(at)
        .bind::<sql_types::Jsonb, _>(&at_json)
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

/// Keeps a received message that could not be stored, as received (`payload`: its JSON, in
/// bytea, NULs and all), with its `message.dead_lettered` event, in one transaction. A second
/// dead-lettering of the same WhatsApp id (a redelivery) adds its attempts to the row.
pub async fn insert_dead_letter(
    conn: &mut AsyncPgConnection,
    session: &wagate_actors::session::SessionSpec,
    message: &wagate_actors::messaging::InboundMessage,
    error: &str,
    attempts: u32,
) -> anyhow::Result<EventRow> {
    use crate::messages::adapters::without_nul;
    use crate::schema::inbound_dead_letters as dl;

    let payload = serde_json::to_vec(&serde_json::json!({
        "wa_id": message.wa_id,
        "from": message.from,
        "to": message.to,
        "push_name": message.push_name,
        "content": message.content,
        "quoted_wa_id": message.quoted_wa_id,
        "sent_at": DateTime::<Utc>::from(message.sent_at),
    }))?;
    let mut replaced = false;
    let wa_id = without_nul(message.wa_id.clone(), &mut replaced);
    let sender = without_nul(chat_key(&message.from), &mut replaced);
    let error = without_nul(error.to_owned(), &mut replaced);
    let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
    let (tenant_id, session_id) = (session.tenant_id, session.id);
    let event = conn
        .transaction(async move |conn| {
            let (id, total): (Uuid, i32) = diesel::insert_into(dl::table)
                .values((
                    dl::id.eq(Uuid::now_v7()),
                    dl::tenant_id.eq(tenant_id),
                    dl::session_id.eq(session_id),
                    dl::wa_id.eq(&wa_id),
                    dl::sender.eq(&sender),
                    dl::payload.eq(&payload),
                    dl::error.eq(&error),
                    dl::attempts.eq(attempts),
                ))
                .on_conflict((dl::session_id, dl::wa_id))
                .do_update()
                .set((
                    dl::attempts.eq(dl::attempts + attempts),
                    dl::error.eq(&error),
                    dl::payload.eq(&payload),
                    dl::updated_at.eq(diesel::dsl::now),
                ))
                .returning((dl::id, dl::attempts))
                .get_result(conn)
                .await?;
            crate::events::insert_event(
                conn,
                tenant_id,
                Some(session_id),
                &EventPayload::MessageDeadLettered(DeadLettered {
                    dead_letter_id: id,
                    wa_id,
                    from: sender,
                    error,
                    attempts: total,
                }),
            )
            .await
        })
        .await?;
    Ok(event)
}

/// A change to a stored message: an edit (the new text) or a delete (`for` everyone or me).
pub struct Change<'a> {
    /// Identifies the change, so a redelivered one is applied (and told) once.
    pub change_id: &'a str,
    pub session_id: Uuid,
    pub tenant_id: Uuid,
    /// The message changed, by WhatsApp id, direction and chat (a contact may only change
    /// what it sent to this session).
    pub wa_id: &'a str,
    pub direction: &'a str,
    pub chat: &'a str,
    pub at: DateTime<Utc>,
    pub edit: Option<&'a str>,
    pub deleted_for: Option<&'a str>,
}

/// Applies a change and stores its event (`message.edited` or `message.deleted`) in one
/// transaction. `None`: no such message, or this change was applied before.
pub async fn apply_change(
    conn: &mut AsyncPgConnection,
    change: &Change<'_>,
) -> QueryResult<Option<(MessageRow, EventRow)>> {
    let patch = match (change.edit, change.deleted_for) {
        (Some(text), _) => serde_json::json!({
            "_edited_at": change.at, "_change_id": change.change_id, "_edit": text,
        }),
        (None, Some(whom)) => serde_json::json!({
            "_deleted_at": change.at, "_deleted_for": whom, "_change_id": change.change_id,
        }),
        (None, None) => return Ok(None),
    };
    conn.transaction(async move |conn| {
        // An edit replaces the text (a caption, for media); a delete keeps the content,
        // marked, for the tenant's own records.
        let row: Option<MessageRow> = diesel::sql_query(
            "UPDATE messages SET \
               text = CASE WHEN $6::jsonb ? '_edit' THEN $6::jsonb->>'_edit' ELSE text END, \
               body = (body || ($6::jsonb - '_edit')) || CASE WHEN $6::jsonb ? '_edit' THEN \
                 jsonb_build_object(CASE WHEN kind = 'text' THEN 'text' ELSE 'caption' END, \
                   $6::jsonb->>'_edit') ELSE '{}'::jsonb END, \
               updated_at = now() \
             WHERE session_id = $1 AND wa_id = $2 AND direction = $3 AND chat = $4 \
               AND (body->>'_change_id') IS DISTINCT FROM $5 \
             RETURNING *",
        )
        .bind::<sql_types::Uuid, _>(change.session_id)
        .bind::<sql_types::Text, _>(change.wa_id)
        .bind::<sql_types::Text, _>(change.direction)
        .bind::<sql_types::Text, _>(change.chat)
        .bind::<sql_types::Text, _>(change.change_id)
        .bind::<sql_types::Jsonb, _>(&patch)
        .get_result(conn)
        .await
        .optional()?;
        let Some(row) = row else { return Ok(None) };
        let data = crate::events::MessageChanged {
            id: row.id,
            wa_id: row.wa_id.clone(),
            chat: row.chat.clone(),
            direction: row.direction.clone(),
            text: change.edit.map(str::to_owned),
            deleted_for: change.deleted_for.map(str::to_owned),
            at: change.at,
        };
        let payload = if change.edit.is_some() {
            EventPayload::MessageEdited(data)
        } else {
            EventPayload::MessageDeleted(data)
        };
        let event =
            crate::events::insert_event(conn, change.tenant_id, Some(change.session_id), &payload)
                .await?;
        Ok(Some((row, event)))
    })
    .await
}

/// A chat's last `limit` messages, newest first (deleted ones left out).
pub async fn recent_in_chat(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    chat: &str,
    limit: i64,
) -> QueryResult<Vec<MessageRow>> {
    messages::table
        .filter(messages::session_id.eq(session_id))
        .filter(messages::chat.eq(chat))
        .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
            "NOT (body ? '_deleted_at')",
        ))
        .order((messages::created_at.desc(), messages::id.desc()))
        .limit(limit)
        .select(MessageRow::as_select())
        .load(conn)
        .await
}
