//! Who is calling: the admin (key from config) or a tenant (API key or a JWT traded for one).
//!
//! The [`auth_middleware`] resolves the caller once per request, enforces the key's role and the
//! caller's rate limit, and leaves a [`Caller`] in the request for handlers to extract.

pub mod cache;
pub mod jwt;
pub mod keys;
pub mod permissions;
pub mod token;

use std::future::{Ready, ready};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use self::cache::{CachedKey, CredentialKey};
use self::permissions::{Capability, MemberRole};
use crate::app::AppState;
use crate::error::ApiError;
use crate::ratelimit::{self, RouteClass};
use crate::tenants::store as tenant_store;

pub const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// What a tenant key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything within its own tenant.
    Owner,
    /// Reads only (GET); any change is 403.
    ReadOnly,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::ReadOnly => "read_only",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "read_only" => Some(Role::ReadOnly),
            _ => None,
        }
    }

    /// What a member's token says of them where only a key's role is read: a viewer reads
    /// only; every other role's limits are [`MemberRole::permits`]'.
    pub fn for_member(role: MemberRole) -> Role {
        match role {
            MemberRole::Viewer => Role::ReadOnly,
            _ => Role::Owner,
        }
    }
}

/// A member acting through their login token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberCaller {
    pub id: Uuid,
    pub role: MemberRole,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Tenant {
        tenant_id: Uuid,
        /// The credential's id: the API key's, or the member's for a member's login token.
        key_id: Uuid,
        role: Role,
        /// Set when a member logged in: their role decides what they may do.
        member: Option<MemberCaller>,
        /// When the credential stops being valid (a JWT's `exp`, Unix seconds); `None` for
        /// an API key, which is valid until revoked. A WebSocket closes at this moment.
        expires_at: Option<u64>,
    },
}

impl Caller {
    /// Admin-only actions: a tenant gets 403.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant { .. } => Err(ApiError::Forbidden("this action needs the admin key")),
        }
    }

    /// Resources owned by `tenant_id`: the admin and that tenant see them; any other tenant
    /// gets 404, exactly as if the resource did not exist, so existence never leaks.
    pub fn require_tenant(&self, tenant_id: Uuid, what: &'static str) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant { tenant_id: own, .. } if *own == tenant_id => Ok(()),
            Caller::Tenant { .. } => Err(ApiError::NotFound(what)),
        }
    }

    /// The caller's own tenant; `None` for the admin, who may act on any.
    pub fn tenant_id(&self) -> Option<Uuid> {
        match self {
            Caller::Admin => None,
            Caller::Tenant { tenant_id, .. } => Some(*tenant_id),
        }
    }

    pub fn rate_limit_subject(&self) -> String {
        match self {
            Caller::Admin => "admin".to_owned(),
            Caller::Tenant { tenant_id, .. } => format!("tenant:{tenant_id}"),
        }
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Caller>()
                .cloned()
                .ok_or(ApiError::Unauthorized("missing credentials")),
        )
    }
}

/// The credential a request presents: `Authorization: Bearer X` or `X-API-Key: X`.
fn presented_credential(req: &ServiceRequest) -> Option<String> {
    if let Some(v) = req.headers().get(&API_KEY_HEADER) {
        return v.to_str().ok().map(|s| s.trim().to_owned());
    }
    if let Some(auth) = req.headers().get(AUTHORIZATION) {
        let (scheme, value) = auth.to_str().ok()?.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| value.trim().to_owned());
    }
    // Browsers and WebSocket clients cannot set headers: a GET may carry a short-lived JWT
    // as `?token=`. Never an API key: those must not end up in URLs and access logs.
    if req.method() != Method::GET {
        return None;
    }
    let token = web::Query::<TokenQuery>::from_query(req.query_string())
        .ok()?
        .into_inner()
        .token?;
    keys::parse(&token).is_none().then_some(token)
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Resolves a credential to a caller. Every failure is 401 with the reason in the message.
/// A key verified before is found in the node's [`cache::CredentialCache`] (no database round
/// trip); its secret is still checked on every request.
pub async fn authenticate(state: &AppState, credential: &str) -> Result<Caller, ApiError> {
    if keys::secrets_equal(credential, &state.admin_key) {
        return Ok(Caller::Admin);
    }
    if let Some((prefix, secret)) = keys::parse(credential) {
        let cache_key = CredentialKey::Prefix(prefix.to_owned());
        let key = cached_key(state, &cache_key)
            .await?
            .filter(|key| keys::verify(secret, &key.secret_hash))
            .ok_or(ApiError::Unauthorized("invalid API key"))?;
        record_use(state, &cache_key, &key).await?;
        return Ok(Caller::Tenant {
            tenant_id: key.tenant_id,
            key_id: key.key_id,
            role: key.role,
            member: None,
            expires_at: None,
        });
    }
    let claims = state.jwt.verify(credential).map_err(|e| match e {
        jwt::TokenError::Expired => ApiError::Unauthorized("token expired"),
        jwt::TokenError::Invalid => ApiError::Unauthorized("invalid credentials"),
    })?;
    if let Some(fingerprint) = &claims.admin {
        return if keys::secrets_equal(fingerprint, &keys::admin_fingerprint(&state.admin_key)) {
            Ok(Caller::Admin)
        } else {
            Err(ApiError::Unauthorized(
                "the admin key has changed since this login: log in again",
            ))
        };
    }
    if let Some(member_id) = claims.member_id {
        // A member's token lives as long as the member stands unchanged: present, enabled,
        // with the password (credentials version) the token was issued under.
        let member = cached_key(state, &CredentialKey::Member(member_id))
            .await?
            .filter(|m| m.tenant_id == claims.tenant_id)
            .filter(|m| {
                m.member
                    .is_some_and(|(_, version)| Some(version) == claims.ver)
            })
            .ok_or(ApiError::Unauthorized(
                "the member was removed, disabled or changed password: log in again",
            ))?;
        let role = member.member.map_or(MemberRole::Viewer, |(role, _)| role);
        return Ok(Caller::Tenant {
            tenant_id: member.tenant_id,
            key_id: member_id,
            role: Role::for_member(role),
            member: Some(MemberCaller {
                id: member_id,
                role,
            }),
            expires_at: Some(claims.exp),
        });
    }
    // A token lives only as long as the key it was traded for.
    let key = cached_key(state, &CredentialKey::KeyId(claims.sub))
        .await?
        .filter(|key| key.tenant_id == claims.tenant_id)
        .ok_or(ApiError::Unauthorized("the token's API key was revoked"))?;
    Ok(Caller::Tenant {
        tenant_id: key.tenant_id,
        key_id: key.key_id,
        role: key.role,
        member: None,
        expires_at: Some(claims.exp),
    })
}

/// The active key a credential names, from the node's cache or else read from the store (and
/// cached); `None` when no active key has it.
async fn cached_key(
    state: &AppState,
    cache_key: &CredentialKey,
) -> Result<Option<CachedKey>, ApiError> {
    if let Some(key) = state.credentials.get(cache_key) {
        return Ok(Some(key));
    }
    let ticket = state.credentials.ticket();
    let mut conn = state.db.get().await?;
    if let CredentialKey::Member(id) = cache_key {
        let Some(row) = crate::members::store::find_active(&mut conn, *id).await? else {
            return Ok(None);
        };
        let role =
            MemberRole::parse(&row.role).ok_or(ApiError::Unauthorized("invalid credentials"))?;
        let member = CachedKey {
            tenant_id: row.tenant_id,
            key_id: row.id,
            role: Role::for_member(role),
            secret_hash: Vec::new(),
            last_used_at: None,
            member: Some((role, u32::try_from(row.credentials_version).unwrap_or(0))),
        };
        state
            .credentials
            .insert(ticket, cache_key.clone(), member.clone());
        return Ok(Some(member));
    }
    let (row, bad_role) = match cache_key {
        CredentialKey::Prefix(prefix) => (
            tenant_store::find_active_key_by_prefix(&mut conn, prefix).await?,
            "invalid API key",
        ),
        CredentialKey::KeyId(id) => (
            tenant_store::find_active_key(&mut conn, *id).await?,
            "invalid credentials",
        ),
        CredentialKey::Member(_) => return Ok(None),
    };
    let Some(row) = row else {
        return Ok(None);
    };
    let key = CachedKey {
        tenant_id: row.tenant_id,
        key_id: row.id,
        role: Role::parse(&row.role).ok_or(ApiError::Unauthorized(bad_role))?,
        secret_hash: row.secret_hash,
        last_used_at: row.last_used_at,
        member: None,
    };
    state
        .credentials
        .insert(ticket, cache_key.clone(), key.clone());
    Ok(Some(key))
}

/// Records a key's use at most once a minute, so most requests write nothing.
async fn record_use(
    state: &AppState,
    cache_key: &CredentialKey,
    key: &CachedKey,
) -> Result<(), ApiError> {
    let now = chrono::Utc::now();
    if key
        .last_used_at
        .is_some_and(|t| t > now - chrono::Duration::minutes(1))
    {
        return Ok(());
    }
    // Marked first: the requests that arrive meanwhile do not all write it too.
    state.credentials.touched(cache_key, now);
    let mut conn = state.db.get().await?;
    tenant_store::touch_key(&mut conn, key.key_id).await?;
    Ok(())
}

/// The client's address, for limits before authentication: the peer's, never
/// X-Forwarded-For, which anyone can set.
pub fn peer_of(req: &HttpRequest) -> String {
    req.peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// [`authenticate`] for a request from `peer`, with failures limited per client address and
/// per key prefix: once over the limit, every attempt from there is 429 until it ends.
pub async fn authenticate_from(
    state: &AppState,
    peer: &str,
    credential: &str,
) -> Result<Caller, ApiError> {
    let subjects = ratelimit::auth_failure_subjects(peer, Some(credential));
    ratelimit::refuse_locked_out(state, &subjects).await?;
    match authenticate(state, credential).await {
        Err(e @ ApiError::Unauthorized(_)) => Err(ratelimit::count_auth_failure(state, &subjects)
            .await
            .unwrap_or(e)),
        other => other,
    }
}

/// Middleware for the authenticated API: caller, role, rate limit. Failures are answered here
/// (not returned as `Err`) so the outer middlewares still add the request id and headers.
pub async fn auth_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let decision = match admit(&req).await {
        Ok((caller, decision)) => {
            req.extensions_mut().insert(caller);
            decision
        }
        Err(e) => return Ok(req.error_response(e).map_into_right_body()),
    };
    let mut res = next.call(req).await?.map_into_left_body();
    if let Some(d) = decision {
        let headers = res.headers_mut();
        headers.insert(
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderValue::from(d.limit),
        );
        headers.insert(
            HeaderName::from_static("x-ratelimit-remaining"),
            HeaderValue::from(d.remaining),
        );
    }
    Ok(res)
}

/// A method that changes nothing: what read-only callers may use and what needs no CSRF token.
fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The dashboard's login cookie, when the request presents no other credential. A browser
/// sends cookies by itself, so a change (any method but GET, HEAD, OPTIONS) must also prove
/// it comes from the dashboard's own page: the `X-CSRF-Token` header equal to the
/// `wagate_csrf` cookie, which only a page of this origin can read (double submit; the
/// cookies are SameSite=Strict as well), and no `Origin` but this server's own.
fn cookie_credential(req: &ServiceRequest) -> Result<Option<String>, ApiError> {
    let Some(token) = req.cookie(crate::dashboard::TOKEN_COOKIE) else {
        return Ok(None);
    };
    let refused = || ApiError::Rejected {
        status: actix_web::http::StatusCode::FORBIDDEN,
        code: crate::error::ErrorCode::CsrfTokenInvalid,
        message: "a change made with the dashboard's login cookie needs its X-CSRF-Token \
                  header, from this server's own page"
            .into(),
    };
    if let Some(origin) = req.headers().get(actix_web::http::header::ORIGIN) {
        let info = req.connection_info();
        let own = format!("{}://{}", info.scheme(), info.host());
        if origin.to_str().ok() != Some(own.as_str()) {
            return Err(refused());
        }
    }
    if !is_read(req.method()) {
        let header = req
            .headers()
            .get(crate::dashboard::CSRF_HEADER)
            .and_then(|v| v.to_str().ok());
        let cookie = req.cookie(crate::dashboard::CSRF_COOKIE);
        match (header, cookie) {
            (Some(h), Some(c)) if !h.is_empty() && keys::secrets_equal(h, c.value()) => {}
            _ => return Err(refused()),
        }
    }
    Ok(Some(token.value().to_owned()))
}

/// Who the caller is, whether its role allows the method, and whether its budget allows it.
async fn admit(req: &ServiceRequest) -> Result<(Caller, Option<crate::kv::Decision>), ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("application state missing")))?;
    let credential = match presented_credential(req) {
        Some(c) => c,
        None => cookie_credential(req)?.ok_or(ApiError::Unauthorized("missing credentials"))?,
    };
    let caller = authenticate_from(&state, &peer_of(req.request()), &credential).await?;
    match &caller {
        Caller::Tenant {
            member: Some(member),
            ..
        } => {
            let needed = permissions::required(req.method(), req.path());
            if !member.role.permits(needed) {
                return Err(ApiError::Forbidden(refusal(member.role, needed)));
            }
        }
        Caller::Tenant {
            role: Role::ReadOnly,
            ..
        } if !is_read(req.method()) => {
            return Err(ApiError::Forbidden("this API key is read-only"));
        }
        _ => {}
    }
    let class = RouteClass::classify(&caller, req.method(), req.path());
    let decision = ratelimit::check(&state, &caller.rate_limit_subject(), class).await?;
    Ok((caller, decision))
}

/// Why a member's role may not do what a request needs.
fn refusal(role: MemberRole, needed: Capability) -> &'static str {
    match (role, needed) {
        (MemberRole::Viewer, _) => "a viewer reads only",
        (_, Capability::Manage) => "managing members, API keys and the tenant needs the owner role",
        (_, Capability::Configure) => "configuring the tenant needs the admin or owner role",
        _ => "this needs the agent role or above",
    }
}

/// Trading a key for a token, and a member's login: the routes outside the authenticated
/// scope.
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(
        utoipa_actix_web::scope::scope("/api/v1/auth")
            .service(token::issue_token)
            .service(crate::members::login::login),
    );
}
