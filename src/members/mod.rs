//! A tenant's people: members with an email, a password (Argon2id) and a role. They log in
//! (`POST /api/v1/auth/login`) for a token of the same kind as `/auth/token`'s, naming them,
//! and act with their role (`crate::auth::permissions`). A member deleted, disabled, given
//! another role or a new password loses every token at once, on every node (the credential
//! cache hears it from Postgres).

pub mod login;
pub mod passwords;
pub mod store;

use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use self::store::MemberRow;
use crate::app::AppState;
use crate::auth::Caller;
use crate::auth::permissions::MemberRole;
use crate::error::{ApiError, ErrorCode};
use crate::http::json::ValidJson;
use crate::http::openapi::CommonErrors;
use crate::http::pagination::{ListQuery, Page};
use crate::schema::members;

/// A member as the API shows them (never the password or its hash).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MemberOut {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub email: String,
    pub name: String,
    pub role: MemberRole,
    pub disabled: bool,
    pub last_login_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&MemberRow> for MemberOut {
    fn from(r: &MemberRow) -> MemberOut {
        MemberOut {
            id: r.id,
            tenant_id: r.tenant_id,
            email: r.email.clone(),
            name: r.name.clone(),
            role: MemberRole::parse(&r.role).unwrap_or(MemberRole::Viewer),
            disabled: r.disabled,
            last_login_at: r.last_login_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// An email as stored and looked up: trimmed, lower-cased, shaped like an address.
pub fn normalize_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let shaped = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if !shaped {
        return Err(ApiError::validation("email", "must be an email address"));
    }
    Ok(email)
}

fn validate_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::validation("name", "must be 1 to 200 characters"));
    }
    Ok(name.to_owned())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMember {
    /// The admin key names the tenant; a tenant's own callers leave it out.
    pub tenant_id: Option<Uuid>,
    pub email: String,
    pub name: String,
    pub role: MemberRole,
    /// 10 to 128 characters; stored as an Argon2id hash, never returned.
    pub password: String,
}

fn conflict(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::Conflict {
        code,
        message: message.into(),
    }
}

/// Add a member to the tenant (owners and the admin).
#[utoipa::path(tag = "members", request_body = CreateMember, responses((status = 201, description = "The member", body = MemberOut), CommonErrors), security(("api_key" = [])))]
#[post("/members")]
pub async fn create_member(
    caller: Caller,
    state: web::Data<AppState>,
    body: ValidJson<CreateMember>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let email = normalize_email(&b.email)?;
    let name = validate_name(&b.name)?;
    passwords::validate("password", &b.password)?;
    let tenant = crate::ai::tenant_of(&state, &caller, b.tenant_id).await?;
    let now = Utc::now();
    let row = MemberRow {
        id: Uuid::now_v7(),
        tenant_id: tenant,
        email,
        name,
        role: b.role.as_str().to_owned(),
        password_hash: passwords::hash(b.password).await?,
        disabled: false,
        credentials_version: 1,
        last_login_at: None,
        created_at: now,
        updated_at: now,
    };
    let mut conn = state.db.get().await?;
    let count: i64 = members::table
        .filter(members::tenant_id.eq(tenant))
        .count()
        .get_result(&mut conn)
        .await?;
    let max = i64::from(state.settings.auth.max_members_per_tenant);
    if count >= max {
        return Err(conflict(
            ErrorCode::QuotaExceeded,
            format!("a tenant may have at most {max} members"),
        ));
    }
    let saved = diesel::insert_into(members::table)
        .values(&row)
        .returning(MemberRow::as_returning())
        .get_result(&mut conn)
        .await
        .map_err(|e| {
            if crate::db::is_unique_violation(&e) {
                conflict(
                    ErrorCode::MemberExists,
                    "a member of this tenant has this email",
                )
            } else {
                e.into()
            }
        })?;
    Ok(HttpResponse::Created().json(MemberOut::from(&saved)))
}

/// The tenant's members, oldest first.
#[utoipa::path(tag = "members", params(ListQuery), responses((status = 200, description = "Members", body = Page<MemberOut>), CommonErrors), security(("api_key" = [])))]
#[get("/members")]
pub async fn list_members(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let (limit, after) = query.parse()?;
    let mut q = members::table
        .order(members::id.asc())
        .limit(i64::from(limit) + 1)
        .select(MemberRow::as_select())
        .into_boxed();
    if let Caller::Tenant { tenant_id, .. } = caller {
        q = q.filter(members::tenant_id.eq(tenant_id));
    }
    if let Some(after) = after {
        q = q.filter(members::id.gt(after));
    }
    let mut conn = state.db.get().await?;
    let rows: Vec<MemberRow> = q.load(&mut conn).await?;
    let page = Page::from_overfetched(rows, limit, |m| m.id.to_string());
    Ok(HttpResponse::Ok().json(page.map(|m| MemberOut::from(m))))
}

fn member_of(caller: &Caller) -> Result<Uuid, ApiError> {
    match caller {
        Caller::Tenant {
            member: Some(m), ..
        } => Ok(m.id),
        _ => Err(ApiError::Forbidden(
            "only a member who logged in is someone: API keys and the admin are not members",
        )),
    }
}

/// The member who is calling.
#[utoipa::path(tag = "members", responses((status = 200, description = "The calling member", body = MemberOut), CommonErrors), security(("api_key" = [])))]
#[get("/members/me")]
pub async fn get_me(caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let id = member_of(&caller)?;
    let row = load(&state, &caller, id).await?;
    Ok(HttpResponse::Ok().json(MemberOut::from(&row)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    pub current_password: String,
    pub new_password: String,
}

/// Change one's own password. Every token issued before stops working, this one too: log
/// in again.
#[utoipa::path(tag = "members", request_body = ChangePassword, responses((status = 204, description = "Changed"), CommonErrors), security(("api_key" = [])))]
#[post("/members/me/password")]
pub async fn change_own_password(
    caller: Caller,
    state: web::Data<AppState>,
    body: ValidJson<ChangePassword>,
) -> Result<HttpResponse, ApiError> {
    let id = member_of(&caller)?;
    let b = body.into_inner();
    passwords::validate("new_password", &b.new_password)?;
    let row = load(&state, &caller, id).await?;
    if !passwords::verify(b.current_password, Some(row.password_hash)).await? {
        return Err(ApiError::validation(
            "current_password",
            "is not the member's password",
        ));
    }
    let hash = passwords::hash(b.new_password).await?;
    let change = state.credentials.change(row.tenant_id);
    let mut conn = state.db.get().await?;
    diesel::update(members::table.find(id))
        .set((
            members::password_hash.eq(hash),
            members::credentials_version.eq(members::credentials_version + 1),
            members::updated_at.eq(Utc::now()),
        ))
        .execute(&mut conn)
        .await?;
    state.credentials.changed(change).await;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct MemberPath {
    pub member_id: Uuid,
}

async fn load(state: &AppState, caller: &Caller, id: Uuid) -> Result<MemberRow, ApiError> {
    let mut conn = state.db.get().await?;
    let row = store::get(&mut conn, id)
        .await?
        .ok_or(ApiError::NotFound("member"))?;
    caller.require_tenant(row.tenant_id, "member")?;
    Ok(row)
}

#[utoipa::path(tag = "members", params(MemberPath), responses((status = 200, description = "The member", body = MemberOut), CommonErrors), security(("api_key" = [])))]
#[get("/members/{member_id}")]
pub async fn get_member(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<MemberPath>,
) -> Result<HttpResponse, ApiError> {
    let row = load(&state, &caller, path.member_id).await?;
    Ok(HttpResponse::Ok().json(MemberOut::from(&row)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMember {
    pub name: Option<String>,
    pub email: Option<String>,
    pub role: Option<MemberRole>,
    pub disabled: Option<bool>,
    /// Sets a new password (an owner resetting a member's); their tokens stop working.
    pub password: Option<String>,
}

/// Change a member: name, email, role, disabled, or reset the password. A change that would
/// leave the tenant without an enabled owner is refused (409 `last_owner`).
#[utoipa::path(tag = "members", params(MemberPath), request_body = UpdateMember, responses((status = 200, description = "The member", body = MemberOut), CommonErrors), security(("api_key" = [])))]
#[patch("/members/{member_id}")]
pub async fn update_member(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
    // The id is judged before the body: `PATCH /members/me` is a 405 whatever it carries.
    body: Result<ValidJson<UpdateMember>, ApiError>,
) -> Result<HttpResponse, ApiError> {
    let id = crate::http::id_or_refusal(&req, &path, "member")?;
    let b = body?.into_inner();
    let row = load(&state, &caller, id).await?;
    let name = b.name.as_deref().map(validate_name).transpose()?;
    let email = b.email.as_deref().map(normalize_email).transpose()?;
    if let Some(p) = &b.password {
        passwords::validate("password", p)?;
    }
    let hash = match b.password {
        Some(p) => Some(passwords::hash(p).await?),
        None => None,
    };
    let stays_owner = b
        .role
        .map_or(row.role == "owner", |r| r == MemberRole::Owner)
        && !b.disabled.unwrap_or(row.disabled);
    let was_owner = row.role == "owner" && !row.disabled;
    let change = state.credentials.change(row.tenant_id);
    let mut conn = state.db.get().await?;
    let saved = conn
        .transaction::<MemberRow, ApiError, _>(async move |conn| {
            if was_owner
                && !stays_owner
                && store::other_owners_locked(conn, row.tenant_id, row.id).await? == 0
            {
                return Err(conflict(
                    ErrorCode::LastOwner,
                    "the tenant's last owner cannot be demoted or disabled",
                ));
            }
            let mut next = row.clone();
            if let Some(n) = name {
                next.name = n;
            }
            if let Some(e) = email {
                next.email = e;
            }
            if let Some(r) = b.role {
                next.role = r.as_str().to_owned();
            }
            if let Some(d) = b.disabled {
                next.disabled = d;
            }
            if let Some(h) = hash {
                next.password_hash = h;
                next.credentials_version += 1;
            }
            diesel::update(members::table.find(row.id))
                .set((
                    members::name.eq(&next.name),
                    members::email.eq(&next.email),
                    members::role.eq(&next.role),
                    members::disabled.eq(next.disabled),
                    members::password_hash.eq(&next.password_hash),
                    members::credentials_version.eq(next.credentials_version),
                    members::updated_at.eq(Utc::now()),
                ))
                .returning(MemberRow::as_returning())
                .get_result(conn)
                .await
                .map_err(|e| {
                    if crate::db::is_unique_violation(&e) {
                        conflict(
                            ErrorCode::MemberExists,
                            "a member of this tenant has this email",
                        )
                    } else {
                        e.into()
                    }
                })
        })
        .await?;
    state.credentials.changed(change).await;
    Ok(HttpResponse::Ok().json(MemberOut::from(&saved)))
}

/// Remove a member; their tokens stop working at once.
#[utoipa::path(tag = "members", params(MemberPath), responses((status = 204, description = "Deleted"), CommonErrors), security(("api_key" = [])))]
#[delete("/members/{member_id}")]
pub async fn delete_member(
    caller: Caller,
    state: web::Data<AppState>,
    // A string, so that `DELETE /members/me` is that route's 405, not a 404.
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = crate::http::id_or_refusal(&req, &path, "member")?;
    let row = load(&state, &caller, id).await?;
    let change = state.credentials.change(row.tenant_id);
    let mut conn = state.db.get().await?;
    conn.transaction::<(), ApiError, _>(async move |conn| {
        if row.role == "owner"
            && !row.disabled
            && store::other_owners_locked(conn, row.tenant_id, row.id).await? == 0
        {
            return Err(conflict(
                ErrorCode::LastOwner,
                "the tenant's last owner cannot be deleted",
            ));
        }
        diesel::delete(members::table.find(row.id))
            .execute(conn)
            .await?;
        Ok(())
    })
    .await?;
    state.credentials.changed(change).await;
    Ok(HttpResponse::NoContent().finish())
}

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(create_member)
        .service(list_members)
        .service(get_me)
        .service(change_own_password)
        .service(get_member)
        .service(update_member)
        .service(delete_member);
}
