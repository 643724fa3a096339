//! Routes that exist only in test builds (feature `test-hooks`), to drive behaviour the real
//! API cannot trigger on demand, such as a request still in flight during shutdown.

use std::time::Duration;

use actix_web::{HttpResponse, get, web};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct SlowQuery {
    pub ms: u64,
}

/// Answers after `ms` milliseconds.
#[utoipa::path(tag = "test", params(("ms" = u64, Query, description = "delay")), responses((status = 200, description = "after the delay")))]
#[get("/__test/slow")]
pub async fn slow(query: web::Query<SlowQuery>) -> HttpResponse {
    tokio::time::sleep(Duration::from_millis(query.ms)).await;
    HttpResponse::Ok().json(serde_json::json!({ "slept_ms": query.ms }))
}

/// `POST /__test/admin/tenants/{tenant_id}/events`: stores `count` events of about `size`
/// bytes each (type `error` unless `type` says another, with their webhook deliveries) and
/// publishes them, as any
/// event is — to drive the fan-out and the outbox without a WhatsApp account.
#[derive(Deserialize)]
pub struct EmitEvents {
    pub count: usize,
    #[serde(default)]
    pub size: usize,
    pub session_id: Option<uuid::Uuid>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[actix_web::post("/tenants/{tenant_id}/events")]
pub async fn emit_events(
    caller: crate::auth::Caller,
    state: web::Data<crate::app::AppState>,
    path: web::Path<uuid::Uuid>,
    body: web::Json<EmitEvents>,
) -> Result<HttpResponse, crate::error::ApiError> {
    caller.require_admin()?;
    let mut conn = state.db.get().await?;
    let mut ids = Vec::with_capacity(body.count);
    for n in 0..body.count {
        let data = serde_json::json!({"n": n, "padding": "x".repeat(body.size)});
        let row = crate::events::store::insert_stored(
            &mut conn,
            *path,
            body.session_id,
            body.kind.as_deref().unwrap_or("error"),
            data,
        )
        .await?;
        ids.push(row.id);
        state.events.publish([row]);
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "ids": ids })))
}
