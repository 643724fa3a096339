//! Bot control per session (seed 000 §9): pause (until resumed or `until`), resume, stop
//! (which also cancels the session's running executions). While paused or stopped, neither
//! triggers nor agents answer on the session. Admins get an overview with inactive bots.

use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::http::json::OptionalJson;
use crate::http::openapi::CommonErrors;
use crate::sessions::{ScopedSession, SessionPath};

/// Sets a session's bot state (in the caller's transaction).
pub async fn set_state(
    conn: &mut AsyncPgConnection,
    tenant: Uuid,
    session: Uuid,
    state: &str,
    until: Option<DateTime<Utc>>,
    reason: Option<&str>,
) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO session_bots (session_id, tenant_id, state, paused_until, reason, updated_at) \
         VALUES ($1, $2, $3, $4, $5, now()) \
         ON CONFLICT (session_id) DO UPDATE SET state = $3, paused_until = $4, reason = $5, \
             updated_at = now()",
    )
    .bind::<sql_types::Uuid, _>(session)
    .bind::<sql_types::Uuid, _>(tenant)
    .bind::<sql_types::Text, _>(state)
    .bind::<sql_types::Nullable<sql_types::Timestamptz>, _>(until)
    .bind::<sql_types::Nullable<sql_types::Text>, _>(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// A session's bot.
#[derive(Debug, Serialize, ToSchema, QueryableByName)]
pub struct BotState {
    #[diesel(sql_type = sql_types::Uuid)]
    pub session_id: Uuid,
    #[diesel(sql_type = sql_types::Uuid)]
    pub tenant_id: Uuid,
    /// `active`, `paused` or `stopped` (a pause whose `until` passed reads `active`).
    #[diesel(sql_type = sql_types::Text)]
    pub state: String,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Timestamptz>)]
    pub paused_until: Option<DateTime<Utc>>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    pub reason: Option<String>,
    /// When automation or an agent last sent on the session.
    #[diesel(sql_type = sql_types::Nullable<sql_types::Timestamptz>)]
    pub last_activity_at: Option<DateTime<Utc>>,
    /// Executions of the session still running or waiting.
    #[diesel(sql_type = sql_types::BigInt)]
    pub running_executions: i64,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Timestamptz>)]
    pub updated_at: Option<DateTime<Utc>>,
}

const STATE_SQL: &str = "SELECT s.id AS session_id, s.tenant_id, \
       CASE WHEN b.state = 'paused' AND b.paused_until IS NOT NULL AND b.paused_until <= now() \
            THEN 'active' ELSE COALESCE(b.state, 'active') END AS state, \
       CASE WHEN b.state = 'paused' AND (b.paused_until IS NULL OR b.paused_until > now()) \
            THEN b.paused_until END AS paused_until, \
       b.reason, b.updated_at, \
       (SELECT max(m.created_at) FROM messages m WHERE m.session_id = s.id AND m.direction = 'out' \
          AND m.idempotency_key LIKE 'wagate:%') AS last_activity_at, \
       (SELECT count(*) FROM flow_executions x WHERE x.session_id = s.id \
          AND x.status IN ('running', 'waiting', 'waiting_reply')) AS running_executions \
     FROM sessions s LEFT JOIN session_bots b ON b.session_id = s.id";

async fn state_of(conn: &mut AsyncPgConnection, session: Uuid) -> QueryResult<BotState> {
    diesel::sql_query(format!("{STATE_SQL} WHERE s.id = $1"))
        .bind::<sql_types::Uuid, _>(session)
        .get_result(conn)
        .await
}

#[utoipa::path(tag = "automation", params(SessionPath), responses((status = 200, description = "The session's bot", body = BotState), CommonErrors), security(("api_key" = [])))]
#[get("/sessions/{session_id}/bot")]
pub async fn get_bot(
    state: web::Data<AppState>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.db.get().await?;
    Ok(HttpResponse::Ok().json(state_of(&mut conn, session.row.id).await?))
}

/// `POST …/bot/pause`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseBot {
    /// Paused until then; absent: until resumed.
    pub until: Option<DateTime<Utc>>,
    pub reason: Option<String>,
}

#[utoipa::path(tag = "automation", params(SessionPath), request_body(content = Option<PauseBot>, description = "Optional; no body pauses until resumed"), responses((status = 200, description = "The session's bot, paused", body = BotState), CommonErrors), security(("api_key" = [])))]
#[post("/sessions/{session_id}/bot/pause")]
pub async fn pause_bot(
    state: web::Data<AppState>,
    session: ScopedSession,
    body: OptionalJson<PauseBot>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner().unwrap_or_default();
    if b.until.is_some_and(|u| u <= Utc::now()) {
        return Err(ApiError::validation("until", "must be in the future"));
    }
    if b.reason.as_ref().is_some_and(|r| r.chars().count() > 200) {
        return Err(ApiError::validation("reason", "at most 200 characters"));
    }
    let mut conn = state.db.get().await?;
    set_state(
        &mut conn,
        session.row.tenant_id,
        session.row.id,
        "paused",
        b.until,
        b.reason.as_deref(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(state_of(&mut conn, session.row.id).await?))
}

#[utoipa::path(tag = "automation", params(SessionPath), responses((status = 200, description = "The session's bot, active", body = BotState), CommonErrors), security(("api_key" = [])))]
#[post("/sessions/{session_id}/bot/resume")]
pub async fn resume_bot(
    state: web::Data<AppState>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.db.get().await?;
    set_state(
        &mut conn,
        session.row.tenant_id,
        session.row.id,
        "active",
        None,
        None,
    )
    .await?;
    Ok(HttpResponse::Ok().json(state_of(&mut conn, session.row.id).await?))
}

#[utoipa::path(tag = "automation", params(SessionPath), responses((status = 200, description = "The session's bot, stopped; its running executions cancelled", body = BotState), CommonErrors), security(("api_key" = [])))]
#[post("/sessions/{session_id}/bot/stop")]
pub async fn stop_bot(
    state: web::Data<AppState>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let (tenant, id) = (session.row.tenant_id, session.row.id);
    let mut conn = state.db.get().await?;
    let cancelled = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            set_state(conn, tenant, id, "stopped", None, None).await?;
            Ok(diesel::sql_query(
                "UPDATE flow_executions SET status = 'cancelled', error = 'the bot was stopped', \
                     finished_at = now(), due_at = NULL, locked_until = NULL, updated_at = now() \
                 WHERE session_id = $1 AND status IN ('running', 'waiting', 'waiting_reply')",
            )
            .bind::<sql_types::Uuid, _>(id)
            .execute(conn)
            .await?)
        })
        .await?;
    crate::metrics::FLOW_EXECUTIONS
        .with_label_values(&["cancelled"])
        .inc_by(cancelled as u64);
    Ok(HttpResponse::Ok().json(state_of(&mut conn, id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BotsQuery {
    /// Only bots with no activity for this many days (inactive bots).
    pub inactive_days: Option<u32>,
    /// Only this state: `active`, `paused` or `stopped`.
    pub state: Option<String>,
}

/// The admin's overview.
#[derive(Debug, Serialize, ToSchema)]
pub struct BotsOverview {
    pub active: usize,
    pub paused: usize,
    pub stopped: usize,
    pub items: Vec<BotState>,
}

#[utoipa::path(tag = "admin", params(BotsQuery), responses((status = 200, description = "Every session's bot (admin)", body = BotsOverview), CommonErrors), security(("api_key" = [])))]
#[get("/admin/bots")]
pub async fn admin_bots(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<BotsQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    if let Some(s) = &query.state
        && !["active", "paused", "stopped"].contains(&s.as_str())
    {
        return Err(ApiError::validation("state", "active, paused or stopped"));
    }
    let mut conn = state.db.get().await?;
    let mut items: Vec<BotState> =
        diesel::sql_query(format!("{STATE_SQL} ORDER BY s.created_at LIMIT 10000"))
            .load(&mut conn)
            .await?;
    let counts = |s: &str, items: &[BotState]| items.iter().filter(|b| b.state == s).count();
    let (active, paused, stopped) = (
        counts("active", &items),
        counts("paused", &items),
        counts("stopped", &items),
    );
    if query.inactive_days.is_some_and(|d| d > 36_500) {
        return Err(ApiError::validation(
            "inactive_days",
            "at most 36500 (100 years)",
        ));
    }
    if let Some(days) = query.inactive_days {
        let since = Utc::now() - chrono::Duration::days(i64::from(days));
        items.retain(|b| b.last_activity_at.is_none_or(|t| t < since));
    }
    if let Some(s) = &query.state {
        items.retain(|b| &b.state == s);
    }
    Ok(HttpResponse::Ok().json(BotsOverview {
        active,
        paused,
        stopped,
        items,
    }))
}

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(get_bot)
        .service(pause_bot)
        .service(resume_bot)
        .service(stop_bot)
        .service(admin_bots);
}
