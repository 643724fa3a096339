//! `POST /api/v1/auth/login`: a member's email and password for a token.
//!
//! Every failure is the same 401 `invalid_credentials` after the same work: an unknown email
//! is checked against a decoy hash, so the answer's timing does not tell whether the email
//! exists. Failures are counted per client address and per email; past
//! `rate_limit.failed_auth` in its window, that address or email is locked out (429) until
//! the window ends, on every node.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::store::{self, MemberRow};
use super::{MemberOut, normalize_email, passwords};
use crate::app::AppState;
use crate::auth::permissions::MemberRole;
use crate::error::{ApiError, ErrorCode};
use crate::http::json::ValidJson;
use crate::http::openapi::CommonErrors;
use crate::ratelimit::{self, RouteClass};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Needed only when the email belongs to members of several tenants.
    pub tenant_id: Option<Uuid>,
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    /// A JWT naming the member; send it as `Authorization: Bearer`.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub member: MemberOut,
}

fn invalid() -> ApiError {
    ApiError::Rejected {
        status: StatusCode::UNAUTHORIZED,
        code: ErrorCode::InvalidCredentials,
        message: "the email or the password is wrong".into(),
    }
}

/// Log in as a member.
#[utoipa::path(tag = "auth", request_body = LoginRequest, responses((status = 200, description = "A token for the member", body = LoginResponse), CommonErrors))]
#[post("/login")]
pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: ValidJson<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    let peer = crate::auth::peer_of(&req);
    let (answer, _) = log_in(&state, &peer, body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(answer))
}

/// Checks a member's email and password (limits and lockouts included) and issues their
/// token: the API's login and the dashboard's. Also returns the caller the token names.
pub async fn log_in(
    state: &AppState,
    peer: &str,
    b: LoginRequest,
) -> Result<(LoginResponse, crate::auth::Caller), ApiError> {
    ratelimit::check(state, &format!("ip:{peer}"), RouteClass::Auth).await?;
    // A malformed email is not a member's: the same answer as a wrong password.
    let email = normalize_email(&b.email).unwrap_or_default();
    if b.password.chars().count() > passwords::MAX_LEN {
        return Err(ApiError::validation(
            "password",
            format!("must be at most {} characters", passwords::MAX_LEN),
        ));
    }
    let subjects = vec![format!("ip:{peer}"), format!("login:{email}")];
    ratelimit::refuse_locked_out(state, &subjects).await?;
    let candidates = if email.is_empty() {
        Vec::new()
    } else {
        let mut conn = state.db.get().await?;
        store::by_email(&mut conn, &email, b.tenant_id).await?
    };
    let mut matched: Vec<MemberRow> = Vec::new();
    if candidates.is_empty() {
        passwords::verify(b.password.clone(), None).await?;
    }
    for c in candidates {
        if passwords::verify(b.password.clone(), Some(c.password_hash.clone())).await?
            && !c.disabled
        {
            matched.push(c);
        }
    }
    let member = match matched.len() {
        1 => matched.remove(0),
        0 => {
            return Err(ratelimit::count_auth_failure(state, &subjects)
                .await
                .unwrap_or_else(invalid));
        }
        _ => {
            return Err(ApiError::validation(
                "tenant_id",
                "this email logs in to several tenants: name the tenant",
            ));
        }
    };
    let role = MemberRole::parse(&member.role).unwrap_or(MemberRole::Viewer);
    let (token, exp) = state
        .jwt
        .issue_for_member(
            member.id,
            member.tenant_id,
            role,
            u32::try_from(member.credentials_version).unwrap_or(0),
        )
        .map_err(ApiError::internal)?;
    {
        let mut conn = state.db.get().await?;
        store::touch_login(&mut conn, member.id).await?;
    }
    let caller = crate::auth::Caller::Tenant {
        tenant_id: member.tenant_id,
        key_id: member.id,
        role: crate::auth::Role::for_member(role),
        member: Some(crate::auth::MemberCaller {
            id: member.id,
            role,
        }),
        expires_at: Some(exp),
    };
    state.audit.record(crate::audit::AuditEntry::new(
        &caller,
        "POST",
        "/api/v1/auth/login",
        200,
    ));
    let expires_at = DateTime::<Utc>::from_timestamp(i64::try_from(exp).unwrap_or(0), 0)
        .unwrap_or_else(Utc::now);
    Ok((
        LoginResponse {
            token,
            expires_at,
            member: MemberOut::from(&member),
        },
        caller,
    ))
}
