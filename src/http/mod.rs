//! HTTP plumbing shared by every route: JSON extraction, paging, OpenAPI, headers, timeouts,
//! and the JSON answers for unknown routes and methods.

pub mod egress;
pub mod json;
pub mod openapi;
pub mod pagination;

use std::time::Duration;

use actix_web::ResponseError;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{HttpRequest, web};

use crate::error::ApiError;

/// The CSP of everything but the docs page: JSON needs nothing, so nothing is allowed.
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'";

/// Security headers on every response; a handler's own CSP (the docs page) is kept.
pub fn security_headers(tls: bool) -> actix_web::middleware::DefaultHeaders {
    let mut h = actix_web::middleware::DefaultHeaders::new()
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::REFERRER_POLICY, "no-referrer"))
        .add((header::X_FRAME_OPTIONS, "DENY"))
        .add((header::CONTENT_SECURITY_POLICY, API_CSP))
        .add((header::CACHE_CONTROL, "no-store"));
    if tls {
        h = h.add((
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=31536000; includeSubDomains",
        ));
    }
    h
}

/// Unknown paths answer 404 `route_not_found`; known paths with another method 405.
pub async fn fallback(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    let path = req.path().to_owned();
    let method = req.method().to_string();
    if req.resource_map().has_resource(&path) {
        Err(ApiError::MethodNotAllowed { method, path })
    } else {
        Err(ApiError::RouteNotFound { method, path })
    }
}

/// The request timeout, set on the app from `application.request_timeout_secs`.
#[derive(Debug, Clone, Copy)]
pub struct RequestTimeout(pub Duration);

/// Middleware: a handler still running after the timeout is abandoned with 503.
///
/// The abandoned request cannot be answered through its own `HttpRequest` (it went down with
/// the dropped handler, and cloning it beforehand would break actix's routing), so the answer
/// is built on a stand-in request with the same method and path. Returning `Err` instead would
/// let the error escape the middlewares that add the request id and security headers.
pub async fn timeout_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let limit = req
        .app_data::<web::Data<RequestTimeout>>()
        .map(|t| t.0)
        .unwrap_or(Duration::from_secs(30));
    let method = req.method().clone();
    let uri = req.uri().clone();
    match tokio::time::timeout(limit, next.call(req)).await {
        Ok(res) => res.map(ServiceResponse::map_into_left_body),
        Err(_) => {
            tracing::warn!(
                timeout_secs = limit.as_secs(),
                "request abandoned at the timeout"
            );
            let stand_in = actix_web::test::TestRequest::default()
                .method(method)
                .uri(&uri.to_string())
                .to_http_request();
            let res = ApiError::RequestTimeout(limit.as_secs()).error_response();
            Ok(ServiceResponse::new(stand_in, res).map_into_right_body())
        }
    }
}

/// CORS: only the configured origins; none by default.
pub fn cors(origins: &[String]) -> actix_cors::Cors {
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(vec!["GET", "POST", "PATCH", "PUT", "DELETE"])
        .allowed_headers(vec![
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("x-api-key"),
            header::HeaderName::from_static("x-request-id"),
            header::HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers(vec![
            header::HeaderName::from_static("x-request-id"),
            header::RETRY_AFTER,
        ])
        .max_age(600);
    for origin in origins {
        cors = cors.allowed_origin(origin);
    }
    cors
}
