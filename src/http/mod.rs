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

/// `?tenant_id=`: the tenant an admin key acts for (a tenant's own key acts for itself; naming
/// another tenant is a 404).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantQuery {
    /// The admin key names the tenant.
    pub tenant_id: Option<uuid::Uuid>,
}

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

/// Routes served outside the OpenAPI document (The legacy session-management API's `/api/whatsapp/...`), for the
/// `Allow` header of their 405s: pattern, methods.
pub const UNDOCUMENTED_ROUTES: &[(&str, &[&str])] = &[
    ("/api/whatsapp/sessions", &["GET"]),
    ("/api/whatsapp/sessions/{session_id}/initialize", &["POST"]),
    ("/api/whatsapp/sessions/{session_id}/status", &["GET"]),
    ("/api/whatsapp/sessions/{session_id}/health", &["GET"]),
    ("/api/whatsapp/sessions/{session_id}/send", &["POST"]),
    ("/api/whatsapp/metrics", &["GET"]),
    ("/api/whatsapp/events", &["GET"]),
    ("/docs/{file}", &["GET"]),
    ("/dashboard", &["GET"]),
    ("/dashboard/assets/{file}", &["GET"]),
    ("/dashboard/login", &["POST"]),
    ("/dashboard/logout", &["POST"]),
    ("/dashboard/me", &["GET"]),
];

/// Whether a route pattern (`/a/{id}/b`) matches a concrete path.
fn pattern_matches(pattern: &str, path: &str) -> bool {
    let (mut p, mut q) = (pattern.split('/'), path.split('/'));
    loop {
        match (p.next(), q.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a.starts_with('{') && a.ends_with('}') => {
                if b.is_empty() {
                    return false;
                }
            }
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// How specific a pattern is: its literal segments (`chats/bulk` is more specific than
/// `chats/{chat}` for the path `…/chats/bulk`).
fn literal_segments(pattern: &str) -> usize {
    pattern.split('/').filter(|s| !s.starts_with('{')).count()
}

/// The methods a path is served with, from the OpenAPI document and the undocumented routes:
/// those of the most specific pattern that matches it.
fn allowed_methods(req: &HttpRequest, path: &str) -> Vec<String> {
    let mut methods: Vec<String> = Vec::new();
    if let Some(doc) = req.app_data::<web::Data<utoipa::openapi::OpenApi>>() {
        let best = doc
            .paths
            .paths
            .keys()
            .filter(|p| pattern_matches(p, path))
            .map(|p| literal_segments(p))
            .max();
        for (pattern, item) in &doc.paths.paths {
            if !pattern_matches(pattern, path) || Some(literal_segments(pattern)) != best {
                continue;
            }
            let ops = [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("PATCH", item.patch.is_some()),
                ("DELETE", item.delete.is_some()),
            ];
            methods.extend(
                ops.iter()
                    .filter(|(_, on)| *on)
                    .map(|(m, _)| (*m).to_owned()),
            );
        }
    }
    for (pattern, ms) in UNDOCUMENTED_ROUTES {
        if pattern_matches(pattern, path) {
            methods.extend(ms.iter().map(|m| (*m).to_owned()));
        }
    }
    if methods.iter().any(|m| m == "GET") {
        methods.push("HEAD".into());
    }
    methods.sort();
    methods.dedup();
    methods
}

/// Unknown paths answer 404 `route_not_found`; known paths with another method 405, with
/// the methods they are served with in `Allow`.
pub async fn fallback(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    let path = req.path().to_owned();
    let method = req.method().to_string();
    if !req.resource_map().has_resource(&path) {
        return Err(ApiError::RouteNotFound { method, path });
    }
    Ok(method_not_allowed(&req))
}

/// An id segment that is not an id: a literal route beside the `{id}` one took this method
/// by mistake (`PATCH /agents/defaults` matches `PATCH /agents/{agent_id}`), so it is the
/// literal route's 405; otherwise no such object (404).
pub fn id_or_refusal(
    req: &HttpRequest,
    raw: &str,
    what: &'static str,
) -> Result<uuid::Uuid, ApiError> {
    if let Ok(id) = uuid::Uuid::parse_str(raw) {
        return Ok(id);
    }
    let allowed = allowed_methods(req, req.path());
    if !allowed.is_empty() && !allowed.iter().any(|m| m == req.method().as_str()) {
        return Err(ApiError::MethodNotAllowed {
            method: req.method().to_string(),
            path: req.path().to_owned(),
            allow: allowed.join(", "),
        });
    }
    Err(ApiError::NotFound(what))
}

/// The 405 of a known path, with the methods it is served with in `Allow`.
fn method_not_allowed(req: &HttpRequest) -> actix_web::HttpResponse {
    let path = req.path().to_owned();
    let method = req.method().to_string();
    let allow = allowed_methods(req, &path).join(", ");
    ApiError::MethodNotAllowed {
        method,
        path,
        allow,
    }
    .error_response()
}

/// Middleware: a path or query that decodes to U+0000 is a 400 naming where it was, before
/// any handler sees it (Postgres refuses NUL in `text`, so it would otherwise be a 500).
pub async fn refuse_nul_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if let Some(field) = nul_in_uri(req.uri().path(), req.query_string()) {
        let res = ApiError::validation(field, json::NUL_MESSAGE).error_response();
        return Ok(req.into_response(res).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// Where a raw path and query hold an encoded NUL: `path`, or the query parameter's name.
fn nul_in_uri(path: &str, query: &str) -> Option<String> {
    let has_nul = |raw: &str| percent_encoding::percent_decode_str(raw).any(|b| b == 0);
    if has_nul(path) {
        return Some("path".into());
    }
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name_text = percent_encoding::percent_decode_str(&name.replace('+', " "))
            .decode_utf8_lossy()
            .replace('\0', "\\u0000");
        (has_nul(name) || has_nul(value)).then_some(if name_text.is_empty() {
            "query".to_owned()
        } else {
            name_text
        })
    })
}

#[cfg(test)]
mod nul_tests {
    use super::{nul_in_uri, pattern_matches};

    #[test]
    fn patterns_match_paths_segment_by_segment() {
        assert!(pattern_matches(
            "/api/v1/sessions/{id}",
            "/api/v1/sessions/abc"
        ));
        assert!(!pattern_matches(
            "/api/v1/sessions/{id}",
            "/api/v1/sessions/"
        ));
        assert!(!pattern_matches(
            "/api/v1/sessions/{id}",
            "/api/v1/sessions/a/b"
        ));
        assert!(!pattern_matches("/api/v1/sessions", "/api/v1/sessionsx"));
    }

    #[test]
    fn finds_an_encoded_nul_in_the_path_or_a_query_parameter() {
        assert_eq!(nul_in_uri("/api/v1/x/%00", ""), Some("path".into()));
        assert_eq!(
            nul_in_uri("/a", "limit=5&cursor=1_%00"),
            Some("cursor".into())
        );
        assert_eq!(nul_in_uri("/a", "limit=5&cursor=1_2"), None);
        assert_eq!(nul_in_uri("/a%2500", "q=%2500"), None);
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
