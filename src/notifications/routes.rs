//! The notification routes: a reader's list, unread count, read marks and dismissals, and the
//! admin's notifications to one tenant or all.

use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types;
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{NewNotification, NotificationOut, NotificationRow, notify};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::http::json::ValidJson;
use crate::http::openapi::CommonErrors;
use crate::http::pagination::{Page, TimeCursor, parse_limit};

/// Who reads: the tenant (for the admin, the one it names) and the reader's id (a member's or
/// an API key's; the admin reads as nobody in particular). A member sees the tenant's
/// notifications and their own; an API key sees all of the tenant's.
struct Reader {
    tenant: Option<Uuid>,
    reader: Uuid,
    member: Option<Uuid>,
}

fn reader_of(caller: &Caller, tenant: Option<Uuid>) -> Result<Reader, ApiError> {
    Ok(match caller {
        Caller::Admin => Reader {
            tenant,
            reader: Uuid::nil(),
            member: None,
        },
        Caller::Tenant {
            tenant_id,
            key_id,
            member,
            ..
        } => {
            if tenant.is_some_and(|t| t != *tenant_id) {
                return Err(ApiError::NotFound("tenant"));
            }
            Reader {
                tenant: Some(*tenant_id),
                reader: *key_id,
                member: member.map(|m| m.id),
            }
        }
    })
}

/// The notifications a reader sees, as SQL over `notifications n` (binds $1 tenant, $2 reader,
/// $3 member): not expired, not dismissed by them.
const VISIBLE: &str = "\
    (n.tenant_id IS NULL OR $1::uuid IS NULL OR n.tenant_id = $1) \
    AND ($3::uuid IS NULL OR n.member_id IS NULL OR n.member_id = $3) \
    AND (n.expires_at IS NULL OR n.expires_at > now()) \
    AND NOT EXISTS (SELECT 1 FROM notification_reads r WHERE r.notification_id = n.id \
                    AND r.reader_id = $2 AND r.dismissed_at IS NOT NULL)";

#[derive(QueryableByName)]
struct Listed {
    #[diesel(sql_type = sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Uuid>)]
    tenant_id: Option<Uuid>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Uuid>)]
    member_id: Option<Uuid>,
    #[diesel(sql_type = sql_types::Text)]
    kind: String,
    #[diesel(sql_type = sql_types::Text)]
    level: String,
    #[diesel(sql_type = sql_types::Text)]
    title: String,
    #[diesel(sql_type = sql_types::Text)]
    body: String,
    #[diesel(sql_type = sql_types::Jsonb)]
    data: serde_json::Value,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    source: Option<String>,
    #[diesel(sql_type = sql_types::Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Timestamptz>)]
    expires_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = sql_types::Bool)]
    read: bool,
}

impl Listed {
    fn out(&self) -> NotificationOut {
        let row = NotificationRow {
            id: self.id,
            tenant_id: self.tenant_id,
            member_id: self.member_id,
            kind: self.kind.clone(),
            level: self.level.clone(),
            title: self.title.clone(),
            body: self.body.clone(),
            data: self.data.clone(),
            source: self.source.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
        };
        NotificationOut::new(&row, self.read)
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NotificationQuery {
    /// `true`: only unread ones.
    pub unread: Option<bool>,
    /// The admin's: one tenant's (else every tenant's).
    pub tenant_id: Option<Uuid>,
    /// 1 to 500 (default 50).
    #[param(value_type = Option<u32>)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// The caller's notifications, newest first.
#[utoipa::path(tag = "notifications", params(NotificationQuery), responses((status = 200, description = "Notifications, newest first", body = Page<NotificationOut>), CommonErrors), security(("api_key" = [])))]
#[get("/notifications")]
pub async fn list_notifications(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<NotificationQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = parse_limit(query.limit.as_deref())?;
    let cursor = TimeCursor::parse(query.cursor.as_deref())?;
    let (at, key) =
        match &cursor {
            Some(c) => (
                Some(c.at),
                Some(c.key.parse::<Uuid>().map_err(|_| {
                    ApiError::validation("cursor", "is not a cursor from this API")
                })?),
            ),
            None => (None, None),
        };
    let r = reader_of(&caller, query.tenant_id)?;
    let mut conn = state.db.get().await?;
    let rows: Vec<Listed> = diesel::sql_query(format!(
        "SELECT n.*, EXISTS (SELECT 1 FROM notification_reads r WHERE r.notification_id = n.id \
                AND r.reader_id = $2 AND r.read_at IS NOT NULL) AS read \
         FROM notifications n WHERE {VISIBLE} \
           AND ($4::timestamptz IS NULL OR (n.created_at, n.id) < ($4, $5)) \
           AND (NOT $7 OR NOT EXISTS (SELECT 1 FROM notification_reads r \
                WHERE r.notification_id = n.id AND r.reader_id = $2 AND r.read_at IS NOT NULL)) \
         ORDER BY n.created_at DESC, n.id DESC LIMIT $6"
    ))
    .bind::<sql_types::Nullable<sql_types::Uuid>, _>(r.tenant)
    .bind::<sql_types::Uuid, _>(r.reader)
    .bind::<sql_types::Nullable<sql_types::Uuid>, _>(r.member)
    .bind::<sql_types::Nullable<sql_types::Timestamptz>, _>(at)
    .bind::<sql_types::Nullable<sql_types::Uuid>, _>(key)
    .bind::<sql_types::BigInt, _>(i64::from(limit) + 1)
    .bind::<sql_types::Bool, _>(query.unread.unwrap_or(false))
    .load(&mut conn)
    .await?;
    let page = Page::from_overfetched(rows, limit, |l| TimeCursor::encode(l.created_at, l.id));
    Ok(HttpResponse::Ok().json(page.map(Listed::out)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UnreadCount {
    pub count: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = sql_types::BigInt)]
    n: i64,
}

/// How many notifications the caller has not read.
#[utoipa::path(tag = "notifications", responses((status = 200, description = "Unread notifications", body = UnreadCount), CommonErrors), security(("api_key" = [])))]
#[get("/notifications/unread-count")]
pub async fn unread_count(
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let r = reader_of(&caller, None)?;
    let mut conn = state.db.get().await?;
    let c: Count = diesel::sql_query(format!(
        "SELECT count(*) AS n FROM notifications n WHERE {VISIBLE} \
           AND NOT EXISTS (SELECT 1 FROM notification_reads r WHERE r.notification_id = n.id \
                           AND r.reader_id = $2 AND r.read_at IS NOT NULL)"
    ))
    .bind::<sql_types::Nullable<sql_types::Uuid>, _>(r.tenant)
    .bind::<sql_types::Uuid, _>(r.reader)
    .bind::<sql_types::Nullable<sql_types::Uuid>, _>(r.member)
    .get_result(&mut conn)
    .await?;
    Ok(HttpResponse::Ok().json(UnreadCount { count: c.n }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct NotificationPath {
    pub notification_id: Uuid,
}

/// One notification the caller sees (another tenant's or member's is a 404).
async fn visible(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<(Reader, NotificationOut), ApiError> {
    let r = reader_of(caller, None)?;
    let mut conn = state.db.get().await?;
    let row: Option<Listed> = diesel::sql_query(format!(
        "SELECT n.*, EXISTS (SELECT 1 FROM notification_reads r WHERE r.notification_id = n.id \
                AND r.reader_id = $2 AND r.read_at IS NOT NULL) AS read \
         FROM notifications n WHERE n.id = $4 AND {VISIBLE}"
    ))
    .bind::<sql_types::Nullable<sql_types::Uuid>, _>(r.tenant)
    .bind::<sql_types::Uuid, _>(r.reader)
    .bind::<sql_types::Nullable<sql_types::Uuid>, _>(r.member)
    .bind::<sql_types::Uuid, _>(id)
    .get_result(&mut conn)
    .await
    .optional()?;
    let row = row.ok_or(ApiError::NotFound("notification"))?;
    Ok((r, row.out()))
}

#[utoipa::path(tag = "notifications", params(NotificationPath), responses((status = 200, description = "The notification", body = NotificationOut), CommonErrors), security(("api_key" = [])))]
#[get("/notifications/{notification_id}")]
pub async fn get_notification(
    caller: Caller,
    state: web::Data<AppState>,
    // A string, so that `GET /notifications/read-all` is that route's 405, not a 404.
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = crate::http::id_or_refusal(&req, &path, "notification")?;
    let (_, n) = visible(&state, &caller, id).await?;
    Ok(HttpResponse::Ok().json(n))
}

/// Marks for one reader: read or dismissed.
async fn mark(state: &AppState, reader: Uuid, ids: &[Uuid], hide: bool) -> Result<(), ApiError> {
    let mut conn = state.db.get().await?;
    let column = if hide { "dismissed_at" } else { "read_at" };
    diesel::sql_query(format!(
        "INSERT INTO notification_reads (notification_id, reader_id, {column}) \
         SELECT unnest($1::uuid[]), $2, now() \
         ON CONFLICT (reader_id, notification_id) DO UPDATE \
         SET {column} = coalesce(notification_reads.{column}, now())"
    ))
    .bind::<sql_types::Array<sql_types::Uuid>, _>(ids)
    .bind::<sql_types::Uuid, _>(reader)
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// Mark a notification read (for the caller).
#[utoipa::path(tag = "notifications", params(NotificationPath), responses((status = 200, description = "The notification", body = NotificationOut), CommonErrors), security(("api_key" = [])))]
#[patch("/notifications/{notification_id}/read")]
pub async fn mark_read(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<NotificationPath>,
) -> Result<HttpResponse, ApiError> {
    let (r, mut n) = visible(&state, &caller, path.notification_id).await?;
    mark(&state, r.reader, &[n.id], false).await?;
    n.read = true;
    Ok(HttpResponse::Ok().json(n))
}

/// The caller's visible notification ids (for the bulk marks).
async fn all_visible(state: &AppState, r: &Reader) -> Result<Vec<Uuid>, ApiError> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = sql_types::Uuid)]
        id: Uuid,
    }
    let mut conn = state.db.get().await?;
    let ids: Vec<Id> = diesel::sql_query(format!(
        "SELECT n.id FROM notifications n WHERE {VISIBLE} ORDER BY n.created_at DESC LIMIT 10000"
    ))
    .bind::<sql_types::Nullable<sql_types::Uuid>, _>(r.tenant)
    .bind::<sql_types::Uuid, _>(r.reader)
    .bind::<sql_types::Nullable<sql_types::Uuid>, _>(r.member)
    .load(&mut conn)
    .await?;
    Ok(ids.into_iter().map(|i| i.id).collect())
}

/// Mark every notification read (for the caller).
#[utoipa::path(tag = "notifications", responses((status = 200, description = "How many were marked", body = UnreadCount), CommonErrors), security(("api_key" = [])))]
#[post("/notifications/read-all")]
pub async fn read_all(
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let r = reader_of(&caller, None)?;
    let ids = all_visible(&state, &r).await?;
    mark(&state, r.reader, &ids, false).await?;
    Ok(HttpResponse::Ok().json(UnreadCount {
        count: ids.len() as i64,
    }))
}

/// Dismiss a notification (for the caller; others still see it).
#[utoipa::path(tag = "notifications", params(NotificationPath), responses((status = 204, description = "Dismissed"), CommonErrors), security(("api_key" = [])))]
#[delete("/notifications/{notification_id}")]
pub async fn dismiss(
    caller: Caller,
    state: web::Data<AppState>,
    // A string, so that `DELETE /notifications/unread-count` is that route's 405, not a 404.
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = crate::http::id_or_refusal(&req, &path, "notification")?;
    let (r, n) = visible(&state, &caller, id).await?;
    mark(&state, r.reader, &[n.id], true).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Dismiss every notification (for the caller).
#[utoipa::path(tag = "notifications", responses((status = 204, description = "Dismissed"), CommonErrors), security(("api_key" = [])))]
#[delete("/notifications")]
pub async fn dismiss_all(
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let r = reader_of(&caller, None)?;
    let ids = all_visible(&state, &r).await?;
    mark(&state, r.reader, &ids, true).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminNotification {
    /// One tenant; without it, every tenant.
    pub tenant_id: Option<Uuid>,
    pub title: String,
    pub body: String,
    /// `info`, `warning` or `critical`.
    pub level: String,
    /// Removed after this.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Send a notification to one tenant's members, or to every tenant's.
#[utoipa::path(tag = "admin", request_body = AdminNotification, responses((status = 201, description = "The notification", body = NotificationOut), CommonErrors), security(("api_key" = [])))]
#[post("/admin/notifications")]
pub async fn admin_notify(
    caller: Caller,
    state: web::Data<AppState>,
    body: ValidJson<AdminNotification>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let b = body.into_inner();
    let level = match b.level.as_str() {
        "info" => "info",
        "warning" => "warning",
        "critical" => "critical",
        _ => {
            return Err(ApiError::validation(
                "level",
                "must be info, warning or critical",
            ));
        }
    };
    let title = crate::crm::name("title", &b.title)?;
    if b.body.chars().count() > 5_000 {
        return Err(ApiError::validation(
            "body",
            "must be at most 5000 characters",
        ));
    }
    if b.expires_at.is_some_and(|e| e <= Utc::now()) {
        return Err(ApiError::validation("expires_at", "must be in the future"));
    }
    if let Some(t) = b.tenant_id {
        let mut conn = state.db.get().await?;
        if crate::tenants::store::get_tenant(&mut conn, t)
            .await?
            .is_none()
        {
            return Err(ApiError::NotFound("tenant"));
        }
    }
    let row = notify(
        &state,
        NewNotification {
            tenant_id: b.tenant_id,
            member_id: None,
            kind: "admin".into(),
            level,
            title,
            body: b.body,
            data: json!({}),
            source: None,
            expires_at: b.expires_at,
        },
    )
    .await
    .map_err(ApiError::from_store)?
    .ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!(
            "a notification without a source conflicted"
        ))
    })?;
    Ok(HttpResponse::Created().json(NotificationOut::new(&row, false)))
}

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(list_notifications)
        .service(unread_count)
        .service(read_all)
        .service(dismiss_all)
        .service(get_notification)
        .service(mark_read)
        .service(dismiss)
        .service(admin_notify);
}
