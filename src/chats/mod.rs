//! Chats: one per contact a session talks to, with its last message, unread count and
//! settings (the bot on or off, the contact's name as the tenant knows it).

pub mod store;

use actix_web::{HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::http::json::ValidJson;
use crate::http::openapi::CommonErrors;
use crate::http::pagination::{Page, TimeCursor, parse_limit};
use crate::messages::store::MessageRow;
use crate::messages::{Message, MessageStats, parse_chat};
use crate::sessions::store::SessionRow;
use crate::sessions::{ScopedSession, SessionPath, load_for};
use wagate_actors::messaging::chat_key;

/// A chat as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Chat {
    /// The contact's phone number.
    pub chat: String,
    pub session_id: Uuid,
    /// The contact's name as the tenant knows it (else as the contact gave it).
    pub contact_name: Option<String>,
    pub last_message: Option<Message>,
    pub last_message_at: Option<DateTime<Utc>>,
    pub unread_count: i32,
    pub messages_in: i64,
    pub messages_out: i64,
    /// The auto-reply bot answers in this chat.
    pub bot_enabled: bool,
    /// The chat's own agent (instead of the session's); shown on one chat, not in lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<Uuid>,
    /// The chat's labels (triggers' `chat_label` conditions read them); shown on one chat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Chat {
    fn new(c: &store::ChatRow, last: Option<&MessageRow>) -> Result<Chat, ApiError> {
        Ok(Chat {
            chat: c.chat.clone(),
            session_id: c.session_id,
            contact_name: c.contact_name.clone(),
            last_message: last
                .map(Message::try_from)
                .transpose()
                .map_err(ApiError::internal)?,
            last_message_at: c.last_message_at,
            unread_count: c.unread_count,
            messages_in: c.messages_in,
            messages_out: c.messages_out,
            bot_enabled: c.bot_enabled,
            agent_id: None,
            labels: None,
            created_at: c.created_at,
            updated_at: c.updated_at,
        })
    }
}

/// One chat with its message counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatWithStats {
    #[serde(flatten)]
    pub chat: Chat,
    pub stats: MessageStats,
    /// The CRM cards that link this chat.
    pub cards: Vec<crate::crm::CardOut>,
}

/// How many chats a change touched.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatsChanged {
    pub changed: usize,
}

/// How many messages a clear deleted.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessagesDeleted {
    pub deleted: usize,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChatsQuery {
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// A session's chats, most recent first, with last message and unread count.
#[utoipa::path(
    tag = "chats",
    params(SessionPath, ChatsQuery),
    responses((status = 200, description = "A page of chats", body = Page<Chat>), CommonErrors),
    security(("api_key" = []))
)]
#[get("/sessions/{session_id}/chats")]
pub async fn list_chats(
    state: web::Data<AppState>,
    query: web::Query<ChatsQuery>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let session = session.row;
    let limit = parse_limit(query.limit.as_deref())?;
    let cursor = TimeCursor::parse(query.cursor.as_deref())?.map(|c| (c.at, c.key));
    let mut conn = state.db.get().await?;
    let rows = store::list_chats(&mut conn, session.id, cursor, i64::from(limit) + 1).await?;
    // Every chat has a last message time (its row is made with its first message).
    let page = Page::from_overfetched(rows, limit, |(c, _)| {
        TimeCursor::encode(c.last_message_at.unwrap_or(c.created_at), &c.chat)
    });
    Ok(HttpResponse::Ok().json(page.try_map(|(c, m)| Chat::new(c, m.as_ref()))?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ChatPath {
    pub session_id: Uuid,
    /// The contact's phone number.
    pub chat: String,
}

async fn load_chat(
    state: &AppState,
    caller: &Caller,
    path: &ChatPath,
) -> Result<(SessionRow, String), ApiError> {
    let (session, _) = load_for(state, caller, path.session_id).await?;
    let chat = chat_key(&parse_chat(&path.chat, "chat")?);
    Ok((session, chat))
}

/// One chat with its statistics.
#[utoipa::path(
    tag = "chats",
    params(ChatPath),
    responses((status = 200, description = "The chat", body = ChatWithStats), CommonErrors),
    security(("api_key" = []))
)]
#[get("/sessions/{session_id}/chats/{chat}")]
pub async fn get_chat(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<ChatPath>,
) -> Result<HttpResponse, ApiError> {
    let (session, chat) = load_chat(&state, &caller, &path).await?;
    let mut conn = state.db.get().await?;
    let (c, last) = store::get_chat(&mut conn, session.id, &chat)
        .await?
        .ok_or(ApiError::NotFound("chat"))?;
    let stats = crate::messages::store::stats(&mut conn, session.id, Some(&chat)).await?;
    let mut chat_out = Chat::new(&c, last.as_ref())?;
    chat_out.agent_id = crate::ai::chat_agent(&mut conn, session.id, &chat).await?;
    chat_out.labels = Some(store::labels(&mut conn, session.id, &chat).await?);
    let cards = crate::crm::store::cards_of_chat(&mut conn, session.id, &chat).await?;
    Ok(HttpResponse::Ok().json(ChatWithStats {
        chat: chat_out,
        stats: MessageStats::from_counts(&stats).map_err(ApiError::internal)?,
        cards: cards.iter().map(crate::crm::CardOut::from).collect(),
    }))
}

/// `PATCH …/chats/{chat}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateChat {
    /// The auto-reply bot answers in this chat.
    pub bot_enabled: Option<bool>,
    /// The contact's name as the tenant knows it (`null` clears it).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub contact_name: Option<Option<String>>,
    /// Mark every message of the chat read.
    #[serde(default)]
    pub read: bool,
    /// The chat's labels, replacing the ones it has (at most 20, each 1 to 50 characters).
    pub labels: Option<Vec<String>>,
    /// This chat's own agent, instead of the session's (`null` removes it). Switching
    /// clears the chat's cached answers.
    #[serde(default, deserialize_with = "crate::ai::present")]
    #[schema(value_type = Option<Uuid>)]
    pub agent_id: Option<Option<Uuid>>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Change a chat: bot on/off, the contact's name, mark read.
#[utoipa::path(
    tag = "chats",
    params(ChatPath),
    request_body = UpdateChat,
    responses((status = 200, description = "The chat", body = Chat), CommonErrors),
    security(("api_key" = []))
)]
#[patch("/sessions/{session_id}/chats/{chat}")]
pub async fn update_chat(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<ChatPath>,
    body: ValidJson<UpdateChat>,
) -> Result<HttpResponse, ApiError> {
    let (session, chat) = load_chat(&state, &caller, &path).await?;
    let body = body.into_inner();
    if let Some(Some(name)) = &body.contact_name
        && name.chars().count() > 256
    {
        return Err(ApiError::validation(
            "contact_name",
            "must be at most 256 characters",
        ));
    }
    let mut conn = state.db.get().await?;
    if store::get_chat(&mut conn, session.id, &chat)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound("chat"));
    }
    if let Some(labels) = &body.labels {
        if labels.len() > 20 {
            return Err(ApiError::validation("labels", "at most 20 labels"));
        }
        let mut clean: Vec<String> = Vec::with_capacity(labels.len());
        for (i, l) in labels.iter().enumerate() {
            let l = l.trim();
            if l.is_empty() || l.chars().count() > 50 {
                return Err(ApiError::validation(
                    format!("labels[{i}]"),
                    "1 to 50 characters",
                ));
            }
            if !clean.iter().any(|c| c == l) {
                clean.push(l.to_owned());
            }
        }
        store::set_labels(&mut conn, session.id, &chat, &clean).await?;
    }
    if let Some(agent) = body.agent_id {
        crate::ai::set_chat_agent(&state, &session, &chat, agent).await?;
    }
    store::update_chat(
        &mut conn,
        session.id,
        std::slice::from_ref(&chat),
        body.bot_enabled,
        body.contact_name,
        body.read,
    )
    .await?;
    let (c, last) = store::get_chat(&mut conn, session.id, &chat)
        .await?
        .ok_or(ApiError::NotFound("chat"))?;
    let mut chat_out = Chat::new(&c, last.as_ref())?;
    chat_out.agent_id = crate::ai::chat_agent(&mut conn, session.id, &chat).await?;
    chat_out.labels = Some(store::labels(&mut conn, session.id, &chat).await?);
    Ok(HttpResponse::Ok().json(chat_out))
}

/// Delete a chat's history (messages still queued are kept and still sent).
#[utoipa::path(
    tag = "chats",
    params(ChatPath),
    responses((status = 200, description = "How many messages were deleted", body = MessagesDeleted), CommonErrors),
    security(("api_key" = []))
)]
#[delete("/sessions/{session_id}/chats/{chat}/messages")]
pub async fn clear_chat(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<ChatPath>,
) -> Result<HttpResponse, ApiError> {
    let (session, chat) = load_chat(&state, &caller, &path).await?;
    let mut conn = state.db.get().await?;
    let deleted = store::clear_chat(&mut conn, session.id, &chat).await?;
    Ok(HttpResponse::Ok().json(MessagesDeleted { deleted }))
}

/// `POST …/chats/bulk`: one change to many chats.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkChats {
    /// Phone numbers, at most 500.
    pub chats: Vec<String>,
    pub bot_enabled: Option<bool>,
    #[serde(default)]
    pub read: bool,
}

/// Bot on/off or mark read for many chats at once.
#[utoipa::path(
    tag = "chats",
    params(SessionPath),
    request_body = BulkChats,
    responses((status = 200, description = "How many chats changed", body = ChatsChanged), CommonErrors),
    security(("api_key" = []))
)]
#[post("/sessions/{session_id}/chats/bulk")]
pub async fn bulk_chats(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<SessionPath>,
    body: ValidJson<BulkChats>,
) -> Result<HttpResponse, ApiError> {
    let (session, _) = load_for(&state, &caller, path.session_id).await?;
    let body = body.into_inner();
    if body.chats.is_empty() || body.chats.len() > 500 {
        return Err(ApiError::validation("chats", "must list 1 to 500 chats"));
    }
    if body.bot_enabled.is_none() && !body.read {
        return Err(ApiError::validation(
            "bot_enabled",
            "give bot_enabled or read: true",
        ));
    }
    let chats = body
        .chats
        .iter()
        .enumerate()
        .map(|(i, c)| parse_chat(c, &format!("chats[{i}]")).map(|d| chat_key(&d)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut conn = state.db.get().await?;
    let changed = store::update_chat(
        &mut conn,
        session.id,
        &chats,
        body.bot_enabled,
        None,
        body.read,
    )
    .await?;
    Ok(HttpResponse::Ok().json(ChatsChanged { changed }))
}

/// Turn the bot back on in every chat of the session.
#[utoipa::path(
    tag = "chats",
    params(SessionPath),
    responses((status = 200, description = "How many chats changed", body = ChatsChanged), CommonErrors),
    security(("api_key" = []))
)]
#[post("/sessions/{session_id}/chats/reset-activations")]
pub async fn reset_activations(
    state: web::Data<AppState>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let session = session.row;
    let mut conn = state.db.get().await?;
    let changed = store::reset_activations(&mut conn, session.id).await?;
    Ok(HttpResponse::Ok().json(ChatsChanged { changed }))
}

/// Listing, reading and changing chats.
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(list_chats)
        .service(bulk_chats)
        .service(reset_activations)
        .service(get_chat)
        .service(update_chat)
        .service(clear_chat);
}
