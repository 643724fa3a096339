//! The one error type of the HTTP API: every failure becomes
//! `{"error": {"code", "message", "details"}, "request_id"}` with a stable snake_case code.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::telemetry::current_request_id;

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
    MethodNotAllowed { method: String, path: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
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
        code: &'static str,
        message: String,
    },
    /// A session that is not connected and answering; `details` is its health report.
    #[error("the session is not healthy")]
    SessionUnhealthy(Value),
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
    pub code: String,
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

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation { .. } => "validation_failed",
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::QuotaExceeded { .. } => "quota_exceeded",
            ApiError::NotFound(_) => "not_found",
            ApiError::RouteNotFound { .. } => "route_not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Conflict { code, .. } => code,
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::NotImplemented(_) => "not_implemented",
            ApiError::Rejected { code, .. } => code,
            ApiError::SessionUnhealthy(_) => "session_unhealthy",
            ApiError::Internal(_) => "internal_error",
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
            ApiError::SessionUnhealthy(report) => report.clone(),
            ApiError::QuotaExceeded { what, limit, tier } => {
                json!({ "quota": what, "limit": limit, "tier": tier })
            }
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
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
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
                code: self.code().to_owned(),
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
        assert_eq!(ApiError::from(closed).code(), "unavailable");
        let terminated = Error::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("terminating connection due to administrator command".to_string()),
        );
        assert_eq!(ApiError::from(terminated).code(), "unavailable");
        let reset = Error::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new(
                "error communicating with the server: Connection reset by peer (os error 104)"
                    .to_string(),
            ),
        );
        assert_eq!(ApiError::from(reset).code(), "unavailable");
        let unique = Error::DatabaseError(
            DatabaseErrorKind::UniqueViolation,
            Box::new("duplicate key value".to_string()),
        );
        assert_eq!(ApiError::from(unique).code(), "internal_error");
        assert_eq!(ApiError::from(Error::NotFound).code(), "internal_error");
    }
}
