//! The OpenAPI document (collected from the handlers' annotations) and the `/docs` page.

use actix_web::http::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use actix_web::{HttpResponse, get};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi};

use crate::error::ErrorBody;

/// The error responses any authenticated route may give; every route lists them.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum CommonErrors {
    /// `validation_failed` (the field is in `details.field`) or `malformed_json`.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// `unauthorized`: missing, invalid, revoked or expired credentials.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `forbidden`: the admin key is needed, or the key is read-only.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// `not_found`: no such resource for this caller (other tenants' resources included).
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// `payload_too_large`: the body exceeds `application.body_limit_bytes`.
    #[response(status = 413)]
    PayloadTooLarge(ErrorBody),
    /// `unsupported_media_type`: the body is not `application/json`.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// `rate_limited`, with a `retry-after` header.
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// `unavailable` (database) or `request_timeout`.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wagate",
        description = "Multi-tenant WhatsApp gateway. Errors: `{\"error\": {\"code\", \"message\", \"details\"}, \"request_id\"}`.",
    ),
    modifiers(&SecuritySchemes),
    components(schemas(ErrorBody))
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key, the admin key, or a JWT from POST /api/v1/auth/token",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "x_api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
    }
}

/// The page is static and loads its renderer from a pinned CDN bundle; its CSP allows only that.
const DOCS_HTML: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>wagate API</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body>
<redoc spec-url="/openapi.json"></redoc>
<script src="https://cdn.redoc.ly/redoc/v2.1.5/bundles/redoc.standalone.js"></script>
</body>
</html>
"#;

const DOCS_CSP: &str = "default-src 'none'; script-src https://cdn.redoc.ly; \
    style-src 'unsafe-inline' https://fonts.googleapis.com; font-src https://fonts.gstatic.com; \
    img-src 'self' data: https://cdn.redoc.ly; connect-src 'self'; worker-src blob:; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Interactive API documentation (HTML).
#[utoipa::path(tag = "operations", responses((status = 200, description = "HTML page", content_type = "text/html")))]
#[get("/docs")]
pub async fn docs() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((CONTENT_SECURITY_POLICY, DOCS_CSP))
        .body(DOCS_HTML)
}
