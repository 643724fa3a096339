//! Contacts in Postgres: what messages and checks revealed about a session's contacts, and
//! the merge of a LID-only chat into its number's chat once the number is known.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;
use wagate_actors::ports::ContactFacts;

use crate::schema::contacts;

#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = contacts)]
pub struct ContactRow {
    pub session_id: Uuid,
    pub chat: String,
    pub tenant_id: Uuid,
    pub phone: Option<String>,
    pub lid: Option<String>,
    pub push_name: Option<String>,
    pub on_whatsapp: Option<bool>,
    pub checked_at: Option<DateTime<Utc>>,
    pub blocked: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Moves a LID-only chat (`<lid>@lid`: its messages and its chat row) into the number's
/// chat, adding its counts to the number's chat when both exist.
async fn merge_lid_chat(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    lid_chat: &str,
    phone: &str,
) -> QueryResult<()> {
    diesel::sql_query(
        "WITH moved AS ( \
           UPDATE messages SET chat = $3 WHERE session_id = $1 AND chat = $2 RETURNING 1), \
         old AS (DELETE FROM chats WHERE session_id = $1 AND chat = $2 RETURNING *) \
         INSERT INTO chats (session_id, chat, tenant_id, contact_name, last_message_id, \
           last_message_at, unread_count, messages_in, messages_out, bot_enabled, created_at, \
           updated_at) \
         SELECT session_id, $3, tenant_id, contact_name, last_message_id, last_message_at, \
           unread_count, messages_in, messages_out, bot_enabled, created_at, now() FROM old \
         ON CONFLICT (session_id, chat) DO UPDATE SET \
           contact_name = COALESCE(chats.contact_name, EXCLUDED.contact_name), \
           last_message_id = CASE WHEN EXCLUDED.last_message_at > chats.last_message_at \
             THEN EXCLUDED.last_message_id ELSE chats.last_message_id END, \
           last_message_at = GREATEST(chats.last_message_at, EXCLUDED.last_message_at), \
           unread_count = chats.unread_count + EXCLUDED.unread_count, \
           messages_in = chats.messages_in + EXCLUDED.messages_in, \
           messages_out = chats.messages_out + EXCLUDED.messages_out, \
           bot_enabled = chats.bot_enabled AND EXCLUDED.bot_enabled, \
           created_at = LEAST(chats.created_at, EXCLUDED.created_at), \
           updated_at = now()",
    )
    .bind::<sql_types::Uuid, _>(session_id)
    .bind::<sql_types::Text, _>(lid_chat)
    .bind::<sql_types::Text, _>(phone)
    .execute(conn)
    .await?;
    Ok(())
}

/// Keeps what a message revealed about its sender. A LID with its number: the LID-only
/// contact and chat (if any) become the number's. A LID alone: kept under `<lid>@lid`
/// unless the number behind it is already known. A push name: kept when given.
pub async fn learn(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    session_id: Uuid,
    facts: &ContactFacts,
) -> QueryResult<()> {
    let facts = facts.clone();
    conn.transaction(async move |conn| {
        match (&facts.phone, &facts.lid) {
            (Some(phone), Some(lid)) => {
                let lid_chat = format!("{lid}@lid");
                merge_lid_chat(conn, session_id, &lid_chat, phone).await?;
                // The LID moves to the number's row (a LID-only row gives its name and block).
                let old: Vec<ContactRow> = diesel::sql_query(
                    "UPDATE contacts SET lid = NULL \
                     WHERE session_id = $1 AND lid = $2 AND chat <> $3 RETURNING *",
                )
                .bind::<sql_types::Uuid, _>(session_id)
                .bind::<sql_types::Text, _>(lid)
                .bind::<sql_types::Text, _>(phone)
                .load(conn)
                .await?;
                diesel::delete(
                    contacts::table
                        .filter(contacts::session_id.eq(session_id))
                        .filter(contacts::chat.eq(&lid_chat)),
                )
                .execute(conn)
                .await?;
                let old_name = old.iter().find_map(|c| c.push_name.clone());
                let old_blocked = old.iter().any(|c| c.blocked && c.phone.is_none());
                upsert(
                    conn,
                    tenant_id,
                    session_id,
                    phone,
                    Some(phone),
                    Some(lid),
                    facts.push_name.as_deref().or(old_name.as_deref()),
                    old_blocked,
                )
                .await
            }
            (Some(phone), None) => {
                upsert(
                    conn,
                    tenant_id,
                    session_id,
                    phone,
                    Some(phone),
                    None,
                    facts.push_name.as_deref(),
                    false,
                )
                .await
            }
            (None, Some(lid)) => {
                let known: i64 = contacts::table
                    .filter(contacts::session_id.eq(session_id))
                    .filter(contacts::lid.eq(lid))
                    .filter(contacts::phone.is_not_null())
                    .count()
                    .get_result(conn)
                    .await?;
                if known > 0 {
                    return Ok(());
                }
                upsert(
                    conn,
                    tenant_id,
                    session_id,
                    &format!("{lid}@lid"),
                    None,
                    Some(lid),
                    facts.push_name.as_deref(),
                    false,
                )
                .await
            }
            (None, None) => Ok(()),
        }
    })
    .await
}

#[allow(clippy::too_many_arguments)]
async fn upsert(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    session_id: Uuid,
    chat: &str,
    phone: Option<&str>,
    lid: Option<&str>,
    push_name: Option<&str>,
    blocked: bool,
) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO contacts (session_id, chat, tenant_id, phone, lid, push_name, blocked) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (session_id, chat) DO UPDATE SET \
           lid = COALESCE(EXCLUDED.lid, contacts.lid), \
           push_name = COALESCE(EXCLUDED.push_name, contacts.push_name), \
           blocked = contacts.blocked OR EXCLUDED.blocked, \
           updated_at = now()",
    )
    .bind::<sql_types::Uuid, _>(session_id)
    .bind::<sql_types::Text, _>(chat)
    .bind::<sql_types::Uuid, _>(tenant_id)
    .bind::<sql_types::Nullable<sql_types::Text>, _>(phone)
    .bind::<sql_types::Nullable<sql_types::Text>, _>(lid)
    .bind::<sql_types::Nullable<sql_types::Text>, _>(push_name)
    .bind::<sql_types::Bool, _>(blocked)
    .execute(conn)
    .await?;
    Ok(())
}

/// A session's contacts, most recently changed first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    before: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> QueryResult<Vec<ContactRow>> {
    let mut q = contacts::table
        .filter(contacts::session_id.eq(session_id))
        .order((contacts::updated_at.desc(), contacts::chat.asc()))
        .limit(limit)
        .select(ContactRow::as_select())
        .into_boxed();
    if let Some((at, chat)) = before {
        q = q.filter(
            contacts::updated_at
                .lt(at)
                .or(contacts::updated_at.eq(at).and(contacts::chat.gt(chat))),
        );
    }
    q.load(conn).await
}

/// One contact, by its chat key or its LID.
pub async fn get(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    chat: &str,
) -> QueryResult<Option<ContactRow>> {
    let lid = chat.strip_suffix("@lid").unwrap_or("");
    contacts::table
        .filter(contacts::session_id.eq(session_id))
        .filter(contacts::chat.eq(chat).or(contacts::lid.eq(lid)))
        // The number's row before a LID-only one.
        .order(contacts::phone.is_null())
        .select(ContactRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The numbers (`+<digits>`) among `phones` checked since `since`.
pub async fn fresh_checks(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    phones: &[String],
    since: DateTime<Utc>,
) -> QueryResult<Vec<ContactRow>> {
    contacts::table
        .filter(contacts::session_id.eq(session_id))
        .filter(contacts::chat.eq_any(phones))
        .filter(contacts::checked_at.ge(since))
        .select(ContactRow::as_select())
        .load(conn)
        .await
}

/// A number's check result: `(+digits, on WhatsApp, LID)`.
pub type CheckResult = (String, bool, Option<String>);

/// Keeps check results (and the LIDs they revealed).
pub async fn store_checks(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    session_id: Uuid,
    checks: &[CheckResult],
) -> QueryResult<()> {
    if checks.is_empty() {
        return Ok(());
    }
    let phones: Vec<&str> = checks.iter().map(|c| c.0.as_str()).collect();
    let on: Vec<bool> = checks.iter().map(|c| c.1).collect();
    let lids: Vec<Option<&str>> = checks.iter().map(|c| c.2.as_deref()).collect();
    let revealed: Vec<(String, String)> = checks
        .iter()
        .filter_map(|(p, _, l)| l.as_ref().map(|l| (p.clone(), format!("{l}@lid"))))
        .collect();
    conn.transaction(async move |conn| {
        // A chat kept under a LID alone becomes the number's.
        for (phone, lid_chat) in &revealed {
            merge_lid_chat(conn, session_id, lid_chat, phone).await?;
            diesel::delete(
                contacts::table
                    .filter(contacts::session_id.eq(session_id))
                    .filter(contacts::chat.eq(lid_chat)),
            )
            .execute(conn)
            .await?;
        }
        // A LID now known under a number leaves any other row that held it.
        diesel::sql_query(
            "UPDATE contacts SET lid = NULL WHERE session_id = $1 AND lid = ANY($3) \
             AND NOT (chat = ANY($2))",
        )
        .bind::<sql_types::Uuid, _>(session_id)
        .bind::<sql_types::Array<sql_types::Text>, _>(&phones)
        .bind::<sql_types::Array<sql_types::Nullable<sql_types::Text>>, _>(&lids)
        .execute(conn)
        .await?;
        diesel::sql_query(
            "INSERT INTO contacts (session_id, chat, tenant_id, phone, lid, on_whatsapp, \
               checked_at) \
             SELECT $1, p, $2, p, l, o, now() FROM unnest($3::text[], $4::bool[], $5::text[]) \
               AS c(p, o, l) \
             ON CONFLICT (session_id, chat) DO UPDATE SET \
               lid = COALESCE(EXCLUDED.lid, contacts.lid), on_whatsapp = EXCLUDED.on_whatsapp, \
               checked_at = EXCLUDED.checked_at, updated_at = now()",
        )
        .bind::<sql_types::Uuid, _>(session_id)
        .bind::<sql_types::Uuid, _>(tenant_id)
        .bind::<sql_types::Array<sql_types::Text>, _>(&phones)
        .bind::<sql_types::Array<sql_types::Bool>, _>(&on)
        .bind::<sql_types::Array<sql_types::Nullable<sql_types::Text>>, _>(&lids)
        .execute(conn)
        .await?;
        Ok(())
    })
    .await
}

/// Marks a contact blocked or not (made when new).
pub async fn set_blocked(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    session_id: Uuid,
    chat: &str,
    blocked: bool,
) -> QueryResult<()> {
    let phone = (!chat.ends_with("@lid")).then_some(chat);
    let lid = chat.strip_suffix("@lid");
    diesel::sql_query(
        "INSERT INTO contacts (session_id, chat, tenant_id, phone, lid, blocked) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (session_id, chat) DO UPDATE SET blocked = EXCLUDED.blocked, \
           updated_at = now()",
    )
    .bind::<sql_types::Uuid, _>(session_id)
    .bind::<sql_types::Text, _>(chat)
    .bind::<sql_types::Uuid, _>(tenant_id)
    .bind::<sql_types::Nullable<sql_types::Text>, _>(phone)
    .bind::<sql_types::Nullable<sql_types::Text>, _>(lid)
    .bind::<sql_types::Bool, _>(blocked)
    .execute(conn)
    .await?;
    Ok(())
}
