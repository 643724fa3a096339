//! `POST /api/v1/auth/token`: trade an API key for a short-lived JWT.

use actix_web::{HttpRequest, HttpResponse, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Caller, authenticate_from};
use crate::app::AppState;
use crate::error::ApiError;
use crate::http::json::ValidJson;
use crate::http::openapi::CommonErrors;
use crate::ratelimit::{self, RouteClass};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub api_key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Trade a tenant API key for a JWT (HS256, at most one hour). Limited per client address.
#[utoipa::path(
    tag = "auth",
    request_body = TokenRequest,
    responses((status = 200, description = "A token", body = TokenResponse), CommonErrors)
)]
#[post("/token")]
pub async fn issue_token(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: ValidJson<TokenRequest>,
) -> Result<HttpResponse, ApiError> {
    // Unauthenticated, so limited by the peer address.
    let peer = super::peer_of(&req);
    ratelimit::check(&state, &format!("ip:{peer}"), RouteClass::Auth).await?;
    let body = body.into_inner();
    if body.api_key.is_empty() {
        return Err(ApiError::validation("api_key", "must not be empty"));
    }
    // Only tenant API keys are traded: not the admin key, and not a token for a fresh token.
    if super::keys::parse(&body.api_key).is_none() {
        return Err(ApiError::Unauthorized("invalid API key"));
    }
    match authenticate_from(&state, &peer, &body.api_key).await? {
        Caller::Tenant {
            tenant_id,
            key_id,
            role,
            ..
        } => {
            let (token, exp) = state
                .jwt
                .issue(key_id, tenant_id, role)
                .map_err(ApiError::internal)?;
            let expires_at = DateTime::<Utc>::from_timestamp(i64::try_from(exp).unwrap_or(0), 0)
                .unwrap_or_else(Utc::now);
            Ok(HttpResponse::Ok().json(TokenResponse { token, expires_at }))
        }
        Caller::Admin => Err(ApiError::Unauthorized("invalid API key")),
    }
}
