//! Statistics: what a business running bots on WhatsApp wants to see, from the stored data.
//! Message figures come from a rollup kept by Postgres triggers (see [`store`]); the rest from
//! indexed reads of the agents' calls, chats, cards and webhook deliveries. Periods are in the
//! tenant's time zone (`PUT /api/v1/automation/settings`): "today" is the tenant's today.

pub mod export;
pub mod jobs;
pub mod reports;
pub mod store;

use std::collections::BTreeMap;

use actix_web::{HttpResponse, get, web};
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use diesel::QueryableByName;
use diesel::sql_types::Text;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::ai::tenant_of;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::http::TenantQuery;
use crate::http::openapi::CommonErrors;

/// The longest period a statistic or report may cover.
pub const MAX_PERIOD_DAYS: i64 = 400;

/// A period: `from` and `to` are RFC 3339 times or dates (`YYYY-MM-DD`, days of the tenant's
/// time zone: `to` includes its whole day).
#[derive(Debug, Clone, Copy)]
pub struct Period {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

fn local_midnight(zone: Tz, day: NaiveDate) -> DateTime<Utc> {
    local_instant(zone, day.and_hms_opt(0, 0, 0).unwrap_or_default())
}

/// The instant a wall-clock time of `zone` names (the earlier one when the clock went back;
/// an hour later when it was skipped by a daylight-saving change).
fn local_instant(zone: Tz, naive: chrono::NaiveDateTime) -> DateTime<Utc> {
    zone.from_local_datetime(&naive)
        .earliest()
        .or_else(|| {
            zone.from_local_datetime(&(naive + Duration::hours(1)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| Utc.from_utc_datetime(&naive))
}

fn parse_bound(
    raw: &str,
    field: &str,
    zone: Tz,
    end_of_day: bool,
) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(raw, "%Y-%m-%d").map_err(|_| {
        ApiError::validation(field, "must be an RFC 3339 time or a date (YYYY-MM-DD)")
    })?;
    let day = if end_of_day {
        day.succ_opt()
            .ok_or_else(|| ApiError::validation(field, "is out of range"))?
    } else {
        day
    };
    Ok(local_midnight(zone, day))
}

/// The local day holding `now`.
pub fn today(zone: Tz, now: DateTime<Utc>) -> Period {
    let day = now.with_timezone(&zone).date_naive();
    Period {
        from: local_midnight(zone, day),
        to: local_midnight(zone, day.succ_opt().unwrap_or(day)),
    }
}

impl Period {
    /// `from`/`to` as given, else the default `days` (ending now, or today's end).
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        zone: Tz,
        default: Period,
    ) -> Result<Period, ApiError> {
        let to = match to {
            Some(t) => parse_bound(t, "to", zone, true)?,
            None => default.to,
        };
        let from = match from {
            Some(f) => parse_bound(f, "from", zone, false)?,
            None if to == default.to => default.from,
            None => to - (default.to - default.from),
        };
        if from >= to {
            return Err(ApiError::validation("from", "must be before to"));
        }
        if to - from > Duration::days(MAX_PERIOD_DAYS) {
            return Err(ApiError::validation(
                "from",
                format!("a period spans at most {MAX_PERIOD_DAYS} days"),
            ));
        }
        Ok(Period { from, to })
    }
}

#[derive(QueryableByName)]
struct ZoneRow {
    #[diesel(sql_type = Text)]
    time_zone: String,
}

/// The tenant's time zone (UTC when it set none, or one this build does not know).
pub async fn zone_of(conn: &mut AsyncPgConnection, tenant: Uuid) -> Result<Tz, ApiError> {
    let row: Option<ZoneRow> = diesel::sql_query("SELECT time_zone FROM tenants WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(tenant)
        .get_result(conn)
        .await
        .map(Some)
        .or_else(|e| match e {
            diesel::result::Error::NotFound => Ok(None),
            e => Err(e),
        })?;
    let row = row.ok_or(ApiError::NotFound("tenant"))?;
    Ok(row.time_zone.parse().unwrap_or(Tz::UTC))
}

fn rate(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| (part as f64 / whole as f64 * 10_000.0).round() / 10_000.0)
}

fn average(total: i64, count: i64) -> Option<i64> {
    (count > 0).then(|| total / count)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PeriodQuery {
    /// RFC 3339, or a date in the tenant's time zone. Default: the start of today.
    pub from: Option<String>,
    /// RFC 3339, or a date (its whole day counts). Default: the end of today.
    pub to: Option<String>,
    /// The admin key names the tenant.
    pub tenant_id: Option<Uuid>,
}

/// Messages over a period. `delivery_rate` is delivered (or read) of sent; `read_rate` is
/// read of delivered.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageFigures {
    #[serde(rename = "in")]
    pub msgs_in: i64,
    pub out: i64,
    /// Of `out`: sent by the gateway's own agents and flows; the rest by people (the API, the
    /// phone).
    pub out_bot: i64,
    pub out_human: i64,
    pub failed: i64,
    pub delivered: i64,
    pub read: i64,
    pub delivery_rate: Option<f64>,
    pub read_rate: Option<f64>,
}

impl From<&store::MessageTotals> for MessageFigures {
    fn from(t: &store::MessageTotals) -> Self {
        MessageFigures {
            msgs_in: t.msgs_in,
            out: t.msgs_out,
            out_bot: t.msgs_out_bot,
            out_human: t.msgs_out - t.msgs_out_bot,
            failed: t.msgs_failed,
            delivered: t.msgs_delivered,
            read: t.msgs_read,
            delivery_rate: rate(t.msgs_delivered, t.msgs_out - t.msgs_failed),
            read_rate: rate(t.msgs_read, t.msgs_delivered),
        }
    }
}

/// How long contacts waited for a first answer (from their first unanswered message).
#[derive(Debug, Serialize, ToSchema)]
pub struct ResponseTimes {
    pub count: i64,
    pub avg_ms: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FirstResponse {
    pub human: ResponseTimes,
    pub bot: ResponseTimes,
}

impl From<&store::MessageTotals> for FirstResponse {
    fn from(t: &store::MessageTotals) -> Self {
        FirstResponse {
            human: ResponseTimes {
                count: t.responses_human,
                avg_ms: average(t.response_ms_human, t.responses_human),
            },
            bot: ResponseTimes {
                count: t.responses_bot,
                avg_ms: average(t.response_ms_bot, t.responses_bot),
            },
        }
    }
}

/// The agents' work over a period. A conversation is a chat an agent answered or handed
/// over; it is contained when the agent never handed it to a person.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct AiStats {
    pub replies: i64,
    pub fallbacks: i64,
    pub errors: i64,
    pub conversations: i64,
    pub handed_off: i64,
    pub contained: i64,
    pub containment_rate: Option<f64>,
    pub handoff_rate: Option<f64>,
    pub prompt_tokens: i64,
    pub output_tokens: i64,
    /// From `ai.prices`; calls of models without a price are not in it.
    pub cost_usd: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionStats {
    pub total: i64,
    pub by_status: BTreeMap<String, i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookStats {
    pub pending: i64,
    pub delivered: i64,
    pub dead: i64,
    /// Delivered of those settled (delivered or dead).
    pub success_rate: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ColumnCount {
    pub board_id: Uuid,
    pub board: String,
    pub column_id: Uuid,
    pub column: String,
    pub cards: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CardStats {
    pub total: i64,
    pub by_column: Vec<ColumnCount>,
}

/// A tenant's dashboard.
#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    pub tenant_id: Uuid,
    pub time_zone: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub sessions: SessionStats,
    pub messages: MessageFigures,
    pub first_response: FirstResponse,
    pub ai: AiStats,
    /// Chats with a message in the last 24 hours.
    pub active_chats_24h: i64,
    pub cards: CardStats,
    /// Deliveries made in the period.
    pub webhooks: WebhookStats,
}

pub(crate) fn session_stats(rows: Vec<store::Counted>) -> SessionStats {
    SessionStats {
        total: rows.iter().map(|r| r.n).sum(),
        by_status: rows.into_iter().map(|r| (r.key, r.n)).collect(),
    }
}

pub(crate) fn webhook_stats(rows: &[store::Counted]) -> WebhookStats {
    let of = |k: &str| rows.iter().find(|r| r.key == k).map_or(0, |r| r.n);
    let (delivered, dead) = (of("delivered"), of("dead"));
    WebhookStats {
        pending: of("pending"),
        delivered,
        dead,
        success_rate: rate(delivered, delivered + dead),
    }
}

/// The agents' figures summed, with the cost of the tokens by model.
pub(crate) fn ai_stats(
    state: &AppState,
    agents: &[store::AgentFigures],
    models: &[store::ModelTokens],
) -> AiStats {
    let sum = |f: fn(&store::AgentFigures) -> i64| agents.iter().map(f).sum::<i64>();
    let conversations = sum(|a| a.conversations);
    let handed_off = sum(|a| a.handed_off);
    AiStats {
        replies: sum(|a| a.replies),
        fallbacks: sum(|a| a.fallbacks),
        errors: sum(|a| a.errors),
        conversations,
        handed_off,
        contained: conversations - handed_off,
        containment_rate: rate(conversations - handed_off, conversations),
        handoff_rate: rate(handed_off, conversations),
        prompt_tokens: sum(|a| a.prompt_tokens),
        output_tokens: sum(|a| a.output_tokens),
        cost_usd: cost_of(state, models),
    }
}

fn cost_of(state: &AppState, models: &[store::ModelTokens]) -> f64 {
    let usd: f64 = models
        .iter()
        .filter_map(|m| {
            crate::ai::cost(
                &state.settings,
                m.model.as_deref()?,
                m.prompt_tokens,
                m.output_tokens,
            )
        })
        .sum();
    (usd * 1_000_000.0).round() / 1_000_000.0
}

/// Sessions, today's messages and answers, the agents, the pipeline and the webhooks, in one
/// answer (a dashboard's refresh).
#[utoipa::path(tag = "stats", params(PeriodQuery), responses((status = 200, description = "The tenant's figures", body = Overview), CommonErrors), security(("api_key" = [])))]
#[get("/stats/overview")]
pub async fn stats_overview(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<PeriodQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_of(&state, &caller, query.tenant_id).await?;
    let mut conn = state.db.get().await?;
    let zone = zone_of(&mut conn, tenant).await?;
    let now = Utc::now();
    let p = Period::parse(
        query.from.as_deref(),
        query.to.as_deref(),
        zone,
        today(zone, now),
    )?;
    let totals = store::message_totals(&mut conn, Some(tenant), p.from, p.to, None).await?;
    let agents = store::agent_figures(&mut conn, Some(tenant), p.from, p.to).await?;
    let models = store::tokens_by_model(&mut conn, Some(tenant), p.from, p.to).await?;
    let columns = store::cards_per_column(&mut conn, tenant).await?;
    let hooks = store::webhook_deliveries(&mut conn, Some(tenant), p.from, p.to).await?;
    Ok(HttpResponse::Ok().json(Overview {
        tenant_id: tenant,
        time_zone: zone.name().to_owned(),
        from: p.from,
        to: p.to,
        sessions: session_stats(store::sessions_by_status(&mut conn, Some(tenant)).await?),
        messages: MessageFigures::from(&totals),
        first_response: FirstResponse::from(&totals),
        ai: ai_stats(&state, &agents, &models),
        active_chats_24h: store::active_chats(&mut conn, Some(tenant), now - Duration::hours(24))
            .await?,
        cards: CardStats {
            total: columns.iter().map(|c| c.cards).sum(),
            by_column: columns
                .into_iter()
                .map(|c| ColumnCount {
                    board_id: c.board_id,
                    board: c.board,
                    column_id: c.column_id,
                    column: c.column,
                    cards: c.cards,
                })
                .collect(),
        },
        webhooks: webhook_stats(&hooks),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SeriesQuery {
    /// RFC 3339, or a date in the tenant's time zone. Default: 24 hours (hourly) or 30 days
    /// (daily) before `to`.
    pub from: Option<String>,
    /// RFC 3339, or a date (its whole day counts). Default: the end of the current hour or day.
    pub to: Option<String>,
    /// `hour` (default) or `day`, in the tenant's time zone.
    pub interval: Option<String>,
    pub session_id: Option<Uuid>,
    /// The admin key names the tenant.
    pub tenant_id: Option<Uuid>,
}

/// One local hour or day.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesItem {
    /// Where the hour or day starts.
    pub at: DateTime<Utc>,
    /// The same instant as the tenant's wall clock shows it.
    pub local: String,
    #[serde(rename = "in")]
    pub msgs_in: i64,
    pub out: i64,
    pub out_bot: i64,
    pub failed: i64,
    pub delivered: i64,
    pub read: i64,
    pub first_response_human_avg_ms: Option<i64>,
    pub first_response_bot_avg_ms: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Series {
    pub interval: String,
    pub time_zone: String,
    pub items: Vec<SeriesItem>,
}

/// The most points one series may have.
const MAX_POINTS: i64 = 2_000;

/// Messages in, out and failed per local hour or day.
#[utoipa::path(tag = "stats", params(SeriesQuery), responses((status = 200, description = "A time series", body = Series), CommonErrors), security(("api_key" = [])))]
#[get("/stats/messages")]
pub async fn stats_messages(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<SeriesQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_of(&state, &caller, query.tenant_id).await?;
    let interval = match query.interval.as_deref().unwrap_or("hour") {
        i @ ("hour" | "day") => i,
        _ => return Err(ApiError::validation("interval", "must be hour or day")),
    };
    if let Some(s) = query.session_id {
        let (session, _) = crate::sessions::load_for(&state, &caller, s).await?;
        if session.tenant_id != tenant {
            return Err(ApiError::NotFound("session"));
        }
    }
    let mut conn = state.db.get().await?;
    let zone = zone_of(&mut conn, tenant).await?;
    let now = Utc::now();
    let step = if interval == "hour" {
        Duration::hours(1)
    } else {
        Duration::days(1)
    };
    let default = if interval == "hour" {
        let local = now.with_timezone(&zone);
        let hour = local
            .date_naive()
            .and_hms_opt(chrono::Timelike::hour(&local), 0, 0);
        let end = local_instant(zone, hour.unwrap_or_default() + Duration::hours(1));
        Period {
            from: end - Duration::hours(24),
            to: end,
        }
    } else {
        let t = today(zone, now);
        Period {
            from: t.to - Duration::days(30),
            to: t.to,
        }
    };
    let p = Period::parse(query.from.as_deref(), query.to.as_deref(), zone, default)?;
    if (p.to - p.from).num_seconds() / step.num_seconds() > MAX_POINTS {
        return Err(ApiError::validation(
            "from",
            format!(
                "a series has at most {MAX_POINTS} points: use a shorter period or interval=day"
            ),
        ));
    }
    let points = store::message_series(
        &mut conn,
        tenant,
        p.from,
        p.to,
        interval,
        zone.name(),
        query.session_id,
    )
    .await?;
    Ok(HttpResponse::Ok().json(Series {
        interval: interval.to_owned(),
        time_zone: zone.name().to_owned(),
        items: points
            .into_iter()
            .map(|s| SeriesItem {
                at: s.at,
                local: s
                    .at
                    .with_timezone(&zone)
                    .format("%Y-%m-%dT%H:%M:%S%:z")
                    .to_string(),
                msgs_in: s.totals.msgs_in,
                out: s.totals.msgs_out,
                out_bot: s.totals.msgs_out_bot,
                failed: s.totals.msgs_failed,
                delivered: s.totals.msgs_delivered,
                read: s.totals.msgs_read,
                first_response_human_avg_ms: average(
                    s.totals.response_ms_human,
                    s.totals.responses_human,
                ),
                first_response_bot_avg_ms: average(
                    s.totals.response_ms_bot,
                    s.totals.responses_bot,
                ),
            })
            .collect(),
    }))
}

/// One agent's work over the period.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentPeriodStats {
    /// `null`: calls not made for an agent (prompt generation, suggestions).
    pub agent_id: Option<Uuid>,
    pub name: Option<String>,
    pub model: Option<String>,
    pub replies: i64,
    pub fallbacks: i64,
    pub errors: i64,
    pub conversations: i64,
    pub handed_off: i64,
    pub containment_rate: Option<f64>,
    pub handoff_rate: Option<f64>,
    pub prompt_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: Option<f64>,
    pub avg_latency_ms: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentsReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub items: Vec<AgentPeriodStats>,
    pub total: AiStats,
}

pub(crate) fn agent_stats(state: &AppState, a: store::AgentFigures) -> AgentPeriodStats {
    AgentPeriodStats {
        cost_usd: a
            .model
            .as_deref()
            .and_then(|m| crate::ai::cost(&state.settings, m, a.prompt_tokens, a.output_tokens)),
        containment_rate: rate(a.conversations - a.handed_off, a.conversations),
        handoff_rate: rate(a.handed_off, a.conversations),
        agent_id: a.agent_id,
        name: a.name,
        model: a.model,
        replies: a.replies,
        fallbacks: a.fallbacks,
        errors: a.errors,
        conversations: a.conversations,
        handed_off: a.handed_off,
        prompt_tokens: a.prompt_tokens,
        output_tokens: a.output_tokens,
        avg_latency_ms: a.avg_latency_ms,
    }
}

/// Per agent: replies, conversations, containment and handoff rates, tokens and cost.
#[utoipa::path(tag = "stats", params(PeriodQuery), responses((status = 200, description = "Per agent", body = AgentsReport), CommonErrors), security(("api_key" = [])))]
#[get("/stats/agents")]
pub async fn stats_agents(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<PeriodQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_of(&state, &caller, query.tenant_id).await?;
    let mut conn = state.db.get().await?;
    let zone = zone_of(&mut conn, tenant).await?;
    let p = Period::parse(
        query.from.as_deref(),
        query.to.as_deref(),
        zone,
        today(zone, Utc::now()),
    )?;
    let figures = store::agent_figures(&mut conn, Some(tenant), p.from, p.to).await?;
    let models = store::tokens_by_model(&mut conn, Some(tenant), p.from, p.to).await?;
    let total = ai_stats(&state, &figures, &models);
    Ok(HttpResponse::Ok().json(AgentsReport {
        from: p.from,
        to: p.to,
        items: figures
            .into_iter()
            .map(|a| agent_stats(&state, a))
            .collect(),
        total,
    }))
}

/// The last 60 seconds.
#[derive(Debug, Serialize, ToSchema)]
pub struct Realtime {
    pub at: DateTime<Utc>,
    pub window_secs: i64,
    #[serde(rename = "in")]
    pub msgs_in: i64,
    pub out: i64,
    pub failed: i64,
    /// Messages waiting to be sent now.
    pub queued: i64,
    pub ai_calls: i64,
    pub ai_tokens: i64,
    pub events: i64,
    /// Chats with a message in the window.
    pub active_chats: i64,
    pub sessions_connected: i64,
}

#[utoipa::path(tag = "stats", params(TenantQuery), responses((status = 200, description = "The last 60 seconds", body = Realtime), CommonErrors), security(("api_key" = [])))]
#[get("/stats/realtime")]
pub async fn stats_realtime(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<TenantQuery>,
) -> Result<HttpResponse, ApiError> {
    const WINDOW: i64 = 60;
    let tenant = tenant_of(&state, &caller, query.tenant_id).await?;
    let mut conn = state.db.get().await?;
    let r = store::recent(&mut conn, tenant, WINDOW).await?;
    let sessions = store::sessions_by_status(&mut conn, Some(tenant)).await?;
    Ok(HttpResponse::Ok().json(Realtime {
        at: Utc::now(),
        window_secs: WINDOW,
        msgs_in: r.msgs_in,
        out: r.msgs_out,
        failed: r.msgs_failed,
        queued: r.queued,
        ai_calls: r.ai_calls,
        ai_tokens: r.ai_tokens,
        events: r.events,
        active_chats: r.chats,
        sessions_connected: sessions
            .iter()
            .find(|s| s.key == "connected")
            .map_or(0, |s| s.n),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SystemQuery {
    /// RFC 3339 or a date (UTC). Default: the start of today (UTC).
    pub from: Option<String>,
    /// RFC 3339 or a date (its whole day counts). Default: the end of today (UTC).
    pub to: Option<String>,
}

/// The whole system's figures.
#[derive(Debug, Serialize, ToSchema)]
pub struct SystemStats {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub tenants: i64,
    pub tenants_by_tier: BTreeMap<String, i64>,
    pub sessions: SessionStats,
    pub messages: MessageFigures,
    pub first_response: FirstResponse,
    pub ai: AiStats,
    pub active_chats_24h: i64,
    pub webhooks: WebhookStats,
}

/// The whole system (admin key only).
#[utoipa::path(tag = "stats", params(SystemQuery), responses((status = 200, description = "The system's figures", body = SystemStats), CommonErrors), security(("api_key" = [])))]
#[get("/admin/stats")]
pub async fn system_stats(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<SystemQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let now = Utc::now();
    let p = Period::parse(
        query.from.as_deref(),
        query.to.as_deref(),
        Tz::UTC,
        today(Tz::UTC, now),
    )?;
    let mut conn = state.db.get().await?;
    let tiers = store::tenants_by_tier(&mut conn).await?;
    let totals = store::message_totals(&mut conn, None, p.from, p.to, None).await?;
    let agents = store::agent_figures(&mut conn, None, p.from, p.to).await?;
    let models = store::tokens_by_model(&mut conn, None, p.from, p.to).await?;
    let hooks = store::webhook_deliveries(&mut conn, None, p.from, p.to).await?;
    Ok(HttpResponse::Ok().json(SystemStats {
        from: p.from,
        to: p.to,
        tenants: tiers.iter().map(|t| t.n).sum(),
        tenants_by_tier: tiers.into_iter().map(|t| (t.key, t.n)).collect(),
        sessions: session_stats(store::sessions_by_status(&mut conn, None).await?),
        messages: MessageFigures::from(&totals),
        first_response: FirstResponse::from(&totals),
        ai: ai_stats(&state, &agents, &models),
        active_chats_24h: store::active_chats(&mut conn, None, now - Duration::hours(24)).await?,
        webhooks: webhook_stats(&hooks),
    }))
}

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(stats_overview)
        .service(stats_messages)
        .service(stats_agents)
        .service(stats_realtime)
        .service(system_stats)
        .service(export::export);
    reports::routes(cfg);
}
