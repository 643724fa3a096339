//! `GET /api/v1/audit-log`: a tenant's audited requests, newest first, filtered by actor,
//! action and time.

use actix_web::http::Method;
use actix_web::{HttpResponse, get, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::http::openapi::CommonErrors;
use crate::http::pagination::{Page, parse_limit};
use crate::schema::audit_log;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// `admin`, `key:<id>`, `member:<id>`, or an id alone.
    pub actor: Option<String>,
    /// A method (`DELETE`), a route pattern (`/api/v1/flows/{flow_id}`), or both
    /// (`DELETE /api/v1/flows/{flow_id}`).
    pub action: Option<String>,
    /// The id the path named.
    pub object_id: Option<String>,
    /// RFC 3339; entries at or after.
    pub since: Option<String>,
    /// RFC 3339; entries before.
    pub until: Option<String>,
    /// The admin's filter on one tenant (tenants always see only their own).
    pub tenant_id: Option<Uuid>,
    /// 1 to 500 (default 50).
    #[param(value_type = Option<u32>)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, Queryable, Selectable, ToSchema)]
#[diesel(table_name = audit_log)]
pub struct AuditEntryOut {
    pub id: i64,
    pub tenant_id: Option<Uuid>,
    /// `key`, `member` or `admin`.
    pub actor_kind: String,
    pub actor_id: Option<Uuid>,
    pub method: String,
    /// The route pattern, e.g. `/api/v1/flows/{flow_id}`.
    pub route: String,
    pub object_id: Option<String>,
    pub status: i16,
    pub request_id: Option<String>,
    pub at: DateTime<Utc>,
}

fn time(field: &str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.map(|t| {
        DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| ApiError::validation(field, "must be an RFC 3339 time"))
    })
    .transpose()
}

/// The audit log, newest first.
#[utoipa::path(tag = "audit", params(AuditQuery), responses((status = 200, description = "Audited requests, newest first", body = Page<AuditEntryOut>), CommonErrors), security(("api_key" = [])))]
#[get("/audit-log")]
pub async fn list_audit_log(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = parse_limit(query.limit.as_deref())?;
    let mut q = audit_log::table
        .order(audit_log::id.desc())
        .limit(i64::from(limit) + 1)
        .select(AuditEntryOut::as_select())
        .into_boxed();
    match (&caller, query.tenant_id) {
        (Caller::Tenant { tenant_id, .. }, Some(t)) if *tenant_id != t => {
            return Err(ApiError::NotFound("tenant"));
        }
        (Caller::Tenant { tenant_id, .. }, _) => q = q.filter(audit_log::tenant_id.eq(*tenant_id)),
        (Caller::Admin, Some(t)) => q = q.filter(audit_log::tenant_id.eq(t)),
        (Caller::Admin, None) => {}
    }
    if let Some(actor) = query.actor.as_deref() {
        let (kind, id) = match actor.split_once(':') {
            Some((kind, id)) => (Some(kind), Some(id)),
            None if actor == "admin" => (Some("admin"), None),
            None => (None, Some(actor)),
        };
        if let Some(kind) = kind {
            if !matches!(kind, "admin" | "key" | "member") {
                return Err(ApiError::validation(
                    "actor",
                    "must be admin, key:<id>, member:<id> or an id",
                ));
            }
            q = q.filter(audit_log::actor_kind.eq(kind.to_owned()));
        }
        if let Some(id) = id {
            let id = Uuid::parse_str(id)
                .map_err(|_| ApiError::validation("actor", "names an id that is not a UUID"))?;
            q = q.filter(audit_log::actor_id.eq(id));
        }
    }
    if let Some(action) = query.action.as_deref().map(str::trim) {
        let (method, route) = match action.split_once(' ') {
            Some((m, r)) => (Some(m), Some(r.trim())),
            None if action.starts_with('/') => (None, Some(action)),
            None => (Some(action), None),
        };
        if let Some(m) = method {
            let m = m.to_ascii_uppercase();
            if Method::from_bytes(m.as_bytes()).is_err() || m.is_empty() {
                return Err(ApiError::validation("action", "names no HTTP method"));
            }
            q = q.filter(audit_log::method.eq(m));
        }
        if let Some(r) = route {
            q = q.filter(audit_log::route.eq(r.to_owned()));
        }
    }
    if let Some(o) = &query.object_id {
        q = q.filter(audit_log::object_id.eq(o.clone()));
    }
    if let Some(t) = time("since", query.since.as_deref())? {
        q = q.filter(audit_log::at.ge(t));
    }
    if let Some(t) = time("until", query.until.as_deref())? {
        q = q.filter(audit_log::at.lt(t));
    }
    if let Some(c) = query.cursor.as_deref() {
        let before: i64 = c
            .parse()
            .map_err(|_| ApiError::validation("cursor", "is not a cursor from this API"))?;
        q = q.filter(audit_log::id.lt(before));
    }
    let mut conn = state.db.get().await?;
    let rows: Vec<AuditEntryOut> = q.load(&mut conn).await?;
    Ok(HttpResponse::Ok().json(Page::from_overfetched(rows, limit, |e| e.id.to_string())))
}

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(list_audit_log);
}
