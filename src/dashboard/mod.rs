//! The web dashboard at `/dashboard`: a page and its files, all inside the binary, and the
//! login that gives the browser its credential.
//!
//! The page is a small application of plain ES modules (no build step, nothing fetched from
//! elsewhere) that uses only the public API, as any client would. Its credential is the same
//! JWT the API issues, kept where page scripts cannot read it: an HttpOnly, SameSite=Strict
//! cookie, with a second, readable cookie for the double-submit CSRF check the
//! authentication applies to every change made with it (`crate::auth`).

use std::sync::LazyLock;

use actix_web::cookie::{Cookie, SameSite, time::Duration as CookieDuration};
use actix_web::http::header::{self, HeaderName};
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::{self, Caller};
use crate::error::{ApiError, ErrorCode};
use crate::http::json::ValidJson;

/// The HttpOnly cookie holding the dashboard's JWT.
pub const TOKEN_COOKIE: &str = "wagate_token";
/// The readable cookie whose value a change must repeat in [`CSRF_HEADER`].
pub const CSRF_COOKIE: &str = "wagate_csrf";
pub const CSRF_HEADER: HeaderName = HeaderName::from_static("x-csrf-token");

/// The dashboard's policy: its own files only, no inline script or style, no eval; images
/// also as `data:` (the QR code); the API and its WebSocket on this origin.
pub const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; font-src 'self'; form-action 'self'; \
    base-uri 'none'; frame-ancestors 'none'";

/// One embedded file: its name under `/dashboard/assets/`, type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! assets {
    ($($name:literal => $type:expr),* $(,)?) => {
        &[$(Asset {
            name: $name,
            content_type: $type,
            bytes: include_bytes!(concat!("assets/", $name)),
        }),*]
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = assets![
    "index.html" => "text/html; charset=utf-8",
    "app.css" => "text/css; charset=utf-8",
    "favicon.svg" => "image/svg+xml",
    "app.js" => JS,
    "api.js" => JS,
    "ui.js" => JS,
    "pages/login.js" => JS,
    "pages/sessions.js" => JS,
    "pages/chats.js" => JS,
    "pages/board.js" => JS,
    "pages/agents.js" => JS,
    "pages/automation.js" => JS,
    "pages/webhooks.js" => JS,
    "pages/notifications.js" => JS,
    "pages/stats.js" => JS,
    "pages/admin.js" => JS,
];

/// Each file's ETag (a hash of its bytes), computed once.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| format!("\"{}\"", hex::encode(&Sha256::digest(a.bytes)[..12])))
        .collect()
});

/// The dashboard's files and login; outside the API's document (they are not API).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(page)
        .service(asset)
        .service(login)
        .service(logout)
        .service(me);
}

fn serve(req: &HttpRequest, name: &str) -> Option<HttpResponse> {
    let i = ASSETS.iter().position(|a| a.name == name)?;
    let (file, etag) = (&ASSETS[i], &ETAGS[i]);
    let cached = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut res = if cached {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP))
        .insert_header((header::ETAG, etag.as_str()))
        // Revalidated on every load (a new binary has new files), answered 304 when the same.
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    Some(if cached {
        res.finish()
    } else {
        res.insert_header((header::CONTENT_TYPE, file.content_type))
            .body(file.bytes)
    })
}

/// The dashboard's page (every view is in it; the address's `#/…` picks one).
#[get("/dashboard")]
async fn page(req: HttpRequest) -> HttpResponse {
    serve(&req, "index.html").unwrap_or_else(|| HttpResponse::InternalServerError().finish())
}

#[derive(Debug, Deserialize)]
struct AssetPath {
    file: String,
}

#[get("/dashboard/assets/{file:.+}")]
async fn asset(req: HttpRequest, path: web::Path<AssetPath>) -> Result<HttpResponse, ApiError> {
    let name = path.file.as_str();
    if name == "index.html" {
        return Err(ApiError::NotFound("dashboard file"));
    }
    serve(&req, name).ok_or(ApiError::NotFound("dashboard file"))
}

/// A member's email and password, or a key: the admin key (the admin's dashboard) or a
/// tenant's API key (a tenant without members).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    email: Option<String>,
    password: Option<String>,
    tenant_id: Option<Uuid>,
    api_key: Option<String>,
}

/// Who is logged in, as the page needs it.
#[derive(Debug, Serialize)]
struct Who {
    /// `admin`, `member` or `key` (a tenant's API key).
    kind: &'static str,
    tenant_id: Option<Uuid>,
    member_id: Option<Uuid>,
    /// The member's role (`owner|admin|agent|viewer`), or the key's (`owner|read_only`).
    role: Option<&'static str>,
    expires_at: Option<DateTime<Utc>>,
    /// The value to send as `X-CSRF-Token` (also readable in its cookie).
    #[serde(skip_serializing_if = "Option::is_none")]
    csrf_token: Option<String>,
}

fn who(caller: &Caller, expires_at: Option<u64>) -> Who {
    let expires_at = expires_at
        .and_then(|e| i64::try_from(e).ok())
        .and_then(|e| DateTime::<Utc>::from_timestamp(e, 0));
    match caller {
        Caller::Admin => Who {
            kind: "admin",
            tenant_id: None,
            member_id: None,
            role: None,
            expires_at,
            csrf_token: None,
        },
        Caller::Tenant {
            tenant_id,
            role,
            member,
            ..
        } => Who {
            kind: if member.is_some() { "member" } else { "key" },
            tenant_id: Some(*tenant_id),
            member_id: member.map(|m| m.id),
            role: Some(member.map_or(role.as_str(), |m| m.role.as_str())),
            expires_at,
            csrf_token: None,
        },
    }
}

fn invalid() -> ApiError {
    ApiError::Rejected {
        status: actix_web::http::StatusCode::UNAUTHORIZED,
        code: ErrorCode::InvalidCredentials,
        message: "the key is wrong".into(),
    }
}

fn cookie(req: &HttpRequest, name: &'static str, value: String, ttl_secs: u64) -> Cookie<'static> {
    let mut c = Cookie::build(name, value)
        .path("/")
        .same_site(SameSite::Strict)
        .http_only(name == TOKEN_COOKIE)
        .max_age(CookieDuration::seconds(
            i64::try_from(ttl_secs).unwrap_or(i64::MAX),
        ))
        .finish();
    // Secure wherever the browser reached us over TLS (directly or through a proxy that
    // says so); plain HTTP on localhost must still work.
    if req.connection_info().scheme() == "https" {
        c.set_secure(true);
    }
    c
}

/// Log in to the dashboard: sets the login cookie and the CSRF cookie.
#[post("/dashboard/login")]
async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: ValidJson<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let peer = auth::peer_of(&req);
    let (token, caller, exp) = match (b.api_key, b.email, b.password) {
        (Some(key), None, None) => {
            let key = key.trim().to_owned();
            if key.is_empty() {
                return Err(ApiError::validation("api_key", "must not be empty"));
            }
            // The API's own checks and lockouts; a JWT is refused here (a key is asked for).
            let caller = match auth::authenticate_from(&state, &peer, &key).await {
                Ok(c) => c,
                Err(ApiError::Unauthorized(_)) => return Err(invalid()),
                Err(e) => return Err(e),
            };
            let issued = match &caller {
                Caller::Admin => state
                    .jwt
                    .issue_for_admin(auth::keys::admin_fingerprint(&state.admin_key)),
                Caller::Tenant {
                    tenant_id,
                    key_id,
                    role,
                    expires_at: None,
                    member: None,
                } => state.jwt.issue(*key_id, *tenant_id, *role),
                Caller::Tenant { .. } => return Err(invalid()),
            };
            let (token, exp) = issued.map_err(ApiError::internal)?;
            (token, caller, exp)
        }
        (None, Some(email), Some(password)) => {
            let (out, caller) = crate::members::login::log_in(
                &state,
                &peer,
                crate::members::login::LoginRequest {
                    tenant_id: b.tenant_id,
                    email,
                    password,
                },
            )
            .await?;
            let exp = u64::try_from(out.expires_at.timestamp()).unwrap_or(0);
            (out.token, caller, exp)
        }
        (None, None, _) | (None, Some(_), None) => {
            return Err(ApiError::validation(
                "email",
                "give an email and a password, or an api_key",
            ));
        }
        _ => {
            return Err(ApiError::validation(
                "api_key",
                "give either an api_key or an email and a password, not both",
            ));
        }
    };
    let csrf = hex::encode(rand::random::<[u8; 32]>());
    let ttl = state.jwt.ttl_secs();
    let mut body = who(&caller, Some(exp));
    body.csrf_token = Some(csrf.clone());
    Ok(HttpResponse::Ok()
        .cookie(cookie(&req, TOKEN_COOKIE, token, ttl))
        .cookie(cookie(&req, CSRF_COOKIE, csrf, ttl))
        .json(body))
}

/// Log out: the browser forgets both cookies.
#[post("/dashboard/logout")]
async fn logout(req: HttpRequest) -> HttpResponse {
    let mut res = HttpResponse::NoContent();
    for name in [TOKEN_COOKIE, CSRF_COOKIE] {
        let mut c = cookie(&req, name, String::new(), 0);
        c.make_removal();
        res.cookie(c);
    }
    res.finish()
}

/// Who the login cookie names, and until when; 401 when there is none or it has expired.
#[get("/dashboard/me")]
async fn me(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let token = req
        .cookie(TOKEN_COOKIE)
        .ok_or(ApiError::Unauthorized("not logged in"))?;
    let caller = auth::authenticate(&state, token.value()).await?;
    // Only a token reaches here (`authenticate` took it as one), so its claims can be read;
    // the admin's caller does not carry its expiry.
    let exp = state.jwt.verify(token.value()).ok().map(|c| c.exp);
    let mut body = who(&caller, exp);
    body.csrf_token = req.cookie(CSRF_COOKIE).map(|c| c.value().to_owned());
    Ok(HttpResponse::Ok().json(body))
}
