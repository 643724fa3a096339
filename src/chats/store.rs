//! Chats in Postgres: one row per contact a session talks to, made and kept current by the
//! messages written with it (`messages::store`), and changed here by the tenant.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::messages::store::MessageRow;
use crate::schema::{chats, messages};

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

#[derive(diesel::QueryableByName)]
struct LabelsRow {
    #[diesel(sql_type = diesel::sql_types::Array<diesel::sql_types::Text>)]
    labels: Vec<String>,
}

/// A chat's labels (`chats.labels`, read by triggers' `chat_label` conditions).
pub async fn labels(
    conn: &mut AsyncPgConnection,
    session: Uuid,
    chat: &str,
) -> QueryResult<Vec<String>> {
    Ok(
        diesel::sql_query("SELECT labels FROM chats WHERE session_id = $1 AND chat = $2")
            .bind::<diesel::sql_types::Uuid, _>(session)
            .bind::<diesel::sql_types::Text, _>(chat)
            .get_result::<LabelsRow>(conn)
            .await
            .optional()?
            .map(|r| r.labels)
            .unwrap_or_default(),
    )
}

pub async fn set_labels(
    conn: &mut AsyncPgConnection,
    session: Uuid,
    chat: &str,
    labels: &[String],
) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE chats SET labels = $3, updated_at = now() WHERE session_id = $1 AND chat = $2",
    )
    .bind::<diesel::sql_types::Uuid, _>(session)
    .bind::<diesel::sql_types::Text, _>(chat)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(labels)
    .execute(conn)
    .await
}
