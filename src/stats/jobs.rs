//! The statistics' background work on every node: folding the rollup's deltas (any node,
//! `SKIP LOCKED`), forgetting waits no answer will end, and refreshing the business gauges
//! of `/metrics`.

use std::time::Duration;

use chrono::Utc;
use chrono_tz::Tz;

use super::store;
use crate::app::AppState;
use crate::metrics::{
    BUSINESS_FIGURES, BUSINESS_FIRST_RESPONSE_MS, BUSINESS_MESSAGES_TODAY, BUSINESS_RATE,
    BUSINESS_TENANTS,
};

/// Deltas folded per statement.
const FOLD_BATCH: i64 = 20_000;
/// How often the deltas are folded and the gauges refreshed.
const EVERY: Duration = Duration::from_secs(5);
/// A contact's message unanswered this long no longer waits for a first response.
const WAIT_DAYS: i64 = 30;

pub fn schedule(jobs: &mut crate::app::jobs::Jobs, state: &actix_web::web::Data<AppState>) {
    let state = state.clone();
    jobs.spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut passes: u64 = 0;
        loop {
            tick.tick().await;
            if let Err(e) = fold_all(&state).await {
                tracing::warn!(error = %e, "folding statistics");
            }
            if passes.is_multiple_of(720)
                && let Err(e) = forget_waits(&state).await
            {
                tracing::warn!(error = %e, "forgetting stale waits");
            }
            if let Err(e) = refresh_gauges(&state).await {
                tracing::warn!(error = %e, "refreshing the business gauges");
            }
            passes += 1;
        }
    });
}

/// Folds every delta waiting (a batch at a time); returns how many.
pub async fn fold_all(state: &AppState) -> anyhow::Result<i64> {
    let mut conn = state.db.get().await?;
    let mut total = 0;
    loop {
        let n = store::fold(&mut conn, FOLD_BATCH).await?;
        total += n;
        if n < FOLD_BATCH {
            return Ok(total);
        }
    }
}

async fn forget_waits(state: &AppState) -> anyhow::Result<()> {
    let mut conn = state.db.get().await?;
    store::forget_stale_waits(&mut conn, WAIT_DAYS).await?;
    Ok(())
}

/// The system's figures into the gauges.
pub async fn refresh_gauges(state: &AppState) -> anyhow::Result<()> {
    use diesel_async::RunQueryDsl;
    let now = Utc::now();
    let day = super::today(Tz::UTC, now);
    let since = now - chrono::Duration::hours(24);
    let mut conn = state.db.get().await?;
    let today = store::message_totals(&mut conn, None, day.from, day.to, None).await?;
    for (kind, n) in [
        ("in", today.msgs_in),
        ("out", today.msgs_out),
        ("out_bot", today.msgs_out_bot),
        ("failed", today.msgs_failed),
        ("delivered", today.msgs_delivered),
        ("read", today.msgs_read),
    ] {
        BUSINESS_MESSAGES_TODAY.with_label_values(&[kind]).set(n);
    }
    // A quarter-hour bucket is the rollup's grain: "24 hours" starts at the bucket holding it.
    let last_day = store::message_totals(&mut conn, None, since, now, None).await?;
    let day_messages = super::MessageFigures::from(&last_day);
    let responses = super::FirstResponse::from(&last_day);
    BUSINESS_FIRST_RESPONSE_MS
        .with_label_values(&["human"])
        .set(responses.human.avg_ms.unwrap_or(0));
    BUSINESS_FIRST_RESPONSE_MS
        .with_label_values(&["bot"])
        .set(responses.bot.avg_ms.unwrap_or(0));
    let agents = store::agent_figures(&mut conn, None, since, now).await?;
    let ai = super::ai_stats(state, &agents, &[]);
    let hooks =
        super::webhook_stats(&store::webhook_deliveries(&mut conn, None, since, now).await?);
    for (rate, value) in [
        ("delivery", day_messages.delivery_rate),
        ("read", day_messages.read_rate),
        ("bot_containment", ai.containment_rate),
        ("handoff", ai.handoff_rate),
        ("webhook_success", hooks.success_rate),
    ] {
        // No data: no rate to show (NaN renders as a gap, not a misleading 0).
        BUSINESS_RATE
            .with_label_values(&[rate])
            .set(value.unwrap_or(f64::NAN));
    }
    let today_agents = store::agent_figures(&mut conn, None, day.from, day.to).await?;
    let today_models = store::tokens_by_model(&mut conn, None, day.from, day.to).await?;
    let today_ai = super::ai_stats(state, &today_agents, &today_models);
    let active = store::active_chats(&mut conn, None, since).await?;
    let cards: store::One = diesel::sql_query("SELECT count(*) AS n FROM cards")
        .get_result(&mut conn)
        .await?;
    let waiting: store::One = diesel::sql_query("SELECT count(*) AS n FROM stat_deltas")
        .get_result(&mut conn)
        .await?;
    for (figure, value) in [
        ("active_chats_24h", active as f64),
        ("ai_conversations_24h", ai.conversations as f64),
        (
            "ai_tokens_today",
            (today_ai.prompt_tokens + today_ai.output_tokens) as f64,
        ),
        ("ai_cost_usd_today", today_ai.cost_usd),
        ("cards", cards.n as f64),
        ("stat_deltas_waiting", waiting.n as f64),
    ] {
        BUSINESS_FIGURES.with_label_values(&[figure]).set(value);
    }
    let tiers = store::tenants_by_tier(&mut conn).await?;
    for tier in wagate_actors::tier::Tier::ALL {
        let n = tiers
            .iter()
            .find(|t| t.key == tier.as_str())
            .map_or(0, |t| t.n);
        BUSINESS_TENANTS.with_label_values(&[tier.as_str()]).set(n);
    }
    Ok(())
}
