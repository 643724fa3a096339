//! The legacy `/api/whatsapp/...` routes (the session-management API that came before this
//! one), each mapped onto its `/api/v1` counterpart. They sit outside the OpenAPI document:
//! `/api/v1` is the contract; these stay for clients written against the old paths.

use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::{self, Caller};
use crate::error::ApiError;
use crate::http::json::ValidJson;
use crate::messages::{self, SendMessage};
use crate::sessions::{self, ListSessionsQuery, ScopedSession, SessionPath};

/// Mounted once, under `/api/whatsapp`, with the same authentication as `/api/v1`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/whatsapp")
            .wrap(actix_web::middleware::from_fn(auth::auth_middleware))
            .service(list)
            .service(initialize)
            .service(status)
            .service(health)
            .service(metrics)
            .service(send)
            .service(events),
    );
}

#[get("/sessions")]
pub async fn list(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<ListSessionsQuery>,
) -> Result<HttpResponse, ApiError> {
    sessions::list_sessions_inner(caller, state, query).await
}

#[post("/sessions/{session_id}/initialize")]
pub async fn initialize(
    state: web::Data<AppState>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    sessions::start_session_inner(state, session).await
}

#[get("/sessions/{session_id}/status")]
pub async fn status(session: ScopedSession) -> Result<HttpResponse, ApiError> {
    sessions::session_status_inner(session).await
}

#[get("/sessions/{session_id}/health")]
pub async fn health(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<SessionPath>,
) -> Result<HttpResponse, ApiError> {
    // The legacy shape: the report itself, 200 or 503.
    let report = sessions::health_report(&caller, &state, &path).await?;
    Ok(if report.healthy {
        HttpResponse::Ok().json(report)
    } else {
        HttpResponse::ServiceUnavailable().json(report)
    })
}

#[get("/metrics")]
pub async fn metrics(_caller: Caller) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::render())
}

/// The legacy send's body: `{"phone", "message", "options": {"quoted"}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompatSend {
    pub phone: String,
    pub message: String,
    #[serde(default)]
    pub options: CompatOptions,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompatOptions {
    pub quoted: Option<String>,
}

#[post("/sessions/{session_id}/send")]
pub async fn send(
    caller: Caller,
    state: web::Data<AppState>,
    writer: web::Data<messages::accepts::AcceptWriter>,
    path: web::Path<SessionPath>,
    req: HttpRequest,
    body: ValidJson<CompatSend>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let send = SendMessage {
        to: b.phone,
        kind: "text".into(),
        text: Some(b.message),
        quoted_id: b.options.quoted,
        location: None,
        contact: None,
        reaction: None,
        media_id: None,
        media_url: None,
        caption: None,
        file_name: None,
        quick_reply_id: None,
        shortcut: None,
        variables: None,
    };
    messages::accept(
        &state,
        &writer,
        &caller,
        path.session_id,
        req.headers(),
        send,
    )
    .await
}

/// The legacy event stream, mapped onto `GET /api/v1/events`.
#[get("/events")]
async fn events(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<crate::events::ws::EventsStreamQuery>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    crate::events::ws::start(caller, state, query.into_inner(), req, payload).await
}
