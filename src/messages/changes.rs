//! Editing and deleting messages through the API: our own, within WhatsApp's windows, on
//! WhatsApp first (through the live session) and then in the history, with the same events
//! a contact's edits and deletes produce.

use actix_web::{HttpResponse, delete, patch, web};
use chrono::{Duration, Utc};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use wagate_actors::session::contacts::LiveCommand;

use super::store::{self, Change, MessageRow};
use super::{Message, MessagePath};
use crate::app::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::http::json::ValidJson;
use crate::http::openapi::{CommonErrors, LiveErrors};
use crate::sessions::{ScopedSession, lifecycle};

/// WhatsApp lets a sender edit a message for 15 minutes.
pub const EDIT_WINDOW_MINUTES: i64 = 15;
/// WhatsApp lets a sender delete a message for everyone for about two and a half days.
pub const DELETE_WINDOW_HOURS: i64 = 60;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditRequest {
    /// The new text (1 to 4096 characters).
    pub text: String,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct DeleteQuery {
    /// `everyone` (WhatsApp removes it from the chat; default) or `me` (hidden here only).
    #[serde(rename = "for")]
    pub for_: Option<String>,
}

fn not_changeable(message: impl Into<String>) -> ApiError {
    ApiError::Conflict {
        code: ErrorCode::MessageNotChangeable,
        message: message.into(),
    }
}

async fn load(state: &AppState, session: uuid::Uuid, id: &str) -> Result<MessageRow, ApiError> {
    let mut conn = state.db.get().await?;
    store::find_in_session(&mut conn, session, id)
        .await?
        .ok_or(ApiError::NotFound("message"))
}

/// Edit one of the session's own text messages (within WhatsApp's 15 minutes).
#[utoipa::path(
    tag = "messages",
    params(MessagePath),
    request_body = EditRequest,
    responses((status = 200, description = "The message, edited", body = Message), CommonErrors, LiveErrors),
    security(("api_key" = []))
)]
#[patch("/sessions/{session_id}/messages/{message_id}")]
pub async fn edit_message(
    state: web::Data<AppState>,
    path: web::Path<MessagePath>,
    body: ValidJson<EditRequest>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let session = session.row;
    let text = body.into_inner().text;
    if text.trim().is_empty() || text.chars().count() > 4096 {
        return Err(ApiError::validation("text", "must be 1 to 4096 characters"));
    }
    let row = load(&state, session.id, &path.message_id).await?;
    if row.direction != "out" || row.kind != "text" {
        return Err(not_changeable(
            "only this session's own text messages can be edited",
        ));
    }
    if !matches!(row.status.as_str(), "sent" | "delivered" | "read") {
        return Err(not_changeable(format!(
            "the message is {}; only a message WhatsApp took can be edited",
            row.status
        )));
    }
    if row.body.get("_deleted_at").is_some() {
        return Err(not_changeable("the message was deleted"));
    }
    if Utc::now() - row.created_at > Duration::minutes(EDIT_WINDOW_MINUTES) {
        return Err(not_changeable(format!(
            "WhatsApp allows edits for {EDIT_WINDOW_MINUTES} minutes after sending"
        )));
    }
    lifecycle::live(
        state.sessions(),
        &session,
        LiveCommand::Edit {
            peer: row.chat.trim_start_matches('+').to_owned(),
            wa_id: row.wa_id.clone(),
            text: text.clone(),
        },
    )
    .await?;
    let change_id = uuid::Uuid::now_v7().to_string();
    apply(&state, &row, &change_id, Some(&text), None).await
}

/// Delete one of the session's messages: for everyone (its own, within WhatsApp's window)
/// or for this session only (any message).
#[utoipa::path(
    tag = "messages",
    params(MessagePath, DeleteQuery),
    responses((status = 200, description = "The message, marked deleted", body = Message), CommonErrors, LiveErrors),
    security(("api_key" = []))
)]
#[delete("/sessions/{session_id}/messages/{message_id}")]
pub async fn delete_message(
    state: web::Data<AppState>,
    path: web::Path<MessagePath>,
    query: web::Query<DeleteQuery>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let session = session.row;
    let whom = match query.for_.as_deref().unwrap_or("everyone") {
        w @ ("everyone" | "me") => w,
        _ => return Err(ApiError::validation("for", "must be everyone or me")),
    };
    let row = load(&state, session.id, &path.message_id).await?;
    if row.body.get("_deleted_at").is_some() {
        return Err(not_changeable("the message was deleted already"));
    }
    if whom == "everyone" {
        if row.direction != "out" {
            return Err(not_changeable(
                "only this session's own messages can be deleted for everyone; use for=me",
            ));
        }
        if !matches!(row.status.as_str(), "sent" | "delivered" | "read") {
            return Err(not_changeable(format!(
                "the message is {}; only a message WhatsApp took can be deleted for everyone",
                row.status
            )));
        }
        if Utc::now() - row.created_at > Duration::hours(DELETE_WINDOW_HOURS) {
            return Err(not_changeable(format!(
                "WhatsApp allows deleting for everyone for {DELETE_WINDOW_HOURS} hours after sending"
            )));
        }
        lifecycle::live(
            state.sessions(),
            &session,
            LiveCommand::Revoke {
                peer: row.chat.trim_start_matches('+').to_owned(),
                wa_id: row.wa_id.clone(),
            },
        )
        .await?;
    }
    let change_id = uuid::Uuid::now_v7().to_string();
    apply(&state, &row, &change_id, None, Some(whom)).await
}

async fn apply(
    state: &AppState,
    row: &MessageRow,
    change_id: &str,
    edit: Option<&str>,
    deleted_for: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.db.get().await?;
    let (changed, event) = store::apply_change(
        &mut conn,
        &Change {
            change_id,
            session_id: row.session_id,
            tenant_id: row.tenant_id,
            wa_id: &row.wa_id,
            direction: &row.direction,
            chat: &row.chat,
            at: Utc::now(),
            edit,
            deleted_for,
        },
    )
    .await?
    .ok_or(ApiError::NotFound("message"))?;
    state.events.publish([event]);
    Ok(HttpResponse::Ok().json(Message::try_from(&changed).map_err(ApiError::internal)?))
}
