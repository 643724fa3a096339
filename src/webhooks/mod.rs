//! Webhooks: subscriptions per tenant or session, signed per the Standard Webhooks spec,
//! delivered from a Postgres outbox written in the same transaction as each event, retried
//! with backoff, then dead-lettered (listable and replayable).

pub mod signature;
pub mod store;
pub mod worker;

use diesel_async::AsyncPgConnection;

use actix_web::{HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::events::EVENT_TYPES;
use crate::http::json::ValidJson;
use crate::http::openapi::CommonErrors;
use crate::http::pagination::{ListQuery, Page, TimeCursor, parse_limit};
use store::{DeliveryRow, WebhookChange, WebhookRow};

/// A webhook subscription as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Webhook {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// Only this session's events; `null`: every session of the tenant.
    pub session_id: Option<Uuid>,
    pub url: String,
    /// The event types delivered; empty: all.
    pub events: Vec<String>,
    pub enabled: bool,
    /// The signing secret (`whsec_…`): only in the answers to creating and rotating.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Webhook {
    fn new(w: &WebhookRow, with_secret: bool) -> Webhook {
        Webhook {
            id: w.id,
            tenant_id: w.tenant_id,
            session_id: w.session_id,
            url: w.url.clone(),
            events: w.events.clone(),
            enabled: w.enabled,
            secret: with_secret.then(|| w.secret.clone()),
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

/// One delivery of one event to one webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    /// The `webhook-id` header of every attempt.
    pub id: String,
    pub webhook_id: Uuid,
    pub event_id: i64,
    pub event_type: String,
    /// `pending`, `delivered` or `dead`.
    pub status: String,
    pub attempts: i32,
    /// When the next attempt is due (pending deliveries only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// The body posted: the event as the API shows it everywhere.
    #[schema(value_type = crate::events::Event)]
    pub payload: Value,
}

impl From<&DeliveryRow> for Delivery {
    fn from(d: &DeliveryRow) -> Delivery {
        Delivery {
            id: d.id.clone(),
            webhook_id: d.webhook_id,
            event_id: d.event_id,
            event_type: d.event_type.clone(),
            status: d.status.clone(),
            attempts: d.attempts,
            next_attempt_at: (d.status == "pending").then_some(d.next_attempt_at),
            last_status_code: d.last_status_code,
            last_error: d.last_error.clone(),
            created_at: d.created_at,
            delivered_at: d.delivered_at,
            payload: d.payload.clone(),
        }
    }
}

/// One attempt at a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct Attempt {
    pub attempt: i32,
    pub at: DateTime<Utc>,
    /// The endpoint's HTTP status; `null` when it gave none.
    pub status_code: Option<i32>,
    /// Why the attempt failed, when it did.
    pub error: Option<String>,
    pub duration_ms: i32,
}

/// A delivery with every attempt made of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryWithAttempts {
    #[serde(flatten)]
    pub delivery: Delivery,
    pub attempt_log: Vec<Attempt>,
}

/// How many dead letters were queued again.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    pub replayed: usize,
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
    responses((status = 201, description = "Created, with its secret", body = Webhook), CommonErrors),
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
    Ok(HttpResponse::Created().json(Webhook::new(&stored, true)))
}

/// A tenant's webhooks (the admin sees all).
#[utoipa::path(
    tag = "webhooks",
    params(ListQuery),
    responses((status = 200, description = "A page of webhooks", body = Page<Webhook>), CommonErrors),
    security(("api_key" = []))
)]
#[get("/webhooks")]
pub async fn list_webhooks(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let (limit, after) = query.parse()?;
    let tenant = caller.tenant_id();
    let mut conn = state.db.get().await?;
    let rows = store::list(&mut conn, tenant, after, i64::from(limit) + 1).await?;
    let page = Page::from_overfetched(rows, limit, |w| w.id.to_string());
    Ok(HttpResponse::Ok().json(page.map(|w| Webhook::new(w, false))))
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
#[utoipa::path(tag = "webhooks", params(WebhookPath), responses((status = 200, description = "The webhook", body = Webhook), CommonErrors), security(("api_key" = [])))]
#[get("/webhooks/{webhook_id}")]
pub async fn get_webhook(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<WebhookPath>,
) -> Result<HttpResponse, ApiError> {
    let row = load(&state, &caller, path.webhook_id).await?;
    Ok(HttpResponse::Ok().json(Webhook::new(&row, false)))
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
#[utoipa::path(tag = "webhooks", params(WebhookPath), request_body = UpdateWebhook, responses((status = 200, description = "The webhook", body = Webhook), CommonErrors), security(("api_key" = [])))]
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
    Ok(HttpResponse::Ok().json(Webhook::new(&row, false)))
}

/// Replace the signing secret; the answer carries the new one.
#[utoipa::path(tag = "webhooks", params(WebhookPath), responses((status = 200, description = "The webhook with its new secret", body = Webhook), CommonErrors), security(("api_key" = [])))]
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
    Ok(HttpResponse::Ok().json(Webhook::new(&row, true)))
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
#[utoipa::path(tag = "webhooks", params(WebhookPath, DeliveriesQuery), responses((status = 200, description = "A page of deliveries", body = Page<Delivery>), CommonErrors), security(("api_key" = [])))]
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
    Ok(HttpResponse::Ok().json(page.map(|d| Delivery::from(d))))
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
#[utoipa::path(tag = "webhooks", params(DeliveryPath), responses((status = 200, description = "The delivery and its attempts", body = DeliveryWithAttempts), CommonErrors), security(("api_key" = [])))]
#[get("/webhooks/{webhook_id}/deliveries/{delivery_id}")]
pub async fn get_delivery(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<DeliveryPath>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.db.get().await?;
    let delivery = load_delivery(&state, &caller, &mut conn, &path).await?;
    let attempts = store::attempts(&mut conn, &delivery.id).await?;
    Ok(HttpResponse::Ok().json(DeliveryWithAttempts {
        delivery: Delivery::from(&delivery),
        attempt_log: attempts
            .iter()
            .map(|a| Attempt {
                attempt: a.attempt,
                at: a.attempted_at,
                status_code: a.status_code,
                error: a.error.clone(),
                duration_ms: a.duration_ms,
            })
            .collect(),
    }))
}

/// Send one delivery again (dead or delivered), same `webhook-id`, fresh retry schedule.
#[utoipa::path(tag = "webhooks", params(DeliveryPath), responses((status = 202, description = "Queued again", body = Delivery), CommonErrors), security(("api_key" = [])))]
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
            code: ErrorCode::DeliveryPending,
            message: "this delivery is still being attempted".into(),
        });
    }
    let rows = store::replay(&mut conn, path.webhook_id, Some(&path.delivery_id)).await?;
    state.webhook_wake.notify_one();
    let row = rows.first().unwrap_or(&existing);
    Ok(HttpResponse::Accepted().json(Delivery::from(row)))
}

/// Send every dead letter of the webhook again.
#[utoipa::path(tag = "webhooks", params(WebhookPath), responses((status = 202, description = "How many were queued again", body = Replayed), CommonErrors), security(("api_key" = [])))]
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
    Ok(HttpResponse::Accepted().json(Replayed {
        replayed: rows.len(),
    }))
}

/// Webhook subscriptions and their deliveries.
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(create_webhook)
        .service(list_webhooks)
        .service(get_webhook)
        .service(update_webhook)
        .service(delete_webhook)
        .service(rotate_secret)
        .service(list_deliveries)
        .service(get_delivery)
        .service(replay_dead)
        .service(replay_delivery);
}
