//! Operations routes: liveness, readiness, metrics and the OpenAPI document.

use std::time::Duration;

use actix_web::{HttpResponse, get, web};
use diesel_async::RunQueryDsl;
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::AppState;

/// How long a readiness check waits on each part.
pub const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
    /// `live` (real WhatsApp) or `sandbox` (the built-in simulator).
    pub mode: &'static str,
}

/// Liveness: answers without touching the database.
#[utoipa::path(tag = "operations", responses((status = 200, body = Health)))]
#[get("/health")]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        mode: state.network.mode(),
    })
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    pub checks: ReadinessChecks,
}

#[derive(Serialize, ToSchema)]
pub struct ReadinessChecks {
    pub database: String,
    /// `ok`, `not_configured`, or `degraded: ...` while the in-memory fallback answers.
    pub redis: String,
    pub actors: String,
}

/// Readiness: Postgres, Redis (when configured) and the actor system. 503 names the failing part.
#[utoipa::path(
    tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, description = "A part is failing", body = Readiness))
)]
#[get("/ready")]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let database = match tokio::time::timeout(READY_CHECK_TIMEOUT, async {
        let mut conn = state.db.get().await.map_err(|e| e.to_string())?;
        diesel::sql_query("SELECT 1")
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())
    })
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("error: {e}")),
        Err(_) => Err("error: no answer in time".to_owned()),
    };
    // A failing Redis does not make the node unready: the in-memory fallback answers.
    let redis = match state.ephemeral.ping_redis().await {
        None => "not_configured".to_owned(),
        Some(Ok(())) => "ok".to_owned(),
        Some(Err(e)) => format!("degraded: using the in-memory fallback ({e})"),
    };
    let actors = match tokio::time::timeout(
        READY_CHECK_TIMEOUT,
        state.supervisor.send(wagate_actors::supervisor::Ping),
    )
    .await
    {
        Ok(Ok(status)) if !status.stopping => Ok(()),
        Ok(Ok(_)) => Err("error: stopping".to_owned()),
        Ok(Err(e)) => Err(format!("error: {e}")),
        Err(_) => Err("error: no answer in time".to_owned()),
    };
    let is_ready = database.is_ok() && actors.is_ok();
    let body = Readiness {
        status: if is_ready { "ready" } else { "not_ready" },
        checks: ReadinessChecks {
            database: database.err().unwrap_or_else(|| "ok".to_owned()),
            redis,
            actors: actors.err().unwrap_or_else(|| "ok".to_owned()),
        },
    };
    if is_ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(tag = "operations", responses((status = 200, description = "Prometheus text", content_type = "text/plain", body = String)))]
#[get("/metrics")]
pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::metrics::render())
}

/// The OpenAPI document of every route.
#[utoipa::path(tag = "operations", responses((status = 200, description = "OpenAPI 3.1 JSON", content_type = "application/json", body = Object)))]
#[get("/openapi.json")]
pub async fn openapi(doc: web::Data<utoipa::openapi::OpenApi>) -> HttpResponse {
    HttpResponse::Ok().json(doc.get_ref())
}

/// Health, readiness, metrics and the API document (no credentials needed).
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(health)
        .service(ready)
        .service(metrics)
        .service(openapi)
        .service(crate::http::openapi::docs);
}
