//! Tiers: the catalogue (from config), the caller's usage against each quota, warnings at
//! 80 %, recommendations and a cost analysis from the last 30 days, and moving between tiers
//! (live sessions change pools without pairing again). Each quota is enforced where its
//! resource is created or used: sessions at creation, boards at creation, AI tokens and calls
//! by the AiActor, messages per minute by each session's send pacing.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, get, post, web};
use chrono::{Duration, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ai::tenant_of;
use crate::app::AppState;
use crate::auth::Caller;
use crate::configuration::Settings;
use crate::error::ApiError;
use crate::http::TenantQuery;
use crate::http::json::ValidJson;
use crate::http::openapi::CommonErrors;
use crate::notifications::QUOTA_WARNING_PERCENT;
use crate::tenants::{Tier, tier_from_db};

/// The quotas, by the names the API uses.
pub const SESSIONS: &str = "sessions";
pub const MESSAGES_PER_MINUTE: &str = "messages_per_minute";
pub const AI_TOKENS_PER_DAY: &str = "ai_tokens_per_day";
pub const AI_CALLS_PER_MINUTE: &str = "ai_calls_per_minute";
pub const BOARDS: &str = "boards";
pub const FUNCTIONS: &str = "functions";

/// A tier's quotas (0: unlimited).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Quotas {
    pub sessions: u32,
    /// Messages each session sends per minute (its pacing).
    pub messages_per_minute: u32,
    pub ai_tokens_per_day: u32,
    pub ai_calls_per_minute: u32,
    pub boards: u32,
    pub functions: u32,
}

impl Quotas {
    pub fn of(settings: &Settings, tier: Tier) -> Quotas {
        let plan = settings.tiers.for_tier(tier);
        Quotas {
            sessions: settings.sessions.quotas.for_tier(tier),
            messages_per_minute: settings.messages.rate_per_minute.for_tier(tier),
            ai_tokens_per_day: settings.ai.tokens_per_day.for_tier(tier),
            ai_calls_per_minute: settings.ai.calls_per_minute.for_tier(tier),
            boards: plan.boards.min(settings.crm.max_boards_per_tenant),
            functions: plan.functions,
        }
    }

    fn pairs(&self) -> [(&'static str, u32); 6] {
        [
            (SESSIONS, self.sessions),
            (MESSAGES_PER_MINUTE, self.messages_per_minute),
            (AI_TOKENS_PER_DAY, self.ai_tokens_per_day),
            (AI_CALLS_PER_MINUTE, self.ai_calls_per_minute),
            (BOARDS, self.boards),
            (FUNCTIONS, self.functions),
        ]
    }
}

/// How a tier's sessions share WhatsApp connections.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolSharing {
    /// Sessions per shared connection arbiter (1: dedicated).
    pub sessions_per_connection: usize,
    pub dedicated: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TierInfo {
    pub name: String,
    pub description: String,
    pub price_usd_per_month: f64,
    pub quotas: Quotas,
    pub pool: PoolSharing,
}

fn tier_info(settings: &Settings, tier: Tier) -> TierInfo {
    let plan = settings.tiers.for_tier(tier);
    let pool = match tier {
        Tier::Standard => settings.sessions.pools.standard,
        Tier::Professional => settings.sessions.pools.professional,
        Tier::Enterprise => settings.sessions.pools.enterprise,
    };
    TierInfo {
        name: tier.as_str().to_owned(),
        description: plan.description.clone(),
        price_usd_per_month: plan.price_usd_per_month,
        quotas: Quotas::of(settings, tier),
        pool: PoolSharing {
            sessions_per_connection: pool.sessions_per_arbiter.max(1),
            dedicated: pool.sessions_per_arbiter <= 1,
        },
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TierList {
    pub items: Vec<TierInfo>,
}

/// Every tier with its quotas, pool sharing and price.
#[utoipa::path(tag = "tiers", responses((status = 200, description = "The catalogue", body = TierList), CommonErrors), security(("api_key" = [])))]
#[get("/tiers")]
pub async fn list_tiers(_caller: Caller, state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(TierList {
        items: Tier::ALL
            .into_iter()
            .map(|t| tier_info(&state.settings, t))
            .collect(),
    })
}

/// Where a tenant stands on every quota now.
#[derive(Debug, Clone, Default, QueryableByName)]
pub struct Usage {
    #[diesel(sql_type = BigInt)]
    pub sessions: i64,
    /// The busiest session's sends in the last minute.
    #[diesel(sql_type = BigInt)]
    pub messages_per_minute: i64,
    /// Today (UTC), every kind of call.
    #[diesel(sql_type = BigInt)]
    pub ai_tokens_per_day: i64,
    #[diesel(sql_type = BigInt)]
    pub ai_calls_per_minute: i64,
    #[diesel(sql_type = BigInt)]
    pub boards: i64,
}

impl Usage {
    fn of(&self, quota: &str) -> i64 {
        match quota {
            SESSIONS => self.sessions,
            MESSAGES_PER_MINUTE => self.messages_per_minute,
            AI_TOKENS_PER_DAY => self.ai_tokens_per_day,
            AI_CALLS_PER_MINUTE => self.ai_calls_per_minute,
            BOARDS => self.boards,
            // User functions arrive with their capability: none exist yet.
            _ => 0,
        }
    }
}

pub async fn usage(conn: &mut AsyncPgConnection, tenant: Uuid) -> diesel::QueryResult<Usage> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT (SELECT count(*) FROM sessions WHERE tenant_id = $1) AS sessions, \
               (SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM sessions s \
                  JOIN messages m ON m.session_id = s.id \
                  WHERE s.tenant_id = $1 AND m.direction = 'out' \
                    AND m.created_at >= now() - interval '1 minute' GROUP BY s.id) b)::bigint \
                 AS messages_per_minute, \
               {} AS ai_tokens_per_day, \
               (SELECT count(*) FROM ai_calls k WHERE k.tenant_id = $1 \
                  AND k.created_at >= now() - interval '1 minute' AND k.kind <> 'handoff' \
                  AND NOT k.cached) AS ai_calls_per_minute, \
               (SELECT count(*) FROM boards WHERE tenant_id = $1) AS boards",
            crate::ai::store::tokens_today_sql("$1")
        )
    });
    diesel::sql_query(SQL.as_str())
        .bind::<SqlUuid, _>(tenant)
        .get_result(conn)
        .await
}

/// One quota and where the tenant stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaUsage {
    pub quota: String,
    /// 0: unlimited.
    pub limit: u32,
    pub used: i64,
    /// Of the limit; `null` when unlimited.
    pub percent: Option<u32>,
}

fn quota_usage(quotas: &Quotas, usage: &Usage) -> Vec<QuotaUsage> {
    quotas
        .pairs()
        .into_iter()
        .map(|(quota, limit)| {
            let used = usage.of(quota);
            QuotaUsage {
                quota: quota.to_owned(),
                limit,
                used,
                percent: (limit > 0).then(|| {
                    u32::try_from(used.max(0) * 100 / i64::from(limit)).unwrap_or(u32::MAX)
                }),
            }
        })
        .collect()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CurrentTier {
    pub tenant_id: Uuid,
    pub tier: TierInfo,
    pub usage: Vec<QuotaUsage>,
}

async fn current(state: &AppState, tenant: Uuid) -> Result<(Tier, Usage), ApiError> {
    let mut conn = state.db.get().await?;
    let row = crate::tenants::store::get_tenant(&mut conn, tenant)
        .await?
        .ok_or(ApiError::NotFound("tenant"))?;
    let tier = tier_from_db(&row.tier)?;
    Ok((tier, usage(&mut conn, tenant).await?))
}

/// The caller's tier with its usage against each quota.
#[utoipa::path(tag = "tiers", params(TenantQuery), responses((status = 200, description = "The tier and usage", body = CurrentTier), CommonErrors), security(("api_key" = [])))]
#[get("/tier")]
pub async fn get_tier(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<TenantQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_of(&state, &caller, query.tenant_id).await?;
    let (tier, used) = current(&state, tenant).await?;
    let info = tier_info(&state.settings, tier);
    Ok(HttpResponse::Ok().json(CurrentTier {
        tenant_id: tenant,
        usage: quota_usage(&info.quotas, &used),
        tier: info,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaWarning {
    pub quota: String,
    pub limit: u32,
    pub used: i64,
    pub percent: u32,
    /// `warning` from 80 %, `critical` at the limit.
    pub level: String,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Warnings {
    pub tier: String,
    pub items: Vec<QuotaWarning>,
}

/// Quotas at 80 % or more.
#[utoipa::path(tag = "tiers", params(TenantQuery), responses((status = 200, description = "Quotas at 80 % or more", body = Warnings), CommonErrors), security(("api_key" = [])))]
#[get("/tier/warnings")]
pub async fn get_warnings(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<TenantQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_of(&state, &caller, query.tenant_id).await?;
    let (tier, used) = current(&state, tenant).await?;
    let items = quota_usage(&Quotas::of(&state.settings, tier), &used)
        .into_iter()
        .filter_map(|q| {
            let percent = q.percent?;
            (u64::from(percent) >= QUOTA_WARNING_PERCENT).then(|| QuotaWarning {
                level: if percent >= 100 {
                    "critical"
                } else {
                    "warning"
                }
                .to_owned(),
                message: format!(
                    "{} of {} {} used ({percent} %)",
                    q.used,
                    q.limit,
                    q.quota.replace('_', " ")
                ),
                quota: q.quota,
                limit: q.limit,
                used: q.used,
                percent,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(Warnings {
        tier: tier.as_str().to_owned(),
        items,
    }))
}

/// The peaks of the last 30 days that decide which tier fits.
#[derive(Debug, Clone, Serialize, QueryableByName, ToSchema)]
pub struct Peaks {
    #[diesel(sql_type = BigInt)]
    pub sessions: i64,
    /// The busiest quarter-hour of any one session, as messages a minute (rounded up).
    #[diesel(sql_type = BigInt)]
    pub messages_per_minute: i64,
    /// The busiest UTC day.
    #[diesel(sql_type = BigInt)]
    pub ai_tokens_per_day: i64,
    #[diesel(sql_type = BigInt)]
    pub boards: i64,
    #[diesel(sql_type = BigInt)]
    pub messages_out: i64,
    #[diesel(sql_type = BigInt)]
    pub messages_in: i64,
    #[diesel(sql_type = BigInt)]
    pub ai_conversations: i64,
}

async fn peaks(conn: &mut AsyncPgConnection, tenant: Uuid) -> diesel::QueryResult<Peaks> {
    let since = Utc::now() - Duration::days(30);
    diesel::sql_query(
        "WITH r AS ( \
           SELECT session_id, bucket, sum(msgs_out) AS o, sum(msgs_in) AS i FROM ( \
             SELECT session_id, bucket, msgs_out, msgs_in FROM stat_buckets \
               WHERE tenant_id = $1 AND bucket >= $2 \
             UNION ALL SELECT session_id, bucket, msgs_out, msgs_in FROM stat_deltas \
               WHERE tenant_id = $1 AND bucket >= $2) x GROUP BY 1, 2) \
         SELECT (SELECT count(*) FROM sessions WHERE tenant_id = $1) AS sessions, \
           coalesce((SELECT ceil(max(o) / 15.0) FROM r), 0)::bigint AS messages_per_minute, \
           coalesce((SELECT max(t) FROM (SELECT sum(prompt_tokens + output_tokens) AS t \
              FROM ai_calls WHERE tenant_id = $1 AND created_at >= $2 \
              GROUP BY (created_at AT TIME ZONE 'UTC')::date) d), 0)::bigint AS ai_tokens_per_day, \
           (SELECT count(*) FROM boards WHERE tenant_id = $1) AS boards, \
           coalesce((SELECT sum(o) FROM r), 0)::bigint AS messages_out, \
           coalesce((SELECT sum(i) FROM r), 0)::bigint AS messages_in, \
           (SELECT count(DISTINCT (session_id, chat)) FROM ai_calls WHERE tenant_id = $1 \
              AND created_at >= $2 AND kind IN ('reply', 'fallback', 'handoff')) AS ai_conversations",
    )
    .bind::<SqlUuid, _>(tenant)
    .bind::<diesel::sql_types::Timestamptz, _>(since)
    .get_result(conn)
    .await
}

impl Peaks {
    fn of(&self, quota: &str) -> i64 {
        match quota {
            SESSIONS => self.sessions,
            MESSAGES_PER_MINUTE => self.messages_per_minute,
            AI_TOKENS_PER_DAY => self.ai_tokens_per_day,
            BOARDS => self.boards,
            _ => 0,
        }
    }
}

/// The first quota of `tier` that `peaks` would not fit in (`headroom` percent of it).
fn misfit(
    settings: &Settings,
    tier: Tier,
    peaks: &Peaks,
    headroom: i64,
) -> Option<(&'static str, i64, u32)> {
    Quotas::of(settings, tier)
        .pairs()
        .into_iter()
        .filter(|(_, limit)| *limit > 0)
        .find(|(quota, limit)| peaks.of(quota) * 100 > i64::from(*limit) * headroom)
        .map(|(quota, limit)| (quota, peaks.of(quota), limit))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Recommendation {
    pub current: String,
    pub recommended: String,
    /// `upgrade`, `downgrade` or `stay`.
    pub action: String,
    pub reasons: Vec<String>,
    pub peaks: Peaks,
    /// What each tier's price would be for this usage; `fits` within 80 % of every quota.
    pub tiers: Vec<TierFit>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TierFit {
    pub tier: String,
    pub price_usd_per_month: f64,
    pub fits: bool,
    /// The first quota that the last 30 days' peak would exceed 80 % of.
    pub tight_quota: Option<String>,
}

/// The cheapest tier whose quotas hold the last 30 days' peaks with 20 % to spare.
#[utoipa::path(tag = "tiers", params(TenantQuery), responses((status = 200, description = "A recommendation", body = Recommendation), CommonErrors), security(("api_key" = [])))]
#[get("/tier/recommendations")]
pub async fn get_recommendations(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<TenantQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_of(&state, &caller, query.tenant_id).await?;
    let (tier, _) = current(&state, tenant).await?;
    let mut conn = state.db.get().await?;
    let peaks = peaks(&mut conn, tenant).await?;
    let settings = &state.settings;
    let fits: Vec<TierFit> = Tier::ALL
        .into_iter()
        .map(|t| {
            let tight = misfit(
                settings,
                t,
                &peaks,
                i64::try_from(QUOTA_WARNING_PERCENT).unwrap_or(80),
            );
            TierFit {
                tier: t.as_str().to_owned(),
                price_usd_per_month: settings.tiers.for_tier(t).price_usd_per_month,
                fits: tight.is_none(),
                tight_quota: tight.map(|(q, _, _)| q.to_owned()),
            }
        })
        .collect();
    // The cheapest that fits; none fits: the largest.
    let recommended = Tier::ALL
        .into_iter()
        .zip(&fits)
        .filter(|(_, f)| f.fits)
        .min_by(|(a, _), (b, _)| {
            let price = |t: &Tier| settings.tiers.for_tier(*t).price_usd_per_month;
            price(a).total_cmp(&price(b))
        })
        .map_or(Tier::Enterprise, |(t, _)| t);
    let mut reasons = Vec::new();
    if let Some((quota, peak, limit)) = misfit(settings, tier, &peaks, 80) {
        reasons.push(format!(
            "the last 30 days peaked at {peak} {} against {limit} on {}",
            quota.replace('_', " "),
            tier.as_str()
        ));
    }
    if recommended < tier {
        reasons.push(format!(
            "every peak of the last 30 days fits {} with 20 % to spare, for {} USD a month less",
            recommended.as_str(),
            settings.tiers.for_tier(tier).price_usd_per_month
                - settings.tiers.for_tier(recommended).price_usd_per_month
        ));
    }
    if reasons.is_empty() {
        reasons.push(format!("{} fits the last 30 days", tier.as_str()));
    }
    Ok(HttpResponse::Ok().json(Recommendation {
        current: tier.as_str().to_owned(),
        recommended: recommended.as_str().to_owned(),
        action: match recommended.cmp(&tier) {
            std::cmp::Ordering::Greater => "upgrade",
            std::cmp::Ordering::Less => "downgrade",
            std::cmp::Ordering::Equal => "stay",
        }
        .to_owned(),
        reasons,
        peaks,
        tiers: fits,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CostAnalysis {
    pub tier: String,
    pub period_days: i64,
    pub price_usd: f64,
    /// The models' cost (`ai.prices`) of the period's tokens.
    pub ai_cost_usd: f64,
    pub total_usd: f64,
    pub messages_in: i64,
    pub messages_out: i64,
    pub ai_conversations: i64,
    pub cost_per_message_usd: Option<f64>,
    pub cost_per_ai_conversation_usd: Option<f64>,
    /// Every tier's total for the same usage, and whether it fits.
    pub alternatives: BTreeMap<String, Alternative>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Alternative {
    pub total_usd: f64,
    pub fits: bool,
}

fn cents(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// What the last 30 days cost: the tier's price, the AI tokens, per message and conversation.
#[utoipa::path(tag = "tiers", params(TenantQuery), responses((status = 200, description = "The last 30 days' costs", body = CostAnalysis), CommonErrors), security(("api_key" = [])))]
#[get("/tier/cost-analysis")]
pub async fn get_cost_analysis(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<TenantQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_of(&state, &caller, query.tenant_id).await?;
    let (tier, _) = current(&state, tenant).await?;
    let mut conn = state.db.get().await?;
    let peaks = peaks(&mut conn, tenant).await?;
    let now = Utc::now();
    let models = crate::stats::store::tokens_by_model(
        &mut conn,
        Some(tenant),
        now - Duration::days(30),
        now,
    )
    .await?;
    let ai_cost: f64 = models
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
    let price = state.settings.tiers.for_tier(tier).price_usd_per_month;
    let total = price + ai_cost;
    let messages = peaks.messages_in + peaks.messages_out;
    Ok(HttpResponse::Ok().json(CostAnalysis {
        tier: tier.as_str().to_owned(),
        period_days: 30,
        price_usd: price,
        ai_cost_usd: cents(ai_cost),
        total_usd: cents(total),
        messages_in: peaks.messages_in,
        messages_out: peaks.messages_out,
        ai_conversations: peaks.ai_conversations,
        cost_per_message_usd: (messages > 0).then(|| cents(total / messages as f64)),
        cost_per_ai_conversation_usd: (peaks.ai_conversations > 0)
            .then(|| cents(total / peaks.ai_conversations as f64)),
        alternatives: Tier::ALL
            .into_iter()
            .map(|t| {
                (
                    t.as_str().to_owned(),
                    Alternative {
                        total_usd: cents(
                            state.settings.tiers.for_tier(t).price_usd_per_month + ai_cost,
                        ),
                        fits: misfit(&state.settings, t, &peaks, 100).is_none(),
                    },
                )
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChangeTier {
    /// `standard`, `professional` or `enterprise`.
    pub tier: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TierChanged {
    pub tenant_id: Uuid,
    pub from: String,
    pub tier: TierInfo,
    pub usage: Vec<QuotaUsage>,
    /// Live sessions moved to the new tier's pool (same device, no QR).
    pub sessions_moved: usize,
}

async fn change(
    state: &AppState,
    caller: &Caller,
    tenant: Option<Uuid>,
    body: ChangeTier,
    up: bool,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_of(state, caller, tenant).await?;
    let target = Tier::parse(&body.tier).ok_or_else(|| {
        ApiError::validation("tier", "must be standard, professional or enterprise")
    })?;
    let (tier, used) = current(state, tenant).await?;
    if up && target <= tier {
        return Err(ApiError::validation(
            "tier",
            format!("an upgrade goes above {}", tier.as_str()),
        ));
    }
    if !up && target >= tier {
        return Err(ApiError::validation(
            "tier",
            format!("a downgrade goes below {}", tier.as_str()),
        ));
    }
    if !up {
        // What exists must fit: sessions and boards as they are, today's tokens.
        let quotas = Quotas::of(&state.settings, target);
        for (quota, limit) in [
            (SESSIONS, quotas.sessions),
            (BOARDS, quotas.boards),
            (AI_TOKENS_PER_DAY, quotas.ai_tokens_per_day),
        ] {
            let n = used.of(quota);
            if limit > 0 && n > i64::from(limit) {
                return Err(ApiError::TierDoesNotFit {
                    quota,
                    used: n,
                    limit,
                    tier: target.as_str(),
                });
            }
        }
    }
    {
        let mut conn = state.db.get().await?;
        // Only from the tier that was checked: two changes at once never skip the check.
        let updated = diesel::sql_query(
            "UPDATE tenants SET tier = $2, updated_at = now() WHERE id = $1 AND tier = $3",
        )
        .bind::<SqlUuid, _>(tenant)
        .bind::<diesel::sql_types::Text, _>(target.as_str())
        .bind::<diesel::sql_types::Text, _>(tier.as_str())
        .execute(&mut conn)
        .await?;
        if updated == 0 {
            return Err(ApiError::Conflict {
                code: crate::error::ErrorCode::TierDoesNotFit,
                message: "the tier changed meanwhile: look again".into(),
            });
        }
    }
    let moved =
        crate::sessions::lifecycle::move_tenant_sessions(state.sessions(), tenant, target).await?;
    tracing::info!(tenant_id = %tenant, from = tier.as_str(), to = target.as_str(), moved, "tier changed");
    let (_, used) = current(state, tenant).await?;
    let info = tier_info(&state.settings, target);
    Ok(HttpResponse::Ok().json(TierChanged {
        tenant_id: tenant,
        from: tier.as_str().to_owned(),
        usage: quota_usage(&info.quotas, &used),
        tier: info,
        sessions_moved: moved,
    }))
}

/// Moves to a higher tier; live sessions move pools.
#[utoipa::path(tag = "tiers", params(TenantQuery), request_body = ChangeTier, responses((status = 200, description = "Changed", body = TierChanged), CommonErrors), security(("api_key" = [])))]
#[post("/tier/upgrade")]
pub async fn upgrade(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<TenantQuery>,
    body: Result<ValidJson<ChangeTier>, ApiError>,
) -> Result<HttpResponse, ApiError> {
    change(&state, &caller, query.tenant_id, body?.into_inner(), true).await
}

/// Moves to a lower tier, if what the tenant has fits it (409 `tier_does_not_fit` naming the
/// quota otherwise).
#[utoipa::path(tag = "tiers", params(TenantQuery), request_body = ChangeTier, responses((status = 200, description = "Changed", body = TierChanged), CommonErrors), security(("api_key" = [])))]
#[post("/tier/downgrade")]
pub async fn downgrade(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<TenantQuery>,
    body: Result<ValidJson<ChangeTier>, ApiError>,
) -> Result<HttpResponse, ApiError> {
    change(&state, &caller, query.tenant_id, body?.into_inner(), false).await
}

/// After a resource was created: when its quota is now at 80 % or more, the tenant's members
/// are told (once a day per quota). Best effort: the creation stands either way.
pub async fn warn_if_near(state: &AppState, tenant: Uuid, quota: &'static str) {
    let result = async {
        let (tier, used) = current(state, tenant).await?;
        let limit = limit_of(&state.settings, tier, quota);
        crate::notifications::quota_warning(state, tenant, quota, used.of(quota), limit).await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(tenant_id = %tenant, quota, error = %e, "checking a quota for its warning");
    }
}

/// The limit of `quota` in `tier` (0: unlimited).
pub fn limit_of(settings: &Settings, tier: Tier, quota: &str) -> u32 {
    Quotas::of(settings, tier)
        .pairs()
        .into_iter()
        .find(|(q, _)| *q == quota)
        .map_or(0, |(_, l)| l)
}

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(list_tiers)
        .service(get_tier)
        .service(get_warnings)
        .service(get_recommendations)
        .service(get_cost_analysis)
        .service(upgrade)
        .service(downgrade);
}
