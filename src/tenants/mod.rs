//! Tenants and their API keys (admin; a tenant may read itself and manage its own keys).

pub mod store;

use actix_web::{HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::{Caller, Role, keys};
use crate::error::ApiError;
use crate::http::json::{OptionalJson, ValidJson};
use crate::http::openapi::CommonErrors;
use crate::http::pagination::{ListQuery, Page};
use store::{ApiKeyRow, TenantChanges, TenantRow};

pub use wagate_actors::tier::Tier;

/// A tier as stored; anything else in the column is a fault, not a silent default.
pub(crate) fn tier_from_db(s: &str) -> Result<Tier, ApiError> {
    Tier::parse(s)
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("unknown tier in database: {s}")))
}

/// A display name (tenants, API keys): 1 to 100 characters once trimmed, no control characters.
#[derive(Debug, Clone)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str, field: &str) -> Result<Self, ApiError> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(ApiError::validation(field, "must not be empty"));
        }
        if name.chars().count() > 100 {
            return Err(ApiError::validation(
                field,
                "must be at most 100 characters",
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(ApiError::validation(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub name: String,
    #[serde(default = "default_tier")]
    pub tier: Tier,
}

fn default_tier() -> Tier {
    Tier::Standard
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    pub name: Option<String>,
    pub tier: Option<Tier>,
    /// Messages each of its sessions sends per minute (1 to 6000); 0 returns to the tier's
    /// default.
    pub send_rate_per_minute: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub tier: Tier,
    /// Its own send rate per session and minute; absent: its tier's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_rate_per_minute: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<TenantRow> for Tenant {
    type Error = ApiError;
    fn try_from(r: TenantRow) -> Result<Self, ApiError> {
        Ok(Tenant {
            id: r.id,
            name: r.name,
            tier: tier_from_db(&r.tier)?,
            send_rate_per_minute: r.send_rate_per_minute,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// A new tenant with its first API key (shown only this once).
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantCreated {
    #[serde(flatten)]
    pub tenant: Tenant,
    pub api_key: String,
    pub api_key_id: Uuid,
}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    pub name: Option<String>,
    pub role: Option<Role>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub role: Role,
    /// The public part of the key (`wag_<prefix>_…`), to recognise it.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKeyRow> for ApiKey {
    fn from(r: ApiKeyRow) -> Self {
        ApiKey {
            id: r.id,
            tenant_id: r.tenant_id,
            name: r.name,
            role: Role::parse(&r.role).unwrap_or(Role::ReadOnly),
            prefix: r.prefix,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
        }
    }
}

/// A new API key; `key` is shown only this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyCreated {
    #[serde(flatten)]
    pub api_key: ApiKey,
    pub key: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantPath {
    pub tenant_id: Uuid,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ApiKeyPath {
    pub tenant_id: Uuid,
    pub key_id: Uuid,
}

fn new_key_row(tenant_id: Uuid, name: String, role: Role) -> (ApiKeyRow, String) {
    let generated = keys::generate();
    let now = Utc::now();
    let row = ApiKeyRow {
        id: Uuid::now_v7(),
        tenant_id,
        name,
        role: role.as_str().to_owned(),
        prefix: generated.prefix,
        secret_hash: generated.secret_hash,
        created_at: now,
        last_used_at: None,
        revoked_at: None,
    };
    (row, generated.plaintext)
}

/// Create a tenant and its first API key (owner role).
#[utoipa::path(
    tag = "tenants",
    request_body = CreateTenant,
    responses((status = 201, description = "Tenant created", body = TenantCreated), CommonErrors),
    security(("api_key" = []))
)]
#[post("/tenants")]
pub async fn create_tenant(
    caller: Caller,
    state: web::Data<AppState>,
    body: ValidJson<CreateTenant>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let body = body.into_inner();
    let name = DisplayName::parse(&body.name, "name")?;
    let now = Utc::now();
    let row = TenantRow {
        id: Uuid::now_v7(),
        name: name.0,
        tier: body.tier.as_str().to_owned(),
        created_at: now,
        updated_at: now,
        send_rate_per_minute: None,
    };
    let (key_row, plaintext) = new_key_row(row.id, "default".to_owned(), Role::Owner);
    let mut conn = state.db.get().await?;
    use diesel_async::AsyncConnection;
    let (tenant, key) = conn
        .transaction(async |conn| {
            let tenant = store::insert_tenant(conn, &row).await?;
            let key = store::insert_key(conn, &key_row).await?;
            Ok::<_, diesel::result::Error>((tenant, key))
        })
        .await?;
    tracing::info!(tenant_id = %tenant.id, tier = %tenant.tier, "tenant created");
    Ok(HttpResponse::Created().json(TenantCreated {
        tenant: tenant.try_into()?,
        api_key: plaintext,
        api_key_id: key.id,
    }))
}

/// List tenants (admin).
#[utoipa::path(
    tag = "tenants",
    params(ListQuery),
    responses((status = 200, description = "A page of tenants", body = Page<Tenant>), CommonErrors),
    security(("api_key" = []))
)]
#[get("/tenants")]
pub async fn list_tenants(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let (limit, after) = query.parse()?;
    let mut conn = state.db.get().await?;
    let rows = store::list_tenants(&mut conn, after, i64::from(limit) + 1).await?;
    let items = rows
        .into_iter()
        .map(Tenant::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HttpResponse::Ok().json(Page::from_overfetched(items, limit, |t| t.id.to_string())))
}

/// Get a tenant (the admin, or the tenant itself).
#[utoipa::path(
    tag = "tenants",
    params(TenantPath),
    responses((status = 200, description = "The tenant", body = Tenant), CommonErrors),
    security(("api_key" = []))
)]
#[get("/tenants/{tenant_id}")]
pub async fn get_tenant(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<TenantPath>,
) -> Result<HttpResponse, ApiError> {
    caller.require_tenant(path.tenant_id, "tenant")?;
    let mut conn = state.db.get().await?;
    let row = store::get_tenant(&mut conn, path.tenant_id)
        .await?
        .ok_or(ApiError::NotFound("tenant"))?;
    Ok(HttpResponse::Ok().json(Tenant::try_from(row)?))
}

/// Rename a tenant or change its tier (admin).
#[utoipa::path(
    tag = "tenants",
    params(TenantPath),
    request_body = UpdateTenant,
    responses((status = 200, description = "The updated tenant", body = Tenant), CommonErrors),
    security(("api_key" = []))
)]
#[patch("/tenants/{tenant_id}")]
pub async fn update_tenant(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<TenantPath>,
    body: ValidJson<UpdateTenant>,
) -> Result<HttpResponse, ApiError> {
    caller.require_tenant(path.tenant_id, "tenant")?;
    caller.require_admin()?;
    let body = body.into_inner();
    let changes = TenantChanges {
        name: body
            .name
            .as_deref()
            .map(|n| DisplayName::parse(n, "name"))
            .transpose()?
            .map(|n| n.0),
        tier: body.tier.map(|t| t.as_str().to_owned()),
    };
    let rate = match body.send_rate_per_minute {
        None => None,
        Some(0) => Some(None),
        Some(r @ 1..=6000) => Some(Some(r as i32)),
        Some(_) => {
            return Err(ApiError::validation(
                "send_rate_per_minute",
                "must be 1 to 6000 (0: the tier's default)",
            ));
        }
    };
    let mut conn = state.db.get().await?;
    let mut row = store::update_tenant(&mut conn, path.tenant_id, &changes)
        .await?
        .ok_or(ApiError::NotFound("tenant"))?;
    if let Some(rate) = rate {
        row = store::set_send_rate(&mut conn, path.tenant_id, rate)
            .await?
            .ok_or(ApiError::NotFound("tenant"))?;
    }
    drop(conn);
    if let Some(tier) = body.tier {
        // Live sessions move to the new tier's pool: same device, no QR.
        let moved =
            crate::sessions::lifecycle::move_tenant_sessions(state.sessions(), row.id, tier)
                .await?;
        if moved > 0 {
            tracing::info!(tenant_id = %row.id, tier = tier.as_str(), moved, "sessions moved to the new tier's pool");
        }
    }
    Ok(HttpResponse::Ok().json(Tenant::try_from(row)?))
}

/// Delete a tenant and everything it owns; its keys stop working at once (admin).
#[utoipa::path(
    tag = "tenants",
    params(TenantPath),
    responses((status = 204, description = "Deleted"), CommonErrors),
    security(("api_key" = []))
)]
#[delete("/tenants/{tenant_id}")]
pub async fn delete_tenant(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<TenantPath>,
) -> Result<HttpResponse, ApiError> {
    caller.require_tenant(path.tenant_id, "tenant")?;
    caller.require_admin()?;
    // Its sessions stop here first, and their keys go with it (they live outside the
    // tenant's cascade).
    let session_ids =
        crate::sessions::lifecycle::stop_tenant_sessions(state.sessions(), path.tenant_id).await?;
    let mut conn = state.db.get().await?;
    crate::sessions::store::delete_keys(&mut conn, &session_ids).await?;
    let change = state.credentials.change(path.tenant_id);
    if !store::delete_tenant(&mut conn, path.tenant_id).await? {
        return Err(ApiError::NotFound("tenant"));
    }
    drop(conn);
    state.credentials.changed(change).await;
    tracing::info!(tenant_id = %path.tenant_id, "tenant deleted");
    Ok(HttpResponse::NoContent().finish())
}

/// Create an API key for a tenant (the admin, or an owner key of that tenant).
#[utoipa::path(
    tag = "tenants",
    params(TenantPath),
    request_body(content = Option<CreateApiKey>, description = "Optional; no body makes a read-only key (the least privilege). A body that is there must be valid JSON"),
    responses((status = 201, description = "The key, shown once", body = ApiKeyCreated), CommonErrors),
    security(("api_key" = []))
)]
#[post("/tenants/{tenant_id}/api-keys")]
pub async fn create_api_key(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<TenantPath>,
    body: OptionalJson<CreateApiKey>,
) -> Result<HttpResponse, ApiError> {
    caller.require_tenant(path.tenant_id, "tenant")?;
    let body = body.into_inner().unwrap_or_default();
    let name = match body.name.as_deref() {
        Some(n) => DisplayName::parse(n, "name")?.0,
        None => "unnamed".to_owned(),
    };
    let mut conn = state.db.get().await?;
    store::get_tenant(&mut conn, path.tenant_id)
        .await?
        .ok_or(ApiError::NotFound("tenant"))?;
    // Without a role the key gets the least privilege: reading.
    let (row, plaintext) = new_key_row(path.tenant_id, name, body.role.unwrap_or(Role::ReadOnly));
    let row = store::insert_key(&mut conn, &row).await?;
    Ok(HttpResponse::Created().json(ApiKeyCreated {
        api_key: row.into(),
        key: plaintext,
    }))
}

/// List a tenant's API keys (no secrets).
#[utoipa::path(
    tag = "tenants",
    params(TenantPath),
    responses((status = 200, description = "The keys", body = Page<ApiKey>), CommonErrors),
    security(("api_key" = []))
)]
#[get("/tenants/{tenant_id}/api-keys")]
pub async fn list_api_keys(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<TenantPath>,
) -> Result<HttpResponse, ApiError> {
    caller.require_tenant(path.tenant_id, "tenant")?;
    let mut conn = state.db.get().await?;
    store::get_tenant(&mut conn, path.tenant_id)
        .await?
        .ok_or(ApiError::NotFound("tenant"))?;
    let items: Vec<ApiKey> = store::list_keys(&mut conn, path.tenant_id)
        .await?
        .into_iter()
        .map(ApiKey::from)
        .collect();
    Ok(HttpResponse::Ok().json(Page {
        items,
        next_cursor: None,
    }))
}

/// Revoke an API key: requests with it (and tokens traded for it) fail at once.
#[utoipa::path(
    tag = "tenants",
    params(ApiKeyPath),
    responses((status = 204, description = "Revoked"), CommonErrors),
    security(("api_key" = []))
)]
#[delete("/tenants/{tenant_id}/api-keys/{key_id}")]
pub async fn revoke_api_key(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<ApiKeyPath>,
) -> Result<HttpResponse, ApiError> {
    caller.require_tenant(path.tenant_id, "tenant")?;
    let mut conn = state.db.get().await?;
    let change = state.credentials.change(path.tenant_id);
    if !store::revoke_key(&mut conn, path.tenant_id, path.key_id).await? {
        return Err(ApiError::NotFound("api_key"));
    }
    drop(conn);
    state.credentials.changed(change).await;
    Ok(HttpResponse::NoContent().finish())
}

/// Tenants and their API keys.
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(create_tenant)
        .service(list_tenants)
        .service(get_tenant)
        .service(update_tenant)
        .service(delete_tenant)
        .service(create_api_key)
        .service(list_api_keys)
        .service(revoke_api_key);
}
