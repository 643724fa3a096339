//! The one error type of the HTTP API: every failure becomes
//! `{"error": {"code", "message", "details"}, "request_id"}` with a stable snake_case code.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::telemetry::current_request_id;

/// Every error code the API can return, in one list; the OpenAPI document lists them as
/// the values of `error.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A field is missing or invalid; `details.field` names it.
    ValidationFailed,
    /// The body is not valid JSON.
    MalformedJson,
    /// The body is not `application/json`, or an upload's type is not accepted.
    UnsupportedMediaType,
    /// The body exceeds `application.body_limit_bytes`.
    PayloadTooLarge,
    /// Missing, invalid, revoked or expired credentials.
    Unauthorized,
    /// The admin key is needed, or the key is read-only.
    Forbidden,
    /// The tier's quota is reached (`details`: quota, limit, tier).
    QuotaExceeded,
    /// No such resource for this caller (other tenants' resources included).
    NotFound,
    /// No route has this path.
    RouteNotFound,
    /// The path exists, not with this method (`Allow` lists the others).
    MethodNotAllowed,
    /// Too many requests; `retry-after` says when to try again.
    RateLimited,
    /// The request took longer than `application.request_timeout_secs`.
    RequestTimeout,
    /// A part the request needs is down (`details.component`).
    Unavailable,
    /// Not offered by this build.
    NotImplemented,
    /// The session is not connected and answering (`details`: its health report).
    SessionUnhealthy,
    /// The session has no linked device yet.
    SessionNotLinked,
    /// The session is not connected.
    SessionNotConnected,
    /// The session is not waiting to be linked.
    SessionNotInQrState,
    /// The session has no actor on this node.
    SessionNotRunning,
    /// The `Idempotency-Key` was used with a different request.
    IdempotencyKeyReused,
    /// The delivery is still being attempted.
    DeliveryPending,
    /// The number belongs to another tenant's sandbox session.
    PhoneInUse,
    /// The simulated phone could not scan the QR code.
    ScanFailed,
    /// The simulated contact could not send.
    InboundFailed,
    /// The file exceeds `media.max_bytes`.
    MediaTooLarge,
    /// The file's type is not one WhatsApp accepts for this message type.
    MediaTypeNotAllowed,
    /// The file's bytes do not match its declared type.
    MediaTypeMismatch,
    /// The `media_url` is refused by the egress policy.
    MediaUrlNotAllowed,
    /// The `media_url` could not be fetched.
    MediaFetchFailed,
    /// The file was deleted after its retention.
    MediaGone,
    /// WhatsApp's media servers did not give the file.
    MediaDownloadFailed,
    /// WhatsApp refused or did not answer a live request (presence, typing, checks, profiles,
    /// blocking); `message` says what it answered.
    WhatsappFailed,
    /// The number is not on WhatsApp.
    NotOnWhatsapp,
    /// WhatsApp refused the request itself (not a group admin, a revoked invite, …);
    /// `details.whatsapp_code` is its code.
    WhatsappRefused,
    /// The message cannot be edited or deleted so (not ours, not sent, too old, deleted).
    MessageNotChangeable,
    /// The model provider failed (after retries), or its circuit is open.
    AiProviderFailed,
    /// The model refused to answer this content (a safety block).
    AiBlocked,
    /// Neither the chat nor its session has an agent.
    NoAgent,
    /// The chat has nothing from the contact to answer.
    NothingToAnswer,
    /// Every question of the prompt generator is answered already.
    PromptSessionComplete,
    /// The prompt generator has questions left to answer.
    PromptSessionIncomplete,
    /// The execution has finished already (completed, failed or cancelled).
    ExecutionFinished,
    /// The flow is disabled: it starts no execution.
    FlowDisabled,
    /// The email or the password is wrong (a member's login).
    InvalidCredentials,
    /// A member of this tenant has this email already.
    MemberExists,
    /// The change would leave the tenant without an enabled owner.
    LastOwner,
    /// The column holds as many cards as its WIP limit allows.
    WipLimitReached,
    /// The column still holds cards.
    ColumnNotEmpty,
    /// The order given is not of the column's cards as they are now.
    OrderConflict,
    /// The tenant has a quick reply with this shortcut.
    ShortcutTaken,
    /// The report is still being generated (or failed): there is nothing to download.
    ReportNotReady,
    /// The tenant's usage does not fit the tier it asked to move to.
    TierDoesNotFit,
    /// A change made with the dashboard's login cookie lacks the `X-CSRF-Token` header that
    /// matches its `wagate_csrf` cookie, or comes from another origin.
    CsrfTokenInvalid,
    /// A fault on our side (logged with the request id).
    InternalError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ValidationFailed => "validation_failed",
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RouteNotFound => "route_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NotImplemented => "not_implemented",
            ErrorCode::SessionUnhealthy => "session_unhealthy",
            ErrorCode::SessionNotLinked => "session_not_linked",
            ErrorCode::SessionNotConnected => "session_not_connected",
            ErrorCode::SessionNotInQrState => "session_not_in_qr_state",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::MemberExists => "member_exists",
            ErrorCode::LastOwner => "last_owner",
            ErrorCode::WipLimitReached => "wip_limit_reached",
            ErrorCode::ColumnNotEmpty => "column_not_empty",
            ErrorCode::OrderConflict => "order_conflict",
            ErrorCode::ShortcutTaken => "shortcut_taken",
            ErrorCode::ReportNotReady => "report_not_ready",
            ErrorCode::TierDoesNotFit => "tier_does_not_fit",
            ErrorCode::CsrfTokenInvalid => "csrf_token_invalid",
            ErrorCode::SessionNotRunning => "session_not_running",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::DeliveryPending => "delivery_pending",
            ErrorCode::PhoneInUse => "phone_in_use",
            ErrorCode::ScanFailed => "scan_failed",
            ErrorCode::InboundFailed => "inbound_failed",
            ErrorCode::MediaTooLarge => "media_too_large",
            ErrorCode::MediaTypeNotAllowed => "media_type_not_allowed",
            ErrorCode::MediaTypeMismatch => "media_type_mismatch",
            ErrorCode::MediaUrlNotAllowed => "media_url_not_allowed",
            ErrorCode::MediaFetchFailed => "media_fetch_failed",
            ErrorCode::MediaGone => "media_gone",
            ErrorCode::MediaDownloadFailed => "media_download_failed",
            ErrorCode::WhatsappFailed => "whatsapp_failed",
            ErrorCode::MessageNotChangeable => "message_not_changeable",
            ErrorCode::NotOnWhatsapp => "not_on_whatsapp",
            ErrorCode::WhatsappRefused => "whatsapp_refused",
            ErrorCode::AiProviderFailed => "ai_provider_failed",
            ErrorCode::AiBlocked => "ai_blocked",
            ErrorCode::NoAgent => "no_agent",
            ErrorCode::NothingToAnswer => "nothing_to_answer",
            ErrorCode::PromptSessionComplete => "prompt_session_complete",
            ErrorCode::PromptSessionIncomplete => "prompt_session_incomplete",
            ErrorCode::ExecutionFinished => "execution_finished",
            ErrorCode::FlowDisabled => "flow_disabled",
            ErrorCode::InternalError => "internal_error",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Validation { field: String, message: String },
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("request body must be application/json")]
    UnsupportedMediaType,
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("the {tier} tier allows at most {limit} {what}")]
    QuotaExceeded {
        what: &'static str,
        limit: u32,
        tier: &'static str,
    },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed {
        method: String,
        path: String,
        /// The `Allow` header: the methods the path is served with.
        allow: String,
    },
    #[error("{message}")]
    Conflict { code: ErrorCode, message: String },
    #[error("the tenant uses {used} {quota}; the {tier} tier allows {limit}")]
    TierDoesNotFit {
        quota: &'static str,
        used: i64,
        limit: u32,
        tier: &'static str,
    },
    #[error("rate limit exceeded; retry in {retry_after_secs} s")]
    RateLimited {
        retry_after_secs: u64,
        limit: u32,
        class: &'static str,
    },
    #[error("the request took longer than {0} s")]
    RequestTimeout(u64),
    #[error("{0} is unavailable")]
    Unavailable(&'static str),
    #[error("{0}")]
    NotImplemented(&'static str),
    /// A refusal with its own code and status (media checks: 413, 415, 422, …).
    #[error("{message}")]
    Rejected {
        status: StatusCode,
        code: ErrorCode,
        message: String,
    },
    /// A session that is not connected and answering; `details` is its health report.
    #[error("the session is not healthy")]
    SessionUnhealthy(Box<crate::sessions::lifecycle::SessionHealth>),
    /// A fault on our side. The cause is logged, never shown to the client.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// The JSON body of every error, as documented in the OpenAPI document.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    pub request_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `validation_failed`.
    pub code: ErrorCode,
    pub message: String,
    #[schema(value_type = Object)]
    pub details: Value,
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(e.into())
    }

    /// An error of the store that came through `anyhow` (a group writer's answer): the
    /// database's own errors keep their meaning (an unreachable database is a 503), anything
    /// else is internal.
    pub fn from_store(e: anyhow::Error) -> Self {
        let e = match e.downcast::<diesel::result::Error>() {
            Ok(db) => return db.into(),
            Err(e) => e,
        };
        match e.downcast::<bb8::RunError<diesel_async::pooled_connection::PoolError>>() {
            Ok(pool) => pool.into(),
            Err(e) => ApiError::Internal(e),
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Validation { .. } => ErrorCode::ValidationFailed,
            ApiError::MalformedJson(_) => ErrorCode::MalformedJson,
            ApiError::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            ApiError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::RouteNotFound { .. } => ErrorCode::RouteNotFound,
            ApiError::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            ApiError::Conflict { code, .. } => *code,
            ApiError::TierDoesNotFit { .. } => ErrorCode::TierDoesNotFit,
            ApiError::RateLimited { .. } => ErrorCode::RateLimited,
            ApiError::RequestTimeout(_) => ErrorCode::RequestTimeout,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::NotImplemented(_) => ErrorCode::NotImplemented,
            ApiError::Rejected { code, .. } => *code,
            ApiError::SessionUnhealthy(_) => ErrorCode::SessionUnhealthy,
            ApiError::Internal(_) => ErrorCode::InternalError,
        }
    }

    fn details(&self) -> Value {
        match self {
            ApiError::Validation { field, .. } => json!({ "field": field }),
            ApiError::PayloadTooLarge { limit } => json!({ "limit_bytes": limit }),
            ApiError::RateLimited {
                retry_after_secs,
                limit,
                class,
            } => {
                json!({ "retry_after_secs": retry_after_secs, "limit": limit, "class": class })
            }
            ApiError::Unavailable(part) => json!({ "component": part }),
            // Cannot fail: the report is plain fields (bools, numbers, strings, an enum).
            ApiError::SessionUnhealthy(report) => serde_json::to_value(report).unwrap_or_default(),
            ApiError::QuotaExceeded { what, limit, tier } => {
                json!({ "quota": what, "limit": limit, "tier": tier })
            }
            ApiError::TierDoesNotFit {
                quota,
                used,
                limit,
                tier,
            } => json!({ "quota": quota, "used": used, "limit": limit, "tier": tier }),
            _ => json!({}),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Validation { .. } | ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::QuotaExceeded { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } | ApiError::TierDoesNotFit { .. } => StatusCode::CONFLICT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RequestTimeout(_)
            | ApiError::Unavailable(_)
            | ApiError::SessionUnhealthy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Rejected { status, .. } => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(cause) = self {
            tracing::error!(error = ?cause, "internal error");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                details: self.details(),
            },
            request_id: current_request_id().unwrap_or_default(),
        };
        let mut res = HttpResponse::build(self.status_code());
        if let ApiError::RateLimited {
            retry_after_secs, ..
        } = self
        {
            res.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
        }
        if let ApiError::MethodNotAllowed { allow, .. } = self
            && let Ok(value) = HeaderValue::from_str(allow)
        {
            res.insert_header((header::ALLOW, value));
        }
        if let ApiError::Unauthorized(_) = self {
            res.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        res.json(body)
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(e: diesel::result::Error) -> Self {
        if is_connection_loss(&e) {
            // A pooled connection whose server went away fails on its first
            // query, not on checkout: that is the database being unavailable,
            // not a bug in the request.
            tracing::warn!(error = %e, "database connection lost");
            return ApiError::Unavailable("database");
        }
        ApiError::Internal(e.into())
    }
}

/// Whether a query failed because the connection or the server went away.
fn is_connection_loss(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match e {
        Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => true,
        Error::DatabaseError(_, info) => {
            let message = info.message();
            // 57P01 admin_shutdown / 57P02 crash_shutdown / 57P03 cannot_connect_now
            // reach us only as text through the async driver.
            message.contains("terminating connection")
                || message.contains("connection closed")
                || message.contains("the database system is")
                // tokio-postgres's I/O errors on a socket the server dropped (reset, EOF)
                // read "error communicating with the server: …".
                || message.contains("error communicating with the server")
        }
        Error::BrokenTransactionManager => true,
        _ => false,
    }
}

impl From<bb8::RunError<diesel_async::pooled_connection::PoolError>> for ApiError {
    fn from(e: bb8::RunError<diesel_async::pooled_connection::PoolError>) -> Self {
        tracing::warn!(error = %e, "database pool unavailable");
        ApiError::Unavailable("database")
    }
}

pub fn payload_error(err: actix_web::error::PayloadError, limit: usize) -> ApiError {
    match err {
        actix_web::error::PayloadError::Overflow => ApiError::PayloadTooLarge { limit },
        other => ApiError::MalformedJson(other.to_string()),
    }
}

/// Path segments that do not parse (e.g. a non-UUID id) are a 404: the resource cannot exist.
pub fn path_error_handler(
    _err: actix_web::error::PathError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::NotFound("resource").into()
}

pub fn query_error_handler(
    err: actix_web::error::QueryPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    let message = err.to_string();
    let field = message
        .split('`')
        .nth(1)
        .map(str::to_owned)
        .unwrap_or_else(|| "query".to_owned());
    ApiError::validation(field, message).into()
}

#[cfg(test)]
mod connection_loss_tests {
    use diesel::result::{DatabaseErrorKind, Error};

    use super::*;

    #[test]
    fn a_lost_connection_is_unavailable_and_a_bad_query_is_internal() {
        let closed = Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection,
            Box::new("server closed the connection unexpectedly".to_string()),
        );
        assert_eq!(ApiError::from(closed).code().as_str(), "unavailable");
        let terminated = Error::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("terminating connection due to administrator command".to_string()),
        );
        assert_eq!(ApiError::from(terminated).code().as_str(), "unavailable");
        let reset = Error::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new(
                "error communicating with the server: Connection reset by peer (os error 104)"
                    .to_string(),
            ),
        );
        assert_eq!(ApiError::from(reset).code().as_str(), "unavailable");
        let unique = Error::DatabaseError(
            DatabaseErrorKind::UniqueViolation,
            Box::new("duplicate key value".to_string()),
        );
        assert_eq!(ApiError::from(unique).code().as_str(), "internal_error");
        assert_eq!(
            ApiError::from(Error::NotFound).code().as_str(),
            "internal_error"
        );
    }

    #[test]
    fn every_error_code_serialises_as_its_name() {
        let all = [
            ErrorCode::ValidationFailed,
            ErrorCode::MalformedJson,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::PayloadTooLarge,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::QuotaExceeded,
            ErrorCode::NotFound,
            ErrorCode::RouteNotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::RateLimited,
            ErrorCode::RequestTimeout,
            ErrorCode::Unavailable,
            ErrorCode::NotImplemented,
            ErrorCode::SessionUnhealthy,
            ErrorCode::SessionNotLinked,
            ErrorCode::SessionNotConnected,
            ErrorCode::SessionNotInQrState,
            ErrorCode::SessionNotRunning,
            ErrorCode::IdempotencyKeyReused,
            ErrorCode::DeliveryPending,
            ErrorCode::PhoneInUse,
            ErrorCode::ScanFailed,
            ErrorCode::InboundFailed,
            ErrorCode::MediaTooLarge,
            ErrorCode::MediaTypeNotAllowed,
            ErrorCode::MediaTypeMismatch,
            ErrorCode::MediaUrlNotAllowed,
            ErrorCode::MediaFetchFailed,
            ErrorCode::MediaGone,
            ErrorCode::MediaDownloadFailed,
            ErrorCode::ReportNotReady,
            ErrorCode::TierDoesNotFit,
            ErrorCode::CsrfTokenInvalid,
            ErrorCode::InternalError,
        ];
        for code in all {
            assert_eq!(
                serde_json::to_value(code).unwrap_or_default(),
                serde_json::json!(code.as_str())
            );
        }
    }
}
