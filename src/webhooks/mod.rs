//! Webhooks: subscriptions per tenant or session, signed per the Standard Webhooks spec,
//! delivered from a Postgres outbox written in the same transaction as each event, retried
//! with backoff, then dead-lettered (listable and replayable).

pub mod signature;
pub mod store;
pub mod worker;

use diesel_async::AsyncPgConnection;

use actix_web::{HttpResponse, delete, get, patch, post, web};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::http::json::ValidJson;
use crate::http::openapi::CommonErrors;
use crate::http::pagination::{ListQuery, Page, TimeCursor, parse_limit};
use store::{DeliveryRow, WebhookChange, WebhookRow};

/// Event types a subscription may name (`[]` or absent: all of them).
pub const EVENT_TYPES: &[&str] = &[
    "session.qr",
    "session.paired",
    "session.connected",
    "session.disconnected",
    "session.reconnecting",
    "session.reconnect_failed",
    "session.logged_out",
    "session.stopped",
    "session.replaced",
    "session.qr_timeout",
    "session.health_check_failed",
    "message.received",
    "message.status",
    "message.dead_lettered",
    "error",
];

fn webhook_json(w: &WebhookRow, with_secret: bool) -> Value {
    let mut v = json!({
        "id": w.id, "tenant_id": w.tenant_id, "session_id": w.session_id, "url": w.url,
        "events": w.events, "enabled": w.enabled, "created_at": w.created_at, "updated_at": w.updated_at,
    });
    if with_secret {
        v["secret"] = json!(w.secret);
    }
    v
}

fn delivery_json(d: &DeliveryRow) -> Value {
    json!({
        "id": d.id, "webhook_id": d.webhook_id, "event_id": d.event_id, "event_type": d.event_type,
        "status": d.status, "attempts": d.attempts, "next_attempt_at": (d.status == "pending").then_some(d.next_attempt_at),
        "last_status_code": d.last_status_code, "last_error": d.last_error,
        "created_at": d.created_at, "delivered_at": d.delivered_at, "payload": d.payload,
    })
}

/// A tenant's endpoint URL, held to the egress policy (`field` names it in the error).
pub fn parse_url(raw: &str, allow_private: bool, field: &str) -> Result<String, ApiError> {
    crate::http::egress::check_url(raw, allow_private)
        .map(|url| url.to_string())
        .map_err(|why| {
            if allow_private {
                ApiError::validation(field, why)
            } else {
                ApiError::validation(field, format!("{why} (webhooks.allow_private_targets)"))
            }
        })
}

fn parse_events(events: Option<Vec<String>>) -> Result<Vec<String>, ApiError> {
    let events = events.unwrap_or_default();
    for (i, e) in events.iter().enumerate() {
        if !EVENT_TYPES.contains(&e.as_str()) {
            return Err(ApiError::validation(
                format!("events[{i}]"),
                format!(
                    "unknown event type {e:?}; known: {}",
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
    }
    let mut events = events;
    events.sort();
    events.dedup();
    Ok(events)
}

/// `POST /api/v1/webhooks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    pub url: String,
    /// Event types to deliver; empty or absent: all.
    pub events: Option<Vec<String>>,
    /// Only this session's events.
    pub session_id: Option<Uuid>,
    /// The tenant (admin key only).
    pub tenant_id: Option<Uuid>,
}

/// Subscribe an endpoint; the answer carries its signing secret.
#[utoipa::path(
    tag = "webhooks",
    request_body = CreateWebhook,
    responses((status = 201, description = "Created, with its secret"), CommonErrors),
    security(("api_key" = []))
)]
#[post("/webhooks")]
pub async fn create_webhook(
    caller: Caller,
    state: web::Data<AppState>,
    body: ValidJson<CreateWebhook>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let url = parse_url(
        &body.url,
        state.settings.webhooks.allow_private_targets,
        "url",
    )?;
    let events = parse_events(body.events)?;
    let tenant_id = match (&caller, body.session_id, body.tenant_id) {
        (_, Some(s), _) => {
            crate::sessions::load_for(&state, &caller, s)
                .await?
                .0
                .tenant_id
        }
        (Caller::Tenant { tenant_id, .. }, None, None) => *tenant_id,
        (Caller::Tenant { tenant_id, .. }, None, Some(t)) if *tenant_id == t => t,
        (Caller::Tenant { .. }, None, Some(_)) => return Err(ApiError::NotFound("tenant")),
        (Caller::Admin, None, Some(t)) => t,
        (Caller::Admin, None, None) => {
            return Err(ApiError::validation(
                "tenant_id",
                "the admin key must name the tenant",
            ));
        }
    };
    let now = Utc::now();
    let row = WebhookRow {
        id: Uuid::now_v7(),
        tenant_id,
        session_id: body.session_id,
        url,
        events,
        secret: signature::new_secret(),
        enabled: true,
        created_at: now,
        updated_at: now,
    };
    let mut conn = state.db.get().await?;
    if crate::tenants::store::get_tenant(&mut conn, tenant_id)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound("tenant"));
    }
    let stored = store::insert(&mut conn, &row).await?;
    Ok(HttpResponse::Created().json(webhook_json(&stored, true)))
}

/// A tenant's webhooks (the admin sees all).
#[utoipa::path(
    tag = "webhooks",
    params(ListQuery),
    responses((status = 200, description = "A page of webhooks"), CommonErrors),
    security(("api_key" = []))
)]
#[get("/webhooks")]
pub async fn list_webhooks(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let (limit, after) = query.parse()?;
    let tenant = match caller {
        Caller::Admin => None,
        Caller::Tenant { tenant_id, .. } => Some(tenant_id),
    };
    let mut conn = state.db.get().await?;
    let mut rows = store::list(&mut conn, tenant, after, i64::from(limit) + 1).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = more
        .then(|| rows.last().map(|w| w.id.to_string()))
        .flatten();
    let items: Vec<Value> = rows.iter().map(|w| webhook_json(w, false)).collect();
    Ok(HttpResponse::Ok().json(json!({"items": items, "next_cursor": next})))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct WebhookPath {
    pub webhook_id: Uuid,
}

async fn load(state: &AppState, caller: &Caller, id: Uuid) -> Result<WebhookRow, ApiError> {
    let mut conn = state.db.get().await?;
    let row = store::get(&mut conn, id)
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    caller.require_tenant(row.tenant_id, "webhook")?;
    Ok(row)
}

/// One webhook (without its secret).
#[utoipa::path(tag = "webhooks", params(WebhookPath), responses((status = 200, description = "The webhook"), CommonErrors), security(("api_key" = [])))]
#[get("/webhooks/{webhook_id}")]
pub async fn get_webhook(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<WebhookPath>,
) -> Result<HttpResponse, ApiError> {
    let row = load(&state, &caller, path.webhook_id).await?;
    Ok(HttpResponse::Ok().json(webhook_json(&row, false)))
}

/// `PATCH /api/v1/webhooks/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

/// Change a webhook's URL, events or enabled flag.
#[utoipa::path(tag = "webhooks", params(WebhookPath), request_body = UpdateWebhook, responses((status = 200, description = "The webhook"), CommonErrors), security(("api_key" = [])))]
#[patch("/webhooks/{webhook_id}")]
pub async fn update_webhook(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<WebhookPath>,
    body: ValidJson<UpdateWebhook>,
) -> Result<HttpResponse, ApiError> {
    load(&state, &caller, path.webhook_id).await?;
    let body = body.into_inner();
    let change = WebhookChange {
        url: body
            .url
            .as_deref()
            .map(|u| parse_url(u, state.settings.webhooks.allow_private_targets, "url"))
            .transpose()?,
        events: body.events.map(|e| parse_events(Some(e))).transpose()?,
        enabled: body.enabled,
        secret: None,
        updated_at: Some(Utc::now()),
    };
    let mut conn = state.db.get().await?;
    let row = store::update(&mut conn, path.webhook_id, &change)
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    Ok(HttpResponse::Ok().json(webhook_json(&row, false)))
}

/// Replace the signing secret; the answer carries the new one.
#[utoipa::path(tag = "webhooks", params(WebhookPath), responses((status = 200, description = "The webhook with its new secret"), CommonErrors), security(("api_key" = [])))]
#[post("/webhooks/{webhook_id}/rotate-secret")]
pub async fn rotate_secret(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<WebhookPath>,
) -> Result<HttpResponse, ApiError> {
    load(&state, &caller, path.webhook_id).await?;
    let change = WebhookChange {
        secret: Some(signature::new_secret()),
        updated_at: Some(Utc::now()),
        ..Default::default()
    };
    let mut conn = state.db.get().await?;
    let row = store::update(&mut conn, path.webhook_id, &change)
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    Ok(HttpResponse::Ok().json(webhook_json(&row, true)))
}

/// Delete a webhook and its delivery log.
#[utoipa::path(tag = "webhooks", params(WebhookPath), responses((status = 204, description = "Deleted"), CommonErrors), security(("api_key" = [])))]
#[delete("/webhooks/{webhook_id}")]
pub async fn delete_webhook(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<WebhookPath>,
) -> Result<HttpResponse, ApiError> {
    load(&state, &caller, path.webhook_id).await?;
    let mut conn = state.db.get().await?;
    store::delete(&mut conn, path.webhook_id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// `pending`, `delivered` or `dead`.
    pub status: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// The delivery log, newest first (`?status=dead`: the dead letters).
#[utoipa::path(tag = "webhooks", params(WebhookPath, DeliveriesQuery), responses((status = 200, description = "A page of deliveries"), CommonErrors), security(("api_key" = [])))]
#[get("/webhooks/{webhook_id}/deliveries")]
pub async fn list_deliveries(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<WebhookPath>,
    query: web::Query<DeliveriesQuery>,
) -> Result<HttpResponse, ApiError> {
    load(&state, &caller, path.webhook_id).await?;
    if let Some(s) = &query.status
        && !matches!(s.as_str(), "pending" | "delivered" | "dead")
    {
        return Err(ApiError::validation(
            "status",
            "one of pending, delivered, dead",
        ));
    }
    let limit = parse_limit(query.limit.as_deref())?;
    let cursor = TimeCursor::parse(query.cursor.as_deref())?.map(|c| (c.at, c.key));
    let mut conn = state.db.get().await?;
    let rows = store::list_deliveries(
        &mut conn,
        path.webhook_id,
        query.status.as_deref(),
        cursor,
        i64::from(limit) + 1,
    )
    .await?;
    let page = Page::from_overfetched(rows, limit, |d| TimeCursor::encode(d.created_at, &d.id));
    Ok(HttpResponse::Ok().json(page.map(delivery_json)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DeliveryPath {
    pub webhook_id: Uuid,
    pub delivery_id: String,
}

/// A delivery of one of the caller's webhooks (404 for anyone else's).
async fn load_delivery(
    state: &AppState,
    caller: &Caller,
    conn: &mut AsyncPgConnection,
    path: &DeliveryPath,
) -> Result<store::DeliveryRow, ApiError> {
    load(state, caller, path.webhook_id).await?;
    store::get_delivery(conn, path.webhook_id, &path.delivery_id)
        .await?
        .ok_or(ApiError::NotFound("delivery"))
}

/// One delivery with every attempt made of it: when, the endpoint's answer (or why there was
/// none) and how long it took.
#[utoipa::path(tag = "webhooks", params(DeliveryPath), responses((status = 200, description = "The delivery and its attempts"), CommonErrors), security(("api_key" = [])))]
#[get("/webhooks/{webhook_id}/deliveries/{delivery_id}")]
pub async fn get_delivery(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<DeliveryPath>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.db.get().await?;
    let delivery = load_delivery(&state, &caller, &mut conn, &path).await?;
    let attempts = store::attempts(&mut conn, &delivery.id).await?;
    let mut body = delivery_json(&delivery);
    body["attempt_log"] = attempts
        .iter()
        .map(|a| {
            json!({"attempt": a.attempt, "at": a.attempted_at, "status_code": a.status_code,
                   "error": a.error, "duration_ms": a.duration_ms})
        })
        .collect();
    Ok(HttpResponse::Ok().json(body))
}

/// Send one delivery again (dead or delivered), same `webhook-id`, fresh retry schedule.
#[utoipa::path(tag = "webhooks", params(DeliveryPath), responses((status = 202, description = "Queued again"), CommonErrors), security(("api_key" = [])))]
#[post("/webhooks/{webhook_id}/deliveries/{delivery_id}/replay")]
pub async fn replay_delivery(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<DeliveryPath>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.db.get().await?;
    let existing = load_delivery(&state, &caller, &mut conn, &path).await?;
    if existing.status == "pending" {
        return Err(ApiError::Conflict {
            code: "delivery_pending",
            message: "this delivery is still being attempted".into(),
        });
    }
    let rows = store::replay(&mut conn, path.webhook_id, Some(&path.delivery_id)).await?;
    state.webhook_wake.notify_one();
    let row = rows.first().unwrap_or(&existing);
    Ok(HttpResponse::Accepted().json(delivery_json(row)))
}

/// Send every dead letter of the webhook again.
#[utoipa::path(tag = "webhooks", params(WebhookPath), responses((status = 202, description = "How many were queued again"), CommonErrors), security(("api_key" = [])))]
#[post("/webhooks/{webhook_id}/deliveries/replay")]
pub async fn replay_dead(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<WebhookPath>,
) -> Result<HttpResponse, ApiError> {
    load(&state, &caller, path.webhook_id).await?;
    let mut conn = state.db.get().await?;
    let rows = store::replay(&mut conn, path.webhook_id, None).await?;
    state.webhook_wake.notify_one();
    Ok(HttpResponse::Accepted().json(json!({"replayed": rows.len()})))
}
