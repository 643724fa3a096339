//! Sessions: one linked WhatsApp account each. The HTTP side parses and authorises, writes
//! what the operator wants (`desired`) to Postgres, and tells the supervision tree; the
//! session's actor does the rest and writes its state back.

pub mod adapters;
pub mod jobs;
pub mod lifecycle;
pub mod qr;
pub mod store;

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, delete, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::events::{Event, EventList};
use crate::http::json::ValidJson;
use crate::http::openapi::CommonErrors;
use crate::http::pagination::{ListQuery, Page};
use crate::tenants::{DisplayName, Tier, tier_from_db};
use store::SessionRow;
use wagate_actors::session::SessionStatus;

impl SessionRow {
    /// The stored status. The column's CHECK constraint allows only the known states, so
    /// anything else is a fault, not a default.
    pub fn session_status(&self) -> Result<SessionStatus, ApiError> {
        SessionStatus::parse(&self.status).ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!(
                "unknown session status in database: {}",
                self.status
            ))
        })
    }
}

/// A session as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    pub id: Uuid,
    pub name: String,
    pub tenant_id: Uuid,
    pub status: SessionStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jid: Option<String>,
    pub tier: Tier,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Only in the answer that created the session with a `webhook_url`: the webhook it
    /// made for it (every event of this session), with its signing secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<SessionWebhook>,
    pub reconnect_attempts: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The webhook a session's `webhook_url` subscribed (manage it under `/api/v1/webhooks`).
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionWebhook {
    pub id: Uuid,
    /// The Standard Webhooks signing secret (`whsec_…`), shown once.
    pub secret: String,
}

impl Session {
    pub fn from_row(row: SessionRow, tier: Tier) -> Result<Self, ApiError> {
        let status = row.session_status()?;
        Ok(Session {
            id: row.id,
            name: row.name,
            tenant_id: row.tenant_id,
            status,
            phone: row.phone,
            jid: row.jid,
            tier,
            webhook_url: row.webhook_url,
            webhook: None,
            reconnect_attempts: row.reconnect_attempts,
            last_error: row.last_error,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    pub name: String,
    pub webhook_url: Option<String>,
    /// Only for the admin key: whose session this is.
    pub tenant_id: Option<Uuid>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SessionPath {
    pub session_id: Uuid,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Also delete the session's history (events, later messages).
    pub purge: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PairCodeRequest {
    /// The account's phone number, E.164 (`+15550001111`).
    pub phone: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PairCode {
    /// Type this on the phone: WhatsApp → Linked devices → Link with phone number.
    pub code: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QrCodeView {
    pub qr: String,
    pub data_url: String,
    pub terminal: String,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events with a larger id.
    #[param(minimum = 0)]
    pub since: Option<i64>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// A phone number in E.164: `+` and 8 to 15 digits (spaces, dashes, dots allowed).
pub fn parse_phone(raw: &str, field: &str) -> Result<String, ApiError> {
    let trimmed = raw.trim();
    let Some(rest) = trimmed.strip_prefix('+') else {
        return Err(ApiError::validation(
            field,
            "must be an E.164 number starting with + and the country code",
        ));
    };
    let digits: String = rest
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    if !(8..=15).contains(&digits.len()) || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(ApiError::validation(
            field,
            "must be an E.164 number: + and 8 to 15 digits",
        ));
    }
    Ok(digits)
}

/// The session a session-scoped route names (`{session_id}`), loaded for the caller before
/// the handler runs (atuin's `UserAuth` is the model): another tenant's session is 404, as
/// if it did not exist. Put it after the handler's other extractors: their errors (a bad
/// query, a bad path) come first, as they did when each handler loaded the session itself.
pub struct ScopedSession {
    pub row: SessionRow,
    pub tier: Tier,
}

impl actix_web::FromRequest for ScopedSession {
    type Error = actix_web::Error;
    type Future = futures::future::LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &actix_web::HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let caller = Caller::extract(&req).await?;
            // Through the app's PathConfig: a bad id is the same 404 as everywhere.
            let path = web::Path::<SessionPath>::extract(&req).await?;
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("no application state")))?;
            let (row, tier) = load_for(state, &caller, path.session_id).await?;
            Ok(ScopedSession { row, tier })
        })
    }
}

/// Loads a session the caller may see; anyone else's is 404, as if it did not exist.
pub async fn load_for(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<(SessionRow, Tier), ApiError> {
    let mut conn = state.db.get().await?;
    let (row, tier) = store::get_session(&mut conn, id)
        .await?
        .ok_or(ApiError::NotFound("session"))?;
    caller.require_tenant(row.tenant_id, "session")?;
    Ok((row, tier_from_db(&tier)?))
}

async fn reload(state: &AppState, id: Uuid) -> Result<HttpResponse, ApiError> {
    let mut conn = state.db.get().await?;
    let (row, tier) = store::get_session(&mut conn, id)
        .await?
        .ok_or(ApiError::NotFound("session"))?;
    Ok(HttpResponse::Ok().json(Session::from_row(row, tier_from_db(&tier)?)?))
}

/// Create a session (stopped; start it to get a QR). Limited per tier.
#[utoipa::path(
    tag = "sessions",
    request_body = CreateSession,
    responses((status = 201, description = "Session created", body = Session), CommonErrors),
    security(("api_key" = []))
)]
#[post("/sessions")]
pub async fn create_session(
    caller: Caller,
    state: web::Data<AppState>,
    body: ValidJson<CreateSession>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let tenant_id = match (&caller, body.tenant_id) {
        (Caller::Admin, Some(t)) => t,
        (Caller::Admin, None) => {
            return Err(ApiError::validation(
                "tenant_id",
                "is required with the admin key",
            ));
        }
        (Caller::Tenant { tenant_id, .. }, None) => *tenant_id,
        (Caller::Tenant { tenant_id, .. }, Some(t)) if t == *tenant_id => t,
        (Caller::Tenant { .. }, Some(_)) => return Err(ApiError::NotFound("tenant")),
    };
    let name = DisplayName::parse(&body.name, "name")?;
    // Guarded as every webhook is, and delivered as one: a webhook of this session.
    let webhook_url = body
        .webhook_url
        .as_deref()
        .map(|u| {
            crate::webhooks::parse_url(
                u,
                state.settings.webhooks.allow_private_targets,
                "webhook_url",
            )
        })
        .transpose()?;
    let quotas = state.settings.sessions.quotas;
    let mut conn = state.db.get().await?;
    use diesel_async::AsyncConnection;
    let created = conn
        .transaction(async |conn| {
            let Some((tier, count)) = store::lock_and_count_sessions(conn, tenant_id).await? else {
                return Ok(Err(ApiError::NotFound("tenant")));
            };
            let tier = match tier_from_db(&tier) {
                Ok(tier) => tier,
                Err(e) => return Ok(Err(e)),
            };
            let limit = quotas.for_tier(tier);
            if count >= i64::from(limit) {
                return Ok(Err(ApiError::QuotaExceeded {
                    what: "sessions",
                    limit,
                    tier: tier.as_str(),
                }));
            }
            let now = Utc::now();
            let row = SessionRow {
                id: Uuid::now_v7(),
                tenant_id,
                name: name.into_inner(),
                webhook_url: webhook_url.clone(),
                status: "stopped".into(),
                desired: "stopped".into(),
                phone: None,
                jid: None,
                reconnect_attempts: 0,
                last_error: None,
                qr_code: None,
                qr_expires_at: None,
                owner_node: None,
                lease_expires_at: None,
                created_at: now,
                updated_at: now,
            };
            let row = store::insert_session(conn, &row).await?;
            let webhook = match &webhook_url {
                None => None,
                Some(url) => {
                    let hook = crate::webhooks::store::WebhookRow {
                        id: Uuid::now_v7(),
                        tenant_id,
                        session_id: Some(row.id),
                        url: url.clone(),
                        events: Vec::new(),
                        secret: crate::webhooks::signature::new_secret(),
                        enabled: true,
                        created_at: now,
                        updated_at: now,
                    };
                    Some(crate::webhooks::store::insert(conn, &hook).await?)
                }
            };
            Ok::<_, diesel::result::Error>(Ok((row, tier, webhook)))
        })
        .await??;
    let (row, tier, webhook) = created;
    tracing::info!(session = %row.id, tenant_id = %tenant_id, "session created");
    crate::tiers::warn_if_near(&state, tenant_id, crate::tiers::SESSIONS).await;
    let mut session = Session::from_row(row, tier)?;
    session.webhook = webhook.map(|w| SessionWebhook {
        id: w.id,
        secret: w.secret,
    });
    Ok(HttpResponse::Created().json(session))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListSessionsQuery {
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
    /// Admin only: one tenant's sessions.
    pub tenant_id: Option<Uuid>,
}

/// List sessions: a tenant's own, or (admin) everyone's.
#[utoipa::path(
    tag = "sessions",
    params(ListSessionsQuery),
    responses((status = 200, description = "A page of sessions", body = Page<Session>), CommonErrors),
    security(("api_key" = []))
)]
#[get("/sessions")]
pub async fn list_sessions(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<ListSessionsQuery>,
) -> Result<HttpResponse, ApiError> {
    list_sessions_inner(caller, state, query).await
}

pub(crate) async fn list_sessions_inner(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<ListSessionsQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = ListQuery {
        limit: query.limit.clone(),
        cursor: query.cursor.clone(),
    };
    let (limit, after) = page.parse()?;
    let tenant = match &caller {
        Caller::Admin => query.tenant_id,
        Caller::Tenant { tenant_id, .. } => Some(*tenant_id),
    };
    let mut conn = state.db.get().await?;
    let rows = store::list_sessions(&mut conn, tenant, after, i64::from(limit) + 1).await?;
    let items = rows
        .into_iter()
        .map(|(r, t)| Session::from_row(r, tier_from_db(&t)?))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HttpResponse::Ok().json(Page::from_overfetched(items, limit, |s| s.id.to_string())))
}

/// Get a session.
#[utoipa::path(
    tag = "sessions",
    params(SessionPath),
    responses((status = 200, description = "The session", body = Session), CommonErrors),
    security(("api_key" = []))
)]
#[get("/sessions/{session_id}")]
pub async fn get_session(session: ScopedSession) -> Result<HttpResponse, ApiError> {
    let ScopedSession { row, tier } = session;
    Ok(HttpResponse::Ok().json(Session::from_row(row, tier)?))
}

/// Delete a session: logs it out, deletes its keys; `?purge=true` also its history.
#[utoipa::path(
    tag = "sessions",
    params(SessionPath, DeleteQuery),
    responses((status = 204, description = "Deleted"), CommonErrors),
    security(("api_key" = []))
)]
#[delete("/sessions/{session_id}")]
pub async fn delete_session(
    state: web::Data<AppState>,
    query: web::Query<DeleteQuery>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let row = session.row;
    lifecycle::logout(state.sessions(), row.id).await?;
    let mut conn = state.db.get().await?;
    store::delete_session(&mut conn, row.id, query.purge.unwrap_or(false)).await?;
    tracing::info!(session = %row.id, purge = query.purge.unwrap_or(false), "session deleted");
    Ok(HttpResponse::NoContent().finish())
}

/// Start the session (idempotent, asynchronous): it connects, or shows a QR code if it is not
/// linked yet. The answer is the session as the start left it: `starting` when it was idle.
#[utoipa::path(
    tag = "sessions",
    params(SessionPath),
    responses((status = 202, description = "Start accepted: the session", body = Session), CommonErrors),
    security(("api_key" = []))
)]
#[post("/sessions/{session_id}/start")]
pub async fn start_session(
    state: web::Data<AppState>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    start_session_inner(state, session).await
}

pub(crate) async fn start_session_inner(
    state: web::Data<AppState>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let ScopedSession { row, tier } = session;
    lifecycle::start(state.sessions(), &row, tier).await?;
    let mut conn = state.db.get().await?;
    let (row, tier) = store::get_session(&mut conn, row.id)
        .await?
        .ok_or(ApiError::NotFound("session"))?;
    let mut session = Session::from_row(row, tier_from_db(&tier)?)?;
    // The actor stores `starting` a moment later; an idle state in the answer would tell the
    // caller its start did nothing.
    if matches!(
        session.status,
        SessionStatus::Stopped | SessionStatus::LoggedOut | SessionStatus::Failed
    ) {
        session.status = SessionStatus::Starting;
    }
    Ok(HttpResponse::Accepted().json(session))
}

/// Stop the session without logging it out: it can start again with no new QR.
#[utoipa::path(
    tag = "sessions",
    params(SessionPath),
    responses((status = 200, description = "The session", body = Session), CommonErrors),
    security(("api_key" = []))
)]
#[post("/sessions/{session_id}/stop")]
pub async fn stop_session(
    state: web::Data<AppState>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let row = session.row;
    lifecycle::stop(state.sessions(), row.id).await?;
    reload(&state, row.id).await
}

/// Restart the session: a fresh actor and client, same linked device (no QR).
#[utoipa::path(
    tag = "sessions",
    params(SessionPath),
    responses((status = 200, description = "The session", body = Session), CommonErrors),
    security(("api_key" = []))
)]
#[post("/sessions/{session_id}/restart")]
pub async fn restart_session(
    state: web::Data<AppState>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let ScopedSession { row, tier } = session;
    lifecycle::restart(state.sessions(), &row, tier).await?;
    reload(&state, row.id).await
}

/// Log the session out: the phone unlinks it and its keys are deleted.
#[utoipa::path(
    tag = "sessions",
    params(SessionPath),
    responses((status = 200, description = "The session", body = Session), CommonErrors),
    security(("api_key" = []))
)]
#[post("/sessions/{session_id}/logout")]
pub async fn logout_session(
    state: web::Data<AppState>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let row = session.row;
    lifecycle::logout(state.sessions(), row.id).await?;
    reload(&state, row.id).await
}

/// The session's state in short (what dashboards poll).
#[utoipa::path(
    tag = "sessions",
    params(SessionPath),
    responses((status = 200, description = "Status", body = SessionStatusView), CommonErrors),
    security(("api_key" = []))
)]
#[get("/sessions/{session_id}/status")]
pub async fn session_status(session: ScopedSession) -> Result<HttpResponse, ApiError> {
    session_status_inner(session).await
}

pub(crate) async fn session_status_inner(session: ScopedSession) -> Result<HttpResponse, ApiError> {
    let row = session.row;
    Ok(HttpResponse::Ok().json(SessionStatusView::try_from(&row)?))
}

/// A session's state in short.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionStatusView {
    pub id: Uuid,
    pub status: SessionStatus,
    pub phone: Option<String>,
    pub jid: Option<String>,
    pub reconnect_attempts: i32,
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<&SessionRow> for SessionStatusView {
    type Error = ApiError;

    fn try_from(row: &SessionRow) -> Result<SessionStatusView, ApiError> {
        Ok(SessionStatusView {
            id: row.id,
            status: row.session_status()?,
            phone: row.phone.clone(),
            jid: row.jid.clone(),
            reconnect_attempts: row.reconnect_attempts,
            last_error: row.last_error.clone(),
            updated_at: row.updated_at,
        })
    }
}

/// Health: 200 when connected and answering, else 503.
#[utoipa::path(
    tag = "sessions",
    params(SessionPath),
    responses((status = 200, description = "Healthy", body = lifecycle::SessionHealth), (status = 503, description = "Not healthy: `session_unhealthy`, the health report as `details`", body = crate::error::ErrorBody), CommonErrors),
    security(("api_key" = []))
)]
#[get("/sessions/{session_id}/health")]
pub async fn session_health(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<SessionPath>,
) -> Result<HttpResponse, ApiError> {
    let report = health_report(&caller, &state, &path).await?;
    if report.healthy {
        Ok(HttpResponse::Ok().json(report))
    } else {
        // The documented error body, with the report as its details.
        Err(ApiError::SessionUnhealthy(Box::new(report)))
    }
}

pub(crate) async fn health_report(
    caller: &Caller,
    state: &AppState,
    path: &SessionPath,
) -> Result<lifecycle::SessionHealth, ApiError> {
    let (row, _) = load_for(state, caller, path.session_id).await?;
    lifecycle::health(state.sessions(), &row).await
}

fn current_qr(row: &SessionRow) -> Result<(String, Option<DateTime<Utc>>), ApiError> {
    match (row.session_status()?, &row.qr_code) {
        (SessionStatus::Qr, Some(code)) => Ok((code.clone(), row.qr_expires_at)),
        _ => Err(ApiError::Conflict {
            code: ErrorCode::SessionNotInQrState,
            message: format!(
                "the session is {}; a QR code exists only while it waits to be linked (status qr)",
                row.status
            ),
        }),
    }
}

/// The QR code to scan: raw, as a PNG data URL, and as terminal blocks.
#[utoipa::path(
    tag = "sessions",
    params(SessionPath),
    responses((status = 200, description = "The QR code", body = QrCodeView), CommonErrors),
    security(("api_key" = []))
)]
#[get("/sessions/{session_id}/qr")]
pub async fn session_qr(session: ScopedSession) -> Result<HttpResponse, ApiError> {
    let row = session.row;
    let (code, expires_at) = current_qr(&row)?;
    let rendered = qr::RenderedQr::new(&code).map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(QrCodeView {
        data_url: rendered.data_url().map_err(ApiError::internal)?,
        terminal: rendered.terminal(),
        qr: code,
        expires_at,
    }))
}

/// The QR code as a PNG image.
#[utoipa::path(
    tag = "sessions",
    params(SessionPath),
    responses((status = 200, description = "PNG", content_type = "image/png", body = crate::http::openapi::FileBytes), CommonErrors),
    security(("api_key" = []))
)]
#[get("/sessions/{session_id}/qr.png")]
pub async fn session_qr_png(session: ScopedSession) -> Result<HttpResponse, ApiError> {
    let row = session.row;
    let (code, _) = current_qr(&row)?;
    let png = qr::RenderedQr::new(&code)
        .and_then(|r| r.png())
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type("image/png")
        .insert_header(("cache-control", "no-store"))
        .body(png))
}

/// An HTML page showing the current QR code, refreshing itself every few seconds
/// (open it with `?token=<jwt>` in a browser).
#[utoipa::path(
    tag = "sessions",
    params(SessionPath),
    responses((status = 200, description = "HTML", content_type = "text/html", body = String), CommonErrors),
    security(("api_key" = []))
)]
#[get("/sessions/{session_id}/qr/view")]
pub async fn session_qr_view(session: ScopedSession) -> Result<HttpResponse, ApiError> {
    let row = session.row;
    let title = format!("wagate: {}", row.name);
    let body = match current_qr(&row) {
        Ok((code, _)) => {
            let url = qr::RenderedQr::new(&code)
                .and_then(|r| r.data_url())
                .map_err(ApiError::internal)?;
            format!(
                "<h1>{}</h1><p>WhatsApp → Linked devices → Link a device, then scan:</p>\
                 <img alt=\"QR code\" src=\"{url}\"><p>Status: qr</p>",
                qr::escape(&row.name)
            )
        }
        Err(_) => format!(
            "<h1>{}</h1><p>Status: <strong>{}</strong></p>",
            qr::escape(&row.name),
            qr::escape(&row.status)
        ),
    };
    Ok(HttpResponse::Ok()
        .content_type(ContentType::html())
        .insert_header(("cache-control", "no-store"))
        .insert_header((
            actix_web::http::header::CONTENT_SECURITY_POLICY,
            qr::PAGE_CSP,
        ))
        .body(qr::html_page(&title, &body, 5)))
}

/// Link by phone number instead of a QR scan: returns the code to type on the phone.
#[utoipa::path(
    tag = "sessions",
    params(SessionPath),
    request_body = PairCodeRequest,
    responses((status = 200, description = "The code", body = PairCode), CommonErrors),
    security(("api_key" = []))
)]
#[post("/sessions/{session_id}/pair-code")]
pub async fn session_pair_code(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<SessionPath>,
    body: ValidJson<PairCodeRequest>,
) -> Result<HttpResponse, ApiError> {
    let phone = parse_phone(&body.into_inner().phone, "phone")?;
    let (row, _) = load_for(&state, &caller, path.session_id).await?;
    let code = lifecycle::pair_code(state.sessions(), &row, phone).await?;
    Ok(HttpResponse::Ok().json(PairCode { code }))
}

/// The session's stored events after `since` (oldest first).
#[utoipa::path(
    tag = "sessions",
    params(SessionPath, EventsQuery),
    responses((status = 200, description = "Events", body = EventList), CommonErrors),
    security(("api_key" = []))
)]
#[get("/sessions/{session_id}/events")]
pub async fn session_events(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<SessionPath>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    if query.since.is_some_and(|s| s < 0) {
        return Err(ApiError::validation(
            "since",
            "must be an event id (0 or more)",
        ));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::validation("limit", "must be between 1 and 1000"));
    }
    let (row, _) = load_for(&state, &caller, path.session_id).await?;
    let mut conn = state.db.get().await?;
    let events = crate::events::store::session_events(
        &mut conn,
        row.tenant_id,
        row.id,
        query.since.unwrap_or(0),
        limit,
    )
    .await?;
    Ok(HttpResponse::Ok().json(EventList {
        items: events.iter().map(Event::from).collect(),
    }))
}

/// Sessions: lifecycle, QR and pairing, health, events.
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(create_session)
        .service(list_sessions)
        .service(session_qr_png)
        .service(session_qr_view)
        .service(session_qr)
        .service(get_session)
        .service(delete_session)
        .service(start_session)
        .service(stop_session)
        .service(restart_session)
        .service(logout_session)
        .service(session_status)
        .service(session_health)
        .service(session_pair_code)
        .service(session_events);
}
