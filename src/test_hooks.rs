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
