//! Contacts and presence: what a session knows of the people it talks to (push names, LIDs,
//! blocks), live lookups on WhatsApp (is a number on WhatsApp, a contact's about text and
//! picture), and presence both ways (the session's own, typing in a chat, subscribing to a
//! contact's; `presence.update` events come from the session actors).

pub mod adapters;
pub mod store;

use std::time::Duration;

use actix_web::{HttpResponse, get, post, put, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wagate_actors::messaging::chat_key;
use wagate_actors::session::contacts::{ChatState, LiveAnswer, LiveCommand};

use crate::app::AppState;
use crate::error::ApiError;
use crate::http::json::ValidJson;
use crate::http::openapi::{CommonErrors, LiveErrors};
use crate::http::pagination::{Page, TimeCursor, parse_limit};
use crate::kv::RateLimiter as _;
use crate::messages::parse_recipient;
use crate::sessions::store::SessionRow;
use crate::sessions::{ScopedSession, SessionPath, lifecycle};
use store::ContactRow;

/// A contact as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Contact {
    /// The contact's number (`+<digits>`), or `<lid>@lid` while only its LID is known.
    pub chat: String,
    pub phone: Option<String>,
    /// The contact's LID (the user part), when known.
    pub lid: Option<String>,
    /// The name the contact gave WhatsApp.
    pub push_name: Option<String>,
    /// From the last check (`POST …/contacts/check`); absent if never checked.
    pub on_whatsapp: Option<bool>,
    pub checked_at: Option<DateTime<Utc>>,
    /// This session blocked the contact.
    pub blocked: bool,
    pub updated_at: DateTime<Utc>,
}

impl From<&ContactRow> for Contact {
    fn from(c: &ContactRow) -> Self {
        Contact {
            chat: c.chat.clone(),
            phone: c.phone.clone(),
            lid: c.lid.clone(),
            push_name: c.push_name.clone(),
            on_whatsapp: c.on_whatsapp,
            checked_at: c.checked_at,
            blocked: c.blocked,
            updated_at: c.updated_at,
        }
    }
}

/// A contact with what WhatsApp shows of its profile now.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContactDetail {
    #[serde(flatten)]
    pub contact: Contact,
    /// The contact's about text; absent when they have none or hide it from this account.
    pub about: Option<String>,
    /// The contact has an about text and their privacy settings hide it from this account.
    pub about_hidden: bool,
    /// Where to fetch their profile picture (expires; fetch it again later); absent when
    /// they have none or hide it from this account.
    pub picture_url: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// Numbers in international form (`+<country><number>`).
    pub phones: Vec<String>,
}

/// One number's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct NumberOnWhatsApp {
    /// As asked, normalised: `+<digits>`.
    pub phone: String,
    pub on_whatsapp: bool,
    /// The JID to message it at.
    pub jid: Option<String>,
    /// Its LID, when WhatsApp gave it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lid: Option<String>,
    /// Answered from the cache (`contacts.check_cache_secs`) rather than asked of WhatsApp.
    pub cached: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckResponse {
    pub items: Vec<NumberOnWhatsApp>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ContactPath {
    pub session_id: Uuid,
    /// The contact's number (`+<digits>`) or LID (`<digits>@lid`).
    pub phone: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ChatPath {
    pub session_id: Uuid,
    /// The chat: a number (`+<digits>`) or a LID (`<digits>@lid`).
    pub chat: String,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ContactsQuery {
    /// 1 to 100 (default 50).
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceRequest {
    /// `available` (online) or `unavailable`.
    pub state: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TypingRequest {
    /// `composing` (typing…), `recording` (recording audio…) or `paused` (neither).
    pub state: String,
}

/// What a live request did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Done {
    pub ok: bool,
}

fn contact_chat(raw: &str) -> Result<String, ApiError> {
    Ok(chat_key(&parse_recipient(raw, "phone")?))
}

/// The peer as the actors take it: digits, or `<lid>@lid`.
fn peer(chat: &str) -> String {
    chat.trim_start_matches('+').to_owned()
}

async fn live(
    state: &AppState,
    session: &SessionRow,
    cmd: LiveCommand,
) -> Result<LiveAnswer, ApiError> {
    lifecycle::live(state.sessions(), session, cmd).await
}

/// Are these numbers on WhatsApp? Answers from the cache when checked recently; the rest
/// are asked of WhatsApp in one request, within the session's lookup budget.
#[utoipa::path(
    tag = "contacts",
    params(SessionPath),
    request_body = CheckRequest,
    responses((status = 200, description = "One answer per number, in order", body = CheckResponse), CommonErrors, LiveErrors),
    security(("api_key" = []))
)]
#[post("/sessions/{session_id}/contacts/check")]
pub async fn check_numbers(
    state: web::Data<AppState>,
    body: ValidJson<CheckRequest>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let session = session.row;
    let settings = &state.settings.contacts;
    let body = body.into_inner();
    if body.phones.is_empty() || body.phones.len() > settings.max_numbers_per_check {
        return Err(ApiError::validation(
            "phones",
            format!("must list 1 to {} numbers", settings.max_numbers_per_check),
        ));
    }
    let mut phones: Vec<String> = Vec::with_capacity(body.phones.len());
    for (i, raw) in body.phones.iter().enumerate() {
        let digits = parse_recipient(raw, &format!("phones[{i}]"))?;
        if digits.ends_with("@lid") {
            return Err(ApiError::validation(
                format!("phones[{i}]"),
                "must be a phone number, not a LID",
            ));
        }
        phones.push(format!("+{digits}"));
    }
    let since = Utc::now()
        - chrono::Duration::seconds(i64::try_from(settings.check_cache_secs).unwrap_or(i64::MAX));
    let mut conn = state.db.get().await?;
    let cached = store::fresh_checks(&mut conn, session.id, &phones, since).await?;
    drop(conn);
    let mut ask: Vec<String> = phones
        .iter()
        .filter(|p| !cached.iter().any(|c| &c.chat == *p))
        .cloned()
        .collect();
    ask.dedup();
    let mut answered = Vec::new();
    if !ask.is_empty() {
        // The lookup budget counts numbers asked of WhatsApp, per session.
        let key = format!("contact-checks:{}", session.id);
        for _ in &ask {
            let decision = state
                .ephemeral
                .hit(&key, settings.checks_per_minute, Duration::from_secs(60))
                .await;
            if let Ok(d) = decision
                && !d.allowed
            {
                return Err(ApiError::RateLimited {
                    retry_after_secs: d.reset_after.as_secs().max(1),
                    limit: d.limit,
                    class: "contact_checks",
                });
            }
        }
        let digits: Vec<String> = ask.iter().map(|p| peer(p)).collect();
        let LiveAnswer::Numbers(checks) = live(
            &state,
            &session,
            LiveCommand::CheckNumbers { phones: digits },
        )
        .await?
        else {
            return Err(ApiError::internal(anyhow::anyhow!(
                "unexpected live answer"
            )));
        };
        answered = checks
            .into_iter()
            .map(|c| (format!("+{}", c.phone), c.on_whatsapp, c.lid))
            .collect::<Vec<_>>();
        let mut conn = state.db.get().await?;
        store::store_checks(&mut conn, session.tenant_id, session.id, &answered).await?;
    }
    let items = phones
        .iter()
        .map(|p| {
            if let Some((_, on, lid)) = answered.iter().find(|a| &a.0 == p) {
                return NumberOnWhatsApp {
                    phone: p.clone(),
                    on_whatsapp: *on,
                    jid: on.then(|| format!("{}@s.whatsapp.net", peer(p))),
                    lid: lid.clone(),
                    cached: false,
                };
            }
            let c = cached.iter().find(|c| &c.chat == p);
            let on = c.and_then(|c| c.on_whatsapp).unwrap_or(false);
            NumberOnWhatsApp {
                phone: p.clone(),
                on_whatsapp: on,
                jid: on.then(|| format!("{}@s.whatsapp.net", peer(p))),
                lid: c.and_then(|c| c.lid.clone()),
                cached: true,
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(CheckResponse { items }))
}

/// The session's contacts (push names, LIDs, checks, blocks), most recently changed first.
#[utoipa::path(
    tag = "contacts",
    params(SessionPath, ContactsQuery),
    responses((status = 200, description = "A page of contacts", body = Page<Contact>), CommonErrors),
    security(("api_key" = []))
)]
#[get("/sessions/{session_id}/contacts")]
pub async fn list_contacts(
    state: web::Data<AppState>,
    query: web::Query<ContactsQuery>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let limit = parse_limit(query.limit.as_deref())?;
    let cursor = TimeCursor::parse(query.cursor.as_deref())?.map(|c| (c.at, c.key));
    let mut conn = state.db.get().await?;
    let rows = store::list(&mut conn, session.row.id, cursor, i64::from(limit) + 1).await?;
    let page = Page::from_overfetched(rows, limit, |c| TimeCursor::encode(c.updated_at, &c.chat));
    Ok(HttpResponse::Ok().json(page.map(|c| Contact::from(c))))
}

/// One contact, with its about text and picture as WhatsApp shows them to this account now.
#[utoipa::path(
    tag = "contacts",
    params(ContactPath),
    responses((status = 200, description = "The contact", body = ContactDetail), CommonErrors, LiveErrors),
    security(("api_key" = []))
)]
#[get("/sessions/{session_id}/contacts/{phone}")]
pub async fn get_contact(
    state: web::Data<AppState>,
    path: web::Path<ContactPath>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let session = session.row;
    let chat = contact_chat(&path.phone)?;
    let mut conn = state.db.get().await?;
    let known = store::get(&mut conn, session.id, &chat).await?;
    drop(conn);
    // A known LID's number is asked by number (the chat the tenant knows).
    let chat = known.as_ref().map(|k| k.chat.clone()).unwrap_or(chat);
    let LiveAnswer::Profile(profile) =
        live(&state, &session, LiveCommand::Profile { peer: peer(&chat) }).await?
    else {
        return Err(ApiError::internal(anyhow::anyhow!(
            "unexpected live answer"
        )));
    };
    let now = Utc::now();
    let contact = match known {
        Some(k) => Contact::from(&k),
        None => Contact {
            phone: (!chat.ends_with("@lid")).then(|| chat.clone()),
            chat,
            lid: None,
            push_name: None,
            on_whatsapp: None,
            checked_at: None,
            blocked: false,
            updated_at: now,
        },
    };
    Ok(HttpResponse::Ok().json(ContactDetail {
        contact: Contact {
            lid: contact.lid.clone().or(profile.lid),
            ..contact
        },
        about: profile.about,
        about_hidden: profile.about_hidden,
        picture_url: profile.picture_url,
    }))
}

async fn set_blocked(
    state: &AppState,
    session: &SessionRow,
    raw: &str,
    blocked: bool,
) -> Result<HttpResponse, ApiError> {
    let chat = contact_chat(raw)?;
    let mut conn = state.db.get().await?;
    let chat = store::get(&mut conn, session.id, &chat)
        .await?
        .map(|k| k.chat)
        .unwrap_or(chat);
    drop(conn);
    live(
        state,
        session,
        LiveCommand::Block {
            peer: peer(&chat),
            block: blocked,
        },
    )
    .await?;
    let mut conn = state.db.get().await?;
    store::set_blocked(&mut conn, session.tenant_id, session.id, &chat, blocked).await?;
    let row = store::get(&mut conn, session.id, &chat)
        .await?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("a blocked contact vanished")))?;
    Ok(HttpResponse::Ok().json(Contact::from(&row)))
}

/// Block a contact: WhatsApp no longer delivers its messages, presence or typing.
#[utoipa::path(
    tag = "contacts",
    params(ContactPath),
    responses((status = 200, description = "The contact, blocked", body = Contact), CommonErrors, LiveErrors),
    security(("api_key" = []))
)]
#[post("/sessions/{session_id}/contacts/{phone}/block")]
pub async fn block_contact(
    state: web::Data<AppState>,
    path: web::Path<ContactPath>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    set_blocked(&state, &session.row, &path.phone, true).await
}

/// Unblock a contact.
#[utoipa::path(
    tag = "contacts",
    params(ContactPath),
    responses((status = 200, description = "The contact, unblocked", body = Contact), CommonErrors, LiveErrors),
    security(("api_key" = []))
)]
#[post("/sessions/{session_id}/contacts/{phone}/unblock")]
pub async fn unblock_contact(
    state: web::Data<AppState>,
    path: web::Path<ContactPath>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    set_blocked(&state, &session.row, &path.phone, false).await
}

/// Hear a contact's presence (online, last seen) as `presence.update` events, for as long as
/// the session stays connected (it subscribes again after each reconnect).
#[utoipa::path(
    tag = "contacts",
    params(ContactPath),
    responses((status = 200, description = "Subscribed", body = Done), CommonErrors, LiveErrors),
    security(("api_key" = []))
)]
#[post("/sessions/{session_id}/contacts/{phone}/presence/subscribe")]
pub async fn subscribe_presence(
    state: web::Data<AppState>,
    path: web::Path<ContactPath>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let chat = contact_chat(&path.phone)?;
    live(
        &state,
        &session.row,
        LiveCommand::SubscribePresence { peer: peer(&chat) },
    )
    .await?;
    Ok(HttpResponse::Ok().json(Done { ok: true }))
}

/// Show the session's account as online (`available`) or not.
#[utoipa::path(
    tag = "contacts",
    params(SessionPath),
    request_body = PresenceRequest,
    responses((status = 200, description = "Presence set", body = Done), CommonErrors, LiveErrors),
    security(("api_key" = []))
)]
#[put("/sessions/{session_id}/presence")]
pub async fn set_presence(
    state: web::Data<AppState>,
    body: ValidJson<PresenceRequest>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let available = match body.into_inner().state.as_str() {
        "available" => true,
        "unavailable" => false,
        _ => {
            return Err(ApiError::validation(
                "state",
                "must be available or unavailable",
            ));
        }
    };
    live(&state, &session.row, LiveCommand::SetPresence { available }).await?;
    Ok(HttpResponse::Ok().json(Done { ok: true }))
}

/// Show "typing…" (or "recording audio…") in a chat, or stop. WhatsApp's apps stop showing
/// it after about 25 seconds: repeat `composing` while still typing.
#[utoipa::path(
    tag = "contacts",
    params(ChatPath),
    request_body = TypingRequest,
    responses((status = 200, description = "Sent", body = Done), CommonErrors, LiveErrors),
    security(("api_key" = []))
)]
#[post("/sessions/{session_id}/chats/{chat}/typing")]
pub async fn send_typing(
    state: web::Data<AppState>,
    path: web::Path<ChatPath>,
    body: ValidJson<TypingRequest>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let chat = chat_key(&crate::messages::parse_chat(&path.chat, "chat")?);
    let state_ = match body.into_inner().state.as_str() {
        "composing" => ChatState::Composing,
        "recording" => ChatState::Recording,
        "paused" => ChatState::Paused,
        _ => {
            return Err(ApiError::validation(
                "state",
                "must be composing, recording or paused",
            ));
        }
    };
    live(
        &state,
        &session.row,
        LiveCommand::ChatState {
            peer: peer(&chat),
            state: state_,
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(Done { ok: true }))
}

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(check_numbers)
        .service(list_contacts)
        .service(get_contact)
        .service(block_contact)
        .service(unblock_contact)
        .service(subscribe_presence)
        .service(set_presence)
        .service(send_typing);
}
