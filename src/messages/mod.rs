//! Messages: sending (stored `queued` before the 202, then sent by the session's actor),
//! history, chats and their settings. Outgoing messages only move forward
//! (`queued → sent → delivered → read`, or `failed`), each move an event.

pub mod accepts;
pub mod adapters;
pub mod changes;
pub mod jobs;
pub mod store;

use actix_web::http::header::HeaderMap;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use chrono::DateTime;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wagate_actors::messaging::{Content, MediaKind, QuotedRef, chat_key};

use crate::app::AppState;
use crate::auth::Caller;
use crate::configuration::MessageSettings;
use crate::error::{ApiError, ErrorCode};
use crate::http::json::ValidJson;
use crate::http::openapi::CommonErrors;
use crate::http::pagination::{Page, TimeCursor, parse_limit};
use crate::sessions::store::SessionRow;
use crate::sessions::{ScopedSession, SessionPath, load_for};
use crate::tenants::Tier;
use accepts::{AcceptWriter, Accepted};
use store::MessageRow;
use wagate_actors::session::SessionStatus;

/// The largest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The message object of the API (responses, and the data of `message.received` events).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Message {
    pub id: Uuid,
    pub session_id: Uuid,
    /// WhatsApp's id of the message.
    pub wa_id: String,
    /// `in` (received) or `out` (sent by this session).
    pub direction: Direction,
    /// The chat: the contact's phone number (`<lid>@lid` while only its LID is known), or the
    /// group's `<id>@g.us`.
    pub chat: String,
    /// Who wrote it: in a group, the participant.
    pub from: String,
    pub to: String,
    /// `text`, `image`, `video`, `audio`, `document`, `location`, `contact`, `reaction`, …
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    /// What the message holds, by type (location, contact card, reaction, media details).
    #[schema(value_type = Object)]
    pub content: Value,
    /// A media message's details and its `download_url`; `null` for other types.
    #[schema(value_type = Option<Object>)]
    pub media: Option<Value>,
    pub quoted_id: Option<String>,
    pub status: MessageStatus,
    pub error: Option<String>,
    /// When its text was last edited (by the contact, or through the API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<DateTime<Utc>>,
    /// When it was deleted; its content is kept for the tenant's records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    /// `everyone` (WhatsApp removed it from the chat) or `me` (hidden here only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_for: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<&MessageRow> for Message {
    type Error = anyhow::Error;

    fn try_from(m: &MessageRow) -> anyhow::Result<Message> {
        let direction = Direction::from_stored(&m.direction)?;
        let status = MessageStatus::from_stored(&m.status)?;
        // In a group chat the sender is the participant who wrote (`_from`), not the chat.
        let group_sender = m
            .body
            .get("_from")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let (from, to) = match direction {
            Direction::Out => (m.own_phone.clone(), m.chat.clone()),
            Direction::In => (
                group_sender.unwrap_or_else(|| m.chat.clone()),
                m.own_phone.clone(),
            ),
        };
        let is_media = matches!(m.kind.as_str(), "image" | "video" | "audio" | "document");
        let content = content_view(&m.body);
        let media = is_media.then(|| {
            let mut v = content.clone();
            if let Some(o) = v.as_object_mut() {
                o.insert(
                    "download_url".into(),
                    json!(format!(
                        "/api/v1/sessions/{}/messages/{}/media",
                        m.session_id, m.id
                    )),
                );
            }
            v
        });
        Ok(Message {
            id: m.id,
            session_id: m.session_id,
            wa_id: m.wa_id.clone(),
            direction,
            chat: m.chat.clone(),
            from,
            to,
            kind: m.kind.clone(),
            text: m.text.clone(),
            content,
            media,
            quoted_id: m.quoted_id.clone(),
            status,
            error: m.error.clone(),
            edited_at: marker_time(&m.body, "_edited_at"),
            deleted_at: marker_time(&m.body, "_deleted_at"),
            deleted_for: m.body["_deleted_for"].as_str().map(str::to_owned),
            created_at: m.created_at,
            updated_at: m.updated_at,
        })
    }
}

/// Where a message is. Outgoing: `queued → sent → delivered → read`, or `failed`.
/// Received: `received`, then `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    Queued,
    Sent,
    Delivered,
    Read,
    Failed,
    Received,
}

impl MessageStatus {
    pub const ALL: [MessageStatus; 6] = [
        MessageStatus::Queued,
        MessageStatus::Sent,
        MessageStatus::Delivered,
        MessageStatus::Read,
        MessageStatus::Failed,
        MessageStatus::Received,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Queued => "queued",
            MessageStatus::Sent => "sent",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Read => "read",
            MessageStatus::Failed => "failed",
            MessageStatus::Received => "received",
        }
    }

    /// The stored column (a CHECK constraint holds it to these six): anything else is a fault.
    pub fn from_stored(raw: &str) -> anyhow::Result<MessageStatus> {
        MessageStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| anyhow::anyhow!("unknown message status in database: {raw}"))
    }
}

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }

    /// The stored column (a CHECK constraint holds it to `in` or `out`).
    pub fn from_stored(raw: &str) -> anyhow::Result<Direction> {
        match raw {
            "in" => Ok(Direction::In),
            "out" => Ok(Direction::Out),
            other => Err(anyhow::anyhow!(
                "unknown message direction in database: {other}"
            )),
        }
    }
}

/// The stored content without the bookkeeping kept beside it, and never WhatsApp's media
/// keys (they decrypt the file on WhatsApp's servers: the download route uses them).
fn content_view(body: &Value) -> Value {
    let mut v = body.clone();
    if let Some(o) = v.as_object_mut() {
        for private in [
            "quoted",
            "type",
            "media_key",
            "file_enc_sha256",
            "direct_path",
        ] {
            o.remove(private);
        }
        // Edit and delete markers (`_edited_at`, `_change_id`, …) are shown as fields.
        o.retain(|k, _| !k.starts_with('_'));
    }
    v
}

fn marker_time(body: &Value, key: &str) -> Option<DateTime<Utc>> {
    body.get(key)
        .and_then(Value::as_str)
        .and_then(|t| t.parse().ok())
}

/// A session's send rate: its tenant's own, else its tier's.
pub fn rate_for(settings: &MessageSettings, tier: Tier, tenant_override: Option<i32>) -> u32 {
    if let Some(r) = tenant_override.and_then(|r| u32::try_from(r).ok()) {
        return r;
    }
    match tier {
        Tier::Standard => settings.rate_per_minute.standard,
        Tier::Professional => settings.rate_per_minute.professional,
        Tier::Enterprise => settings.rate_per_minute.enterprise,
    }
}

/// A recipient as E.164 digits: `+15551234567`, `15551234567` or
/// `15551234567@s.whatsapp.net` (spaces, dashes, dots and parentheses allowed).
/// A chat a message may go to or be listed by: a contact (see [`parse_recipient`]) or a group
/// (`<id>@g.us`).
pub fn parse_chat(raw: &str, field: &str) -> Result<String, ApiError> {
    match parse_group(raw) {
        Some(group) => {
            group.map_err(|_| ApiError::validation(field, "is not a group JID (<digits>@g.us)"))
        }
        None => parse_recipient(raw, field),
    }
}

/// `Some` when `raw` is a group JID: its normalised form, or why it is not a valid one.
pub fn parse_group(raw: &str) -> Option<Result<String, ApiError>> {
    let id = raw.trim().strip_suffix("@g.us")?;
    // WhatsApp's group ids: digits, or the older `<creator>-<timestamp>`.
    let valid = (1..=40).contains(&id.len())
        && id.split('-').count() <= 2
        && id
            .split('-')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()));
    Some(if valid {
        Ok(format!("{id}@g.us"))
    } else {
        Err(ApiError::validation(
            "group",
            "is not a group JID (<digits>@g.us)",
        ))
    })
}

pub fn parse_recipient(raw: &str, field: &str) -> Result<String, ApiError> {
    let trimmed = raw.trim();
    let number = match trimmed.split_once('@') {
        Some((user, "s.whatsapp.net" | "c.us")) => user.split(':').next().unwrap_or(user),
        // A contact known only by its LID (one who hides their number).
        Some((user, "lid")) => {
            let lid = user.split(':').next().unwrap_or(user);
            if !(1..=20).contains(&lid.len()) || !lid.chars().all(|c| c.is_ascii_digit()) {
                return Err(ApiError::validation(
                    field,
                    "is not a valid LID (digits@lid)",
                ));
            }
            return Ok(format!("{lid}@lid"));
        }
        Some(_) => {
            return Err(ApiError::validation(
                field,
                "must be a phone number, a user JID (…@s.whatsapp.net) or a LID (…@lid) (a group, …@g.us, only where a chat is asked for)",
            ));
        }
        None => trimmed,
    };
    let number = number.strip_prefix('+').unwrap_or(number);
    let digits: String = number
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    if !(8..=15).contains(&digits.len())
        || !digits.chars().all(|c| c.is_ascii_digit())
        || digits.starts_with('0')
    {
        return Err(ApiError::validation(
            field,
            "must be a phone number in international form: country code and number, 8 to 15 digits",
        ));
    }
    Ok(digits)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocationBody {
    pub latitude: f64,
    pub longitude: f64,
    pub name: Option<String>,
    pub address: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactBody {
    pub name: String,
    pub phone: Option<String>,
    /// A complete vCard; built from `name` and `phone` when absent.
    pub vcard: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReactionBody {
    /// The message reacted to: its id or WhatsApp id.
    pub message_id: String,
    /// One emoji; `""` removes an earlier reaction.
    pub emoji: String,
}

/// `POST /api/v1/sessions/{id}/messages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// `+15551234567`, `15551234567` or `15551234567@s.whatsapp.net`.
    pub to: String,
    /// `text`, `image`, `video`, `audio`, `document`, `location`, `contact`, `reaction` or
    /// `quick_reply`.
    #[serde(rename = "type", default = "default_type")]
    pub kind: String,
    pub text: Option<String>,
    /// Reply to this message (its id or WhatsApp id).
    pub quoted_id: Option<String>,
    pub location: Option<LocationBody>,
    pub contact: Option<ContactBody>,
    pub reaction: Option<ReactionBody>,
    /// `image`, `video`, `audio`, `document`: a file uploaded with `POST …/media`.
    pub media_id: Option<String>,
    /// … or a URL the gateway fetches (http(s), public addresses, `media.max_bytes`).
    pub media_url: Option<String>,
    /// Shown under an image, video or document.
    pub caption: Option<String>,
    /// A document's name as the recipient sees it (default: the upload's or URL's name).
    pub file_name: Option<String>,
    /// `quick_reply`: the quick reply to send (or `shortcut`).
    pub quick_reply_id: Option<Uuid>,
    /// `quick_reply`: the quick reply's shortcut, e.g. `/price`.
    pub shortcut: Option<String>,
    /// `quick_reply`: its variables, e.g. `{"name": "Ana"}`.
    #[schema(value_type = Option<Object>)]
    pub variables: Option<serde_json::Map<String, serde_json::Value>>,
}

fn default_type() -> String {
    "text".into()
}

fn check_text(text: Option<&str>, field: &str, max: usize) -> Result<String, ApiError> {
    let text = text.ok_or_else(|| ApiError::validation(field, "is required"))?;
    if text.trim().is_empty() {
        return Err(ApiError::validation(field, "must not be empty"));
    }
    if text.chars().count() > max {
        return Err(ApiError::validation(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(text.to_owned())
}

fn vcard(name: &str, phone: Option<&str>) -> String {
    let escape = |s: &str| {
        s.replace('\\', "\\\\")
            .replace(';', "\\;")
            .replace(',', "\\,")
            .replace('\n', " ")
    };
    let mut card = format!("BEGIN:VCARD\nVERSION:3.0\nFN:{}\n", escape(name));
    if let Some(p) = phone {
        card.push_str(&format!("TEL;type=CELL;waid={p}:+{p}\n"));
    }
    card.push_str("END:VCARD");
    card
}

/// What a send request asks for, checked: the content and the message it quotes.
struct Parsed {
    to: String,
    content: Content,
    quoted_ref: Option<String>,
    /// The file a media message carries, still to be resolved.
    media: Option<MediaRequest>,
}

struct MediaRequest {
    kind: MediaKind,
    media_id: Option<String>,
    media_url: Option<String>,
    file_name: Option<String>,
}

fn parse_send(body: SendMessage, settings: &MessageSettings) -> Result<Parsed, ApiError> {
    let to = parse_chat(&body.to, "to")?;
    for (field, given) in [
        ("quick_reply_id", body.quick_reply_id.is_some()),
        ("shortcut", body.shortcut.is_some()),
        ("variables", body.variables.is_some()),
    ] {
        if given {
            return Err(ApiError::validation(
                field,
                format!("only a quick_reply message has {field}"),
            ));
        }
    }
    let max = settings.max_text_chars;
    let mut quoted_ref = body.quoted_id.clone();
    let mut media = None;
    let content = match body.kind.as_str() {
        "text" => Content::Text {
            text: check_text(body.text.as_deref(), "text", max)?,
        },
        "location" => {
            let l = body
                .location
                .ok_or_else(|| ApiError::validation("location", "is required for type location"))?;
            if !(-90.0..=90.0).contains(&l.latitude) || !l.latitude.is_finite() {
                return Err(ApiError::validation(
                    "location.latitude",
                    "must be between -90 and 90",
                ));
            }
            if !(-180.0..=180.0).contains(&l.longitude) || !l.longitude.is_finite() {
                return Err(ApiError::validation(
                    "location.longitude",
                    "must be between -180 and 180",
                ));
            }
            for (field, v) in [("location.name", &l.name), ("location.address", &l.address)] {
                if v.as_ref().is_some_and(|v| v.chars().count() > 1000) {
                    return Err(ApiError::validation(
                        field,
                        "must be at most 1000 characters",
                    ));
                }
            }
            Content::Location {
                latitude: l.latitude,
                longitude: l.longitude,
                name: l.name,
                address: l.address,
            }
        }
        "contact" => {
            let c = body
                .contact
                .ok_or_else(|| ApiError::validation("contact", "is required for type contact"))?;
            let name = check_text(Some(&c.name), "contact.name", 256)?;
            let phone = c
                .phone
                .as_deref()
                .map(|p| parse_recipient(p, "contact.phone"))
                .transpose()?;
            if phone.as_deref().is_some_and(|p| p.ends_with("@lid")) {
                return Err(ApiError::validation(
                    "contact.phone",
                    "must be a phone number, not a LID",
                ));
            }
            let vcard = match c.vcard {
                Some(v) if v.starts_with("BEGIN:VCARD") && v.len() <= 10_000 => v,
                Some(_) => {
                    return Err(ApiError::validation(
                        "contact.vcard",
                        "must be a vCard (BEGIN:VCARD …) of at most 10000 bytes",
                    ));
                }
                None => vcard(&name, phone.as_deref()),
            };
            Content::Contact { name, vcard }
        }
        "reaction" => {
            let r = body
                .reaction
                .ok_or_else(|| ApiError::validation("reaction", "is required for type reaction"))?;
            if r.emoji.chars().count() > 10 {
                return Err(ApiError::validation(
                    "reaction.emoji",
                    "must be one emoji (or empty to remove)",
                ));
            }
            quoted_ref = Some(r.message_id);
            Content::Reaction { emoji: r.emoji }
        }
        "image" | "video" | "audio" | "document" => {
            let kind = MediaKind::parse(&body.kind).unwrap_or(MediaKind::Document);
            let caption = match (&body.caption, kind) {
                (Some(_), MediaKind::Audio) => {
                    return Err(ApiError::validation("caption", "audio has no caption"));
                }
                (Some(c), _) => Some(check_text(Some(c), "caption", max)?),
                (None, _) => None,
            };
            let file_name = match (&body.file_name, kind) {
                (Some(n), MediaKind::Document) => Some(
                    crate::media::clean_file_name(n)
                        .ok_or_else(|| ApiError::validation("file_name", "is not a file name"))?,
                ),
                (Some(_), _) => {
                    return Err(ApiError::validation(
                        "file_name",
                        "only a document has a file name",
                    ));
                }
                (None, _) => None,
            };
            media = Some(MediaRequest {
                kind,
                media_id: body.media_id.clone(),
                media_url: body.media_url.clone(),
                file_name: file_name.clone(),
            });
            // Completed (file, type, size) once the file is resolved.
            Content::Media {
                kind,
                media_id: None,
                sha256: None,
                media_key: None,
                file_enc_sha256: None,
                mimetype: None,
                file_length: None,
                caption,
                file_name,
                direct_path: None,
            }
        }
        other => {
            return Err(ApiError::validation(
                "type",
                format!(
                    "unknown message type {other:?}: one of text, image, video, audio, document, location, contact, reaction, quick_reply"
                ),
            ));
        }
    };
    if media.is_none() {
        for (field, given) in [
            ("media_id", body.media_id.is_some()),
            ("media_url", body.media_url.is_some()),
            ("caption", body.caption.is_some()),
            ("file_name", body.file_name.is_some()),
        ] {
            if given {
                return Err(ApiError::validation(
                    field,
                    format!("only a media message has {field}"),
                ));
            }
        }
    }
    Ok(Parsed {
        to,
        content,
        quoted_ref,
        media,
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .map_err(|_| ApiError::validation("Idempotency-Key", "must be printable ASCII"))?
        .trim();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(ApiError::validation(
            "Idempotency-Key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY} characters"),
        ));
    }
    // The platform's own sends (AI answers) carry these: they are how it tells them from
    // the operator's.
    if key.starts_with(crate::ai::store::OWN_KEY_PREFIX) {
        return Err(ApiError::validation(
            "Idempotency-Key",
            format!(
                "keys starting with {:?} are reserved",
                crate::ai::store::OWN_KEY_PREFIX
            ),
        ));
    }
    Ok(Some(key.to_owned()))
}

/// A WhatsApp message id in the client's own format, chosen before the first send.
pub(crate) fn new_wa_id() -> String {
    let bytes: [u8; 10] = rand::random();
    format!("3EB0{}", hex::encode_upper(bytes))
}

/// Sessions that can send (now or after reconnecting) accept messages; others are 409.
fn require_sendable(row: &SessionRow) -> Result<(), ApiError> {
    let linked = row.phone.is_some();
    let running = row.desired == "running";
    let status = row.session_status()?;
    if running
        && linked
        && !matches!(
            status,
            SessionStatus::LoggedOut | SessionStatus::Failed | SessionStatus::Qr
        )
    {
        return Ok(());
    }
    Err(ApiError::Conflict {
        code: ErrorCode::SessionNotConnected,
        message: format!(
            "the session is {} and {}; start it (and link it) to send",
            row.status,
            if linked {
                "linked"
            } else {
                "not linked to a phone"
            }
        ),
    })
}

/// Accepts a message: stored `queued` before the answer, then sent by the session.
pub async fn accept(
    state: &AppState,
    writer: &AcceptWriter,
    caller: &Caller,
    session_id: Uuid,
    headers: &HeaderMap,
    body: SendMessage,
) -> Result<HttpResponse, ApiError> {
    let (session, tier) = load_for(state, caller, session_id).await?;
    let settings = &state.settings.messages;
    let key = idempotency_key(headers)?;
    let mut parsed = parse_send(body, settings)?;
    let mut conn = state.db.get().await?;
    if let Some(key) = &key
        && let Some(existing) = store::find_by_idempotency_key(&mut conn, session.id, key).await?
    {
        return replay(&existing, &parsed);
    }
    require_sendable(&session)?;
    let quoted = match &parsed.quoted_ref {
        None => None,
        Some(r) => {
            let q = store::find_in_session(&mut conn, session.id, r)
                .await?
                .ok_or_else(|| {
                    ApiError::validation(
                        if matches!(parsed.content, Content::Reaction { .. }) {
                            "reaction.message_id"
                        } else {
                            "quoted_id"
                        },
                        "no such message in this session",
                    )
                })?;
            Some(QuotedRef {
                from_me: q.direction == "out",
                text: q.text.clone(),
                wa_id: q.wa_id,
            })
        }
    };
    let queue_limit = i64::from(settings.max_queued_per_tenant);
    if let Some(m) = &parsed.media {
        // A media URL is fetched before the message is stored: not for a full queue.
        check_queue_room(&mut conn, settings, &session, tier, queue_limit).await?;
        // Fetched (for a URL), checked and stored before the message is accepted; a fetch
        // may take seconds, so no pooled connection is held meanwhile.
        drop(conn);
        let info = crate::media::resolve_for_send(
            state,
            &session,
            m.kind,
            m.media_id.as_deref(),
            m.media_url.as_deref(),
        )
        .await?;
        let caption = parsed.content.text().map(str::to_owned);
        parsed.content = crate::media::content_for(m.kind, &info, caption, m.file_name.clone());
        conn = state.db.get().await?;
    }
    let mut body = serde_json::to_value(&parsed.content).map_err(ApiError::internal)?;
    if let (Some(q), Some(o)) = (&quoted, body.as_object_mut()) {
        o.insert(
            "quoted".into(),
            serde_json::to_value(q).map_err(ApiError::internal)?,
        );
    }
    let now = Utc::now();
    let row = MessageRow {
        id: Uuid::now_v7(),
        tenant_id: session.tenant_id,
        session_id: session.id,
        wa_id: new_wa_id(),
        direction: "out".into(),
        chat: chat_key(&parsed.to),
        own_phone: session.phone.clone().unwrap_or_default(),
        kind: parsed.content.kind().into(),
        text: parsed.content.text().map(str::to_owned),
        body,
        quoted_id: quoted.map(|q| q.wa_id),
        status: "queued".into(),
        error: None,
        idempotency_key: key.clone(),
        created_at: now,
        updated_at: now,
    };
    drop(conn);
    // Stored with the other sends arriving now, in one transaction; answered once committed.
    let stored = match writer.store(row).await.map_err(ApiError::from_store)? {
        Accepted::Stored(stored) => stored,
        // The group's count of the tenant's queue room may have been short: try alone, as
        // exactly as before groups.
        Accepted::Refused(row) => {
            let mut conn = state.db.get().await?;
            let stored =
                store::insert_message_with_chat(&mut conn, &row, None, Some(queue_limit)).await?;
            let Some(stored) = stored else {
                // The same key won a race with this request (answer with what it stored), or
                // the tenant's queue is full.
                if let Some(k) = &key
                    && let Some(existing) =
                        store::find_by_idempotency_key(&mut conn, session.id, k).await?
                {
                    return replay(&existing, &parsed);
                }
                check_queue_room(&mut conn, settings, &session, tier, queue_limit).await?;
                return Err(ApiError::internal(anyhow::anyhow!(
                    "message insert conflicted"
                )));
            };
            stored
        }
    };
    crate::metrics::MESSAGES
        .with_label_values(&["out", "queued"])
        .inc();
    // The session's actor (when it lives on this node) sends at once; on another node its
    // owner's sweep (`nudge_queued`) finds it.
    let accepted = adapters::outgoing(&stored).map_err(ApiError::internal)?;
    jobs::wake_sender(
        &state.supervisor,
        Some(&state.directory),
        session.id,
        Some(accepted),
    )
    .await;
    Ok(HttpResponse::Accepted().json(Message::try_from(&stored).map_err(ApiError::internal)?))
}

/// 429 when the tenant already has `limit` messages queued.
async fn check_queue_room(
    conn: &mut diesel_async::AsyncPgConnection,
    settings: &MessageSettings,
    session: &SessionRow,
    tier: Tier,
    limit: i64,
) -> Result<(), ApiError> {
    let queued = store::queued_count_for_tenant(conn, session.tenant_id).await?;
    if queued < limit {
        return Ok(());
    }
    let own = store::tenant_send_rate(conn, session.tenant_id).await?;
    let rate = rate_for(settings, tier, own).max(1);
    Err(ApiError::RateLimited {
        retry_after_secs: (60 / u64::from(rate)).max(1),
        limit: settings.max_queued_per_tenant,
        class: "send_queue",
    })
}

/// A repeated idempotency key: the same message again, if the request is the same.
fn replay(existing: &MessageRow, parsed: &Parsed) -> Result<HttpResponse, ApiError> {
    let same = existing.chat == chat_key(&parsed.to)
        && existing.kind == parsed.content.kind()
        && existing.text.as_deref() == parsed.content.text();
    if !same {
        return Err(ApiError::Conflict {
            code: ErrorCode::IdempotencyKeyReused,
            message: "this Idempotency-Key was used for a different message".into(),
        });
    }
    Ok(HttpResponse::Accepted()
        .insert_header(("idempotent-replayed", "true"))
        .json(Message::try_from(existing).map_err(ApiError::internal)?))
}

/// Send a message (text, reply, location, contact card, reaction). Stored before the 202.
#[utoipa::path(
    tag = "messages",
    params(SessionPath, ("Idempotency-Key" = Option<String>, Header, description = "The same key returns the same message and never sends twice")),
    request_body = SendMessage,
    responses((status = 202, description = "Queued (or, with a reused `Idempotency-Key`, the message it made)", body = Message), CommonErrors),
    security(("api_key" = []))
)]
#[post("/sessions/{session_id}/messages")]
pub async fn send_message(
    caller: Caller,
    state: web::Data<AppState>,
    writer: web::Data<AcceptWriter>,
    path: web::Path<SessionPath>,
    req: HttpRequest,
    body: ValidJson<SendMessage>,
) -> Result<HttpResponse, ApiError> {
    let mut body = body.into_inner();
    let quick_reply = if body.kind == "quick_reply" {
        Some(crate::quick_replies::expand(&state, &caller, path.session_id, &mut body).await?)
    } else {
        None
    };
    let accepted = accept(
        &state,
        &writer,
        &caller,
        path.session_id,
        req.headers(),
        body,
    )
    .await?;
    if let Some(id) = quick_reply
        && accepted.status() == actix_web::http::StatusCode::ACCEPTED
    {
        crate::quick_replies::count_use(&state, id).await;
    }
    Ok(accepted)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// Only this chat (a phone number).
    pub chat: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// Messages of a session, newest first (one chat's with `?chat=`).
#[utoipa::path(
    tag = "messages",
    params(SessionPath, MessagesQuery),
    responses((status = 200, description = "A page of messages", body = Page<Message>), CommonErrors),
    security(("api_key" = []))
)]
#[get("/sessions/{session_id}/messages")]
pub async fn list_messages(
    state: web::Data<AppState>,
    query: web::Query<MessagesQuery>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let session = session.row;
    let limit = parse_limit(query.limit.as_deref())?;
    let chat = query
        .chat
        .as_deref()
        .map(|c| parse_chat(c, "chat").map(|d| chat_key(&d)))
        .transpose()?;
    let cursor = TimeCursor::parse(query.cursor.as_deref())?
        .map(|c| {
            Uuid::parse_str(&c.key)
                .map(|id| (c.at, id))
                .map_err(|_| ApiError::validation("cursor", "is not a cursor from this API"))
        })
        .transpose()?;
    let mut conn = state.db.get().await?;
    let rows = store::list_messages(
        &mut conn,
        session.id,
        chat.as_deref(),
        cursor,
        i64::from(limit) + 1,
    )
    .await?;
    let page = Page::from_overfetched(rows, limit, |r| TimeCursor::encode(r.created_at, r.id));
    Ok(HttpResponse::Ok().json(
        page.try_map(|m| Message::try_from(m))
            .map_err(ApiError::internal)?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct MessagePath {
    pub session_id: Uuid,
    /// The message's id or WhatsApp id.
    pub message_id: String,
}

/// One message, by its id or WhatsApp id.
#[utoipa::path(
    tag = "messages",
    params(MessagePath),
    responses((status = 200, description = "The message", body = Message), CommonErrors),
    security(("api_key" = []))
)]
#[get("/sessions/{session_id}/messages/{message_id}")]
pub async fn get_message(
    state: web::Data<AppState>,
    path: web::Path<MessagePath>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let session = session.row;
    let mut conn = state.db.get().await?;
    let row = store::find_in_session(&mut conn, session.id, &path.message_id)
        .await?
        .ok_or(ApiError::NotFound("message"))?;
    Ok(HttpResponse::Ok().json(Message::try_from(&row).map_err(ApiError::internal)?))
}

/// Message counts by direction and status.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct MessageStats {
    /// Received messages, by status.
    #[serde(rename = "in")]
    pub received: std::collections::BTreeMap<String, i64>,
    /// Sent messages, by status.
    #[serde(rename = "out")]
    pub sent: std::collections::BTreeMap<String, i64>,
    pub total: i64,
}

impl MessageStats {
    pub fn from_counts(rows: &[(String, String, i64)]) -> anyhow::Result<MessageStats> {
        let mut stats = MessageStats::default();
        for (direction, status, n) in rows {
            let by_status = match Direction::from_stored(direction)? {
                Direction::In => &mut stats.received,
                Direction::Out => &mut stats.sent,
            };
            by_status.insert(status.clone(), *n);
            stats.total += n;
        }
        Ok(stats)
    }
}

/// A session's message statistics by direction and status.
#[utoipa::path(
    tag = "messages",
    params(SessionPath),
    responses((status = 200, description = "Counts", body = MessageStats), CommonErrors),
    security(("api_key" = []))
)]
#[get("/sessions/{session_id}/stats")]
pub async fn session_stats(
    state: web::Data<AppState>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let session = session.row;
    let mut conn = state.db.get().await?;
    let stats = store::stats(&mut conn, session.id, None).await?;
    Ok(HttpResponse::Ok().json(MessageStats::from_counts(&stats).map_err(ApiError::internal)?))
}

/// Sending, history and statistics.
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(send_message)
        .service(list_messages)
        .service(get_message)
        .service(changes::edit_message)
        .service(changes::delete_message)
        .service(session_stats);
}
