//! The OpenAPI document (collected from the handlers' annotations) and the `/docs` page.

use actix_web::http::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use actix_web::{HttpResponse, get};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

use crate::error::{ApiError, ErrorBody};

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
    /// A conflict with the resource's state, its own code (`session_not_linked`,
    /// `session_not_in_qr_state`, `phone_in_use`, …).
    #[response(status = 409)]
    Conflict(ErrorBody),
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

/// The further errors of a request WhatsApp answers live through the session.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum LiveErrors {
    /// `not_on_whatsapp`: the number is not on WhatsApp.
    #[response(status = 422)]
    NotOnWhatsapp(ErrorBody),
    /// `whatsapp_failed`: WhatsApp refused or did not answer in time.
    #[response(status = 502)]
    WhatsappFailed(ErrorBody),
}

/// The further errors of a group request, which WhatsApp answers live through the session.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum GroupErrors {
    /// `whatsapp_refused`: WhatsApp refused it (not an admin, not in the group).
    #[response(status = 403)]
    Refused(ErrorBody),
    /// `not_found`: WhatsApp has no such group.
    #[response(status = 404)]
    NoSuchGroup(ErrorBody),
    /// `whatsapp_refused`: WhatsApp refused it as asked (a revoked invite code, a conflict).
    #[response(status = 422)]
    RefusedAsAsked(ErrorBody),
    /// `whatsapp_failed`: WhatsApp did not answer in time, or failed.
    #[response(status = 502)]
    WhatsappFailed(ErrorBody),
}

/// The further errors of a model call (`/ai/generate`, a suggested reply).
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum AiErrors {
    /// `ai_blocked`: the model refused to answer this content.
    #[response(status = 422)]
    Blocked(ErrorBody),
    /// `ai_provider_failed`: the provider failed after retries.
    #[response(status = 502)]
    ProviderFailed(ErrorBody),
}

/// A file's bytes, as the document describes a binary body (`string`, format `binary`).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct FileBytes(Vec<u8>);

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

/// Swagger UI, compiled into the binary (the `vendored` build of utoipa-swagger-ui), so the
/// docs work with no internet; its CSP allows nothing but this server.
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn swagger_config() -> std::sync::Arc<utoipa_swagger_ui::Config<'static>> {
    static CONFIG: std::sync::LazyLock<std::sync::Arc<utoipa_swagger_ui::Config<'static>>> =
        std::sync::LazyLock::new(|| {
            std::sync::Arc::new(
                utoipa_swagger_ui::Config::from("/openapi.json")
                    .try_it_out_enabled(true)
                    .persist_authorization(false),
            )
        });
    CONFIG.clone()
}

/// One file of the docs page, with the docs' CSP; `None` when there is no such file.
fn docs_file(name: &str) -> Option<HttpResponse> {
    let file = utoipa_swagger_ui::serve(name, swagger_config()).ok()??;
    let body = if name.is_empty() {
        // The page is served at /docs (no trailing slash): its relative links would point
        // at the site root.
        String::from_utf8_lossy(&file.bytes)
            .replace("href=\"./", "href=\"/docs/")
            .replace("src=\"./", "src=\"/docs/")
            .replace("href=\"index.css\"", "href=\"/docs/index.css\"")
            .replace("<title>Swagger UI</title>", "<title>wagate API</title>")
            .into_bytes()
    } else {
        file.bytes.into_owned()
    };
    Some(
        HttpResponse::Ok()
            .insert_header((CONTENT_TYPE, file.content_type))
            .insert_header((CONTENT_SECURITY_POLICY, DOCS_CSP))
            .body(body),
    )
}

/// Interactive API documentation (HTML; Swagger UI served by this binary).
#[utoipa::path(tag = "operations", responses((status = 200, description = "HTML page", content_type = "text/html", body = String)))]
#[get("/docs")]
pub async fn docs() -> HttpResponse {
    docs_file("").unwrap_or_else(|| HttpResponse::InternalServerError().finish())
}

#[derive(Debug, serde::Deserialize)]
pub struct DocsAsset {
    file: String,
}

/// The docs page's scripts, styles and icons.
#[get("/docs/{file}")]
pub async fn docs_asset(path: actix_web::web::Path<DocsAsset>) -> Result<HttpResponse, ApiError> {
    // Only the distribution's own top-level files; nothing else is looked up.
    let name = path.file.as_str();
    if name.contains('/') || name.starts_with('.') {
        return Err(ApiError::NotFound("docs file"));
    }
    docs_file(name).ok_or(ApiError::NotFound("docs file"))
}
