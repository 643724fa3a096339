//! Media to send and media received. A file to send comes by multipart upload
//! (`POST /sessions/{id}/media`) or as a `media_url` the gateway fetches; either way its
//! type is read from its bytes, it is held to `media.max_bytes`, and it is stored in
//! Postgres before the message that carries it is accepted, so a queued media message
//! survives a crash like any other. Received media stays on WhatsApp's servers; the
//! download route fetches and decrypts it from there with the keys the message carried. The
//! media servers check the message's signed path, not a session credential, so any node can
//! serve it, whoever holds the session and whether or not it is connected.

pub mod jobs;
pub mod sniff;
pub mod store;

use std::time::Duration;

use actix_multipart::{Multipart, MultipartError};
use actix_web::http::StatusCode;
use actix_web::http::header::{ContentDisposition, DispositionParam, DispositionType};
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wagate_actors::messaging::{Content, MediaKind, download_params};

use crate::app::AppState;
use crate::auth::Caller;
use crate::configuration::MediaSettings;
use crate::error::{ApiError, ErrorCode};
use crate::http::egress::EgressError;
use crate::http::openapi::CommonErrors;
use crate::sessions::store::SessionRow;
use crate::sessions::{SessionPath, load_for};
use sniff::{Sniffed, sniff};
use store::{MediaInfo, NewMedia};

/// Redirects a `media_url` may take (each hop is checked like the first).
const MAX_REDIRECTS: usize = 3;
/// Longest file name kept.
const MAX_FILE_NAME: usize = 255;

/// The media object of the API: an uploaded file, ready to send.
#[derive(Debug, Serialize, ToSchema)]
pub struct Media {
    pub id: Uuid,
    pub session_id: Uuid,
    /// `image`, `video`, `audio` or `document`, from the file's own bytes.
    #[serde(rename = "type")]
    pub kind: String,
    pub mime_type: String,
    pub file_name: Option<String>,
    /// Bytes.
    pub size: i64,
    /// Hex SHA-256 of the file.
    pub sha256: String,
    pub created_at: DateTime<Utc>,
}

impl From<&MediaInfo> for Media {
    fn from(m: &MediaInfo) -> Media {
        Media {
            id: m.id,
            session_id: m.session_id,
            kind: m.kind.clone(),
            mime_type: m.mime_type.clone(),
            file_name: m.file_name.clone(),
            size: m.size,
            sha256: m.sha256.clone(),
            created_at: m.created_at,
        }
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::Rejected {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: ErrorCode::MediaTooLarge,
        message: format!("media may be at most {limit} bytes (media.max_bytes)"),
    }
}

fn fetch_failed(message: String) -> ApiError {
    ApiError::Rejected {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: ErrorCode::MediaFetchFailed,
        message,
    }
}

/// A file name as the recipient will see it: no path, no control characters, bounded.
pub fn clean_file_name(raw: &str) -> Option<String> {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or(raw);
    let name: String = base
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_FILE_NAME)
        .collect();
    let name = name.trim().to_owned();
    (!name.is_empty() && name != "." && name != "..").then_some(name)
}

/// Checks and stores a file for the session; answers what was stored.
pub async fn store_file(
    state: &AppState,
    session: &SessionRow,
    bytes: &[u8],
    declared: Option<&str>,
    file_name: Option<String>,
) -> Result<(MediaInfo, Sniffed), ApiError> {
    let max = state.settings.media.max_bytes;
    if bytes.len() > max {
        return Err(too_large(max));
    }
    if bytes.is_empty() {
        return Err(ApiError::validation("file", "is empty"));
    }
    let sniffed = sniff(bytes, declared)?;
    let sha = hex::encode(sha2::Sha256::digest(bytes));
    let mut conn = state.db.get().await?;
    let info = store::insert(
        &mut conn,
        &NewMedia {
            id: Uuid::now_v7(),
            tenant_id: session.tenant_id,
            session_id: session.id,
            kind: sniffed.kind.as_str(),
            mime_type: &sniffed.mime,
            file_name: file_name.as_deref(),
            size: bytes.len() as i64,
            sha256: &sha,
            bytes,
        },
    )
    .await?;
    Ok((info, sniffed))
}

/// A fetched `media_url`: its bytes, declared type and file name.
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    pub file_name: Option<String>,
}

/// Fetches a `media_url`: http(s) only, never from a private or loopback address (unless
/// configured), at most `max_bytes`, within the timeout, following a few redirects (each
/// checked again).
pub async fn fetch_url(settings: &MediaSettings, raw: &str) -> Result<Fetched, ApiError> {
    let mut url = reqwest::Url::parse(raw.trim())
        .map_err(|e| ApiError::validation("media_url", format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::validation(
            "media_url",
            "must be an http or https URL",
        ));
    }
    let timeout = Duration::from_secs(settings.fetch_timeout_secs);
    let work = async {
        for _ in 0..=MAX_REDIRECTS {
            let not_allowed = |e: &EgressError| ApiError::Rejected {
                status: StatusCode::BAD_REQUEST,
                code: ErrorCode::MediaUrlNotAllowed,
                message: format!("{e} (media.allow_private_urls is off)"),
            };
            if !settings.allow_private_urls {
                crate::http::egress::check_literal(&url).map_err(|e| not_allowed(&e))?;
            }
            // Names resolve through the egress guard, and the client connects to exactly the
            // addresses it checked: a second lookup (DNS rebinding) cannot differ.
            let client = crate::http::egress::client_builder(settings.allow_private_urls)
                .timeout(timeout)
                .user_agent("wagate-media-fetch")
                .build()
                .map_err(ApiError::internal)?;
            let mut res =
                client.get(url.clone()).send().await.map_err(
                    |e| match crate::http::egress::refusal(&e) {
                        Some(egress @ EgressError::Private(_)) => not_allowed(egress),
                        Some(egress) => fetch_failed(egress.to_string()),
                        None => fetch_failed(format!("fetching media_url: {e}")),
                    },
                )?;
            if res.status().is_redirection() {
                let next = res
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url.join(l).ok())
                    .ok_or_else(|| fetch_failed("a redirect without a usable Location".into()))?;
                if !matches!(next.scheme(), "http" | "https") {
                    return Err(fetch_failed("a redirect to a non-http URL".into()));
                }
                url = next;
                continue;
            }
            if !res.status().is_success() {
                return Err(fetch_failed(format!(
                    "media_url answered {}",
                    res.status().as_u16()
                )));
            }
            if res
                .content_length()
                .is_some_and(|n| n > settings.max_bytes as u64)
            {
                return Err(too_large(settings.max_bytes));
            }
            let content_type = res
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let mut bytes = Vec::new();
            while let Some(chunk) = res
                .chunk()
                .await
                .map_err(|e| fetch_failed(format!("reading media_url: {e}")))?
            {
                if bytes.len() + chunk.len() > settings.max_bytes {
                    return Err(too_large(settings.max_bytes));
                }
                bytes.extend_from_slice(&chunk);
            }
            let file_name = url
                .path_segments()
                .and_then(|mut s| s.next_back())
                .and_then(|s| percent_encoding::percent_decode_str(s).decode_utf8().ok())
                .and_then(|s| clean_file_name(&s));
            return Ok(Fetched {
                bytes,
                content_type,
                file_name,
            });
        }
        Err(fetch_failed(format!("more than {MAX_REDIRECTS} redirects")))
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        fetch_failed(format!(
            "media_url did not answer completely within {} s",
            settings.fetch_timeout_secs
        ))
    })?
}

/// The media a send request names, resolved to a stored file of the session that fits the
/// message's kind.
pub async fn resolve_for_send(
    state: &AppState,
    session: &SessionRow,
    kind: MediaKind,
    media_id: Option<&str>,
    media_url: Option<&str>,
) -> Result<MediaInfo, ApiError> {
    let (info, sniffed) = match (media_id, media_url) {
        (Some(id), None) => {
            let id = Uuid::parse_str(id.trim())
                .map_err(|_| ApiError::validation("media_id", "is not a media id"))?;
            let mut conn = state.db.get().await?;
            let info = store::find(&mut conn, session.id, id)
                .await?
                .ok_or_else(|| {
                    ApiError::validation("media_id", "no such upload in this session")
                })?;
            let sniffed = Sniffed {
                mime: info.mime_type.clone(),
                kind: MediaKind::parse(&info.kind).unwrap_or(MediaKind::Document),
            };
            (info, sniffed)
        }
        (None, Some(url)) => {
            let fetched = fetch_url(&state.settings.media, url).await?;
            store_file(
                state,
                session,
                &fetched.bytes,
                fetched.content_type.as_deref(),
                fetched.file_name,
            )
            .await?
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::validation(
                "media_url",
                "give either media_id or media_url, not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::validation(
                "media_id",
                format!(
                    "type {} needs media_id (from POST …/media) or media_url",
                    kind.as_str()
                ),
            ));
        }
    };
    if !sniffed.fits(kind) {
        return Err(ApiError::Rejected {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: ErrorCode::MediaTypeNotAllowed,
            message: format!(
                "a {} file cannot be sent as {} (send it as a document)",
                sniffed.mime,
                kind.as_str()
            ),
        });
    }
    Ok(info)
}

/// The content of a media message carrying a stored file.
pub fn content_for(
    kind: MediaKind,
    info: &MediaInfo,
    caption: Option<String>,
    file_name: Option<String>,
) -> Content {
    Content::Media {
        kind,
        media_id: Some(info.id),
        sha256: Some(info.sha256.clone()),
        media_key: None,
        file_enc_sha256: None,
        mimetype: Some(info.mime_type.clone()),
        file_length: u64::try_from(info.size).ok(),
        caption,
        file_name: file_name.or_else(|| info.file_name.clone()),
        direct_path: None,
    }
}

fn multipart_error(e: MultipartError) -> ApiError {
    match e {
        MultipartError::ContentTypeMissing
        | MultipartError::ContentTypeParse
        | MultipartError::ContentTypeIncompatible => ApiError::Rejected {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: ErrorCode::UnsupportedMediaType,
            message: "the body must be multipart/form-data with a `file` field".into(),
        },
        other => ApiError::validation("file", format!("unreadable multipart body: {other}")),
    }
}

/// Upload a file to send (multipart/form-data, field `file`). Its type is read from its
/// content; answers the media object, whose `id` goes in a message's `media_id`.
#[utoipa::path(
    tag = "messages",
    params(SessionPath),
    request_body(content_type = "multipart/form-data", description = "A `file` field"),
    responses((status = 201, description = "Stored", body = Media), CommonErrors),
    security(("api_key" = []))
)]
#[post("/sessions/{session_id}/media")]
pub async fn upload_media(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<SessionPath>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (session, _) = load_for(&state, &caller, path.session_id).await?;
    let max = state.settings.media.max_bytes;
    let mut form = Multipart::new(req.headers(), payload);
    let mut file: Option<(Vec<u8>, Option<String>, Option<String>)> = None;
    while let Some(field) = form.next().await {
        let mut field = field.map_err(multipart_error)?;
        let name = field.name().unwrap_or_default().to_owned();
        if name != "file" {
            // Drain and ignore other fields, bounded like the file.
            let mut seen = 0usize;
            while let Some(chunk) = field.next().await {
                seen += chunk.map_err(multipart_error)?.len();
                if seen > max {
                    return Err(too_large(max));
                }
            }
            continue;
        }
        if file.is_some() {
            return Err(ApiError::validation("file", "give one file per upload"));
        }
        let declared = field.content_type().map(|m| m.essence_str().to_owned());
        let file_name = field
            .content_disposition()
            .and_then(|d| d.get_filename())
            .and_then(clean_file_name);
        let mut bytes = Vec::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(multipart_error)?;
            if bytes.len() + chunk.len() > max {
                return Err(too_large(max));
            }
            bytes.extend_from_slice(&chunk);
        }
        file = Some((bytes, declared, file_name));
    }
    let (bytes, declared, file_name) =
        file.ok_or_else(|| ApiError::validation("file", "is required"))?;
    let (info, _) = store_file(&state, &session, &bytes, declared.as_deref(), file_name).await?;
    Ok(HttpResponse::Created().json(Media::from(&info)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct MediaPath {
    pub session_id: Uuid,
    pub media_id: Uuid,
}

/// An uploaded file's metadata.
#[utoipa::path(
    tag = "messages",
    params(MediaPath),
    responses((status = 200, description = "The media object", body = Media), CommonErrors),
    security(("api_key" = []))
)]
#[get("/sessions/{session_id}/media/{media_id}")]
pub async fn get_media(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<MediaPath>,
) -> Result<HttpResponse, ApiError> {
    let (session, _) = load_for(&state, &caller, path.session_id).await?;
    let mut conn = state.db.get().await?;
    let info = store::find(&mut conn, session.id, path.media_id)
        .await?
        .ok_or(ApiError::NotFound("media"))?;
    Ok(HttpResponse::Ok().json(Media::from(&info)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct MessageMediaPath {
    pub session_id: Uuid,
    /// The message's id or WhatsApp id.
    pub message_id: String,
}

fn file_response(bytes: Vec<u8>, mime: Option<&str>, name: Option<&str>) -> HttpResponse {
    // Only a well-formed type is passed on; the browser must not guess (nosniff is global).
    let mime = mime
        .and_then(|m| m.parse::<actix_web::mime::Mime>().ok())
        .map(|m| m.essence_str().to_owned())
        .unwrap_or_else(|| "application/octet-stream".into());
    let mut parameters = Vec::new();
    if let Some(n) = name.and_then(clean_file_name) {
        parameters.push(DispositionParam::Filename(n));
    }
    HttpResponse::Ok()
        .content_type(mime)
        .insert_header(ContentDisposition {
            disposition: DispositionType::Attachment,
            parameters,
        })
        .body(bytes)
}

/// The file of a media message: what was sent, or what a contact sent (fetched from
/// WhatsApp's media servers and decrypted; any node serves it, connected or not).
#[utoipa::path(
    tag = "messages",
    params(MessageMediaPath),
    responses((status = 200, description = "The file, with its own content type", content_type = "application/octet-stream", body = crate::http::openapi::FileBytes), CommonErrors),
    security(("api_key" = []))
)]
#[get("/sessions/{session_id}/messages/{message_id}/media")]
pub async fn download_message_media(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<MessageMediaPath>,
) -> Result<HttpResponse, ApiError> {
    let (session, _) = load_for(&state, &caller, path.session_id).await?;
    let mut conn = state.db.get().await?;
    let row = crate::messages::store::find_in_session(&mut conn, session.id, &path.message_id)
        .await?
        .ok_or(ApiError::NotFound("message"))?;
    let content: Content =
        serde_json::from_value(row.body.clone()).map_err(|_| ApiError::NotFound("media"))?;
    let Content::Media {
        media_id,
        mimetype,
        file_name,
        file_length,
        ..
    } = &content
    else {
        return Err(ApiError::NotFound("media"));
    };
    if let Some(id) = media_id {
        let bytes = store::bytes(&mut conn, session.id, *id)
            .await?
            .ok_or_else(|| ApiError::Rejected {
                status: StatusCode::GONE,
                code: ErrorCode::MediaGone,
                message: "the uploaded file was deleted after its retention period".into(),
            })?;
        return Ok(file_response(
            bytes,
            mimetype.as_deref(),
            file_name.as_deref(),
        ));
    }
    drop(conn);
    if let Content::Media {
        direct_path: Some(path),
        ..
    } = &content
        && !wagate_actors::messaging::is_media_path(path)
    {
        // Chosen by the sender: never let it pick the host we fetch from.
        return Err(ApiError::Rejected {
            status: StatusCode::BAD_GATEWAY,
            code: ErrorCode::MediaDownloadFailed,
            message: "the sender's media reference is not a WhatsApp media path".into(),
        });
    }
    let params = download_params(&content).ok_or(ApiError::NotFound("media"))?;
    if file_length.unwrap_or_default() > state.settings.media.max_download_bytes {
        return Err(too_large(
            usize::try_from(state.settings.media.max_download_bytes).unwrap_or(usize::MAX),
        ));
    }
    let bytes = state
        .media_downloader
        .download(&params)
        .await
        .map_err(|e| ApiError::Rejected {
            status: StatusCode::BAD_GATEWAY,
            code: ErrorCode::MediaDownloadFailed,
            message: format!("WhatsApp's media servers refused: {e}"),
        })?;
    Ok(file_response(
        bytes,
        mimetype.as_deref(),
        file_name.as_deref(),
    ))
}

/// Deletes uploads older than `retention` that no queued message needs.
pub async fn sweep(db: &crate::db::DbPool, retention: chrono::Duration) -> anyhow::Result<usize> {
    let before = chrono::Utc::now() - retention;
    let mut conn = db.get().await?;
    Ok(store::delete_unneeded(&mut conn, before, 1000).await?)
}

/// Uploads and received media.
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(upload_media)
        .service(get_media)
        .service(download_message_media);
}
