//! Delivers the webhook outbox: claims due deliveries (skipping rows another node holds),
//! posts them signed, and records each outcome: delivered, retry later (the configured
//! schedule with ±20 % jitter), or dead after the last attempt. Every attempt of a delivery
//! carries the same `webhook-id`, so receivers can drop duplicates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use super::signature;
use super::store::{self, Claimed, Outcome};
use crate::configuration::WebhookSettings;
use crate::db::DbPool;

/// Deliveries in flight on this node at once, across all endpoints.
pub const MAX_IN_FLIGHT: usize = 512;
/// Outcomes written to the store per statement.
const OUTCOME_BATCH: usize = 500;

/// Why a target is refused, for the delivery's `last_error`.
fn refused(e: &crate::http::egress::EgressError) -> String {
    match e {
        crate::http::egress::EgressError::Private(_) => {
            format!("{e} (webhooks.allow_private_targets is off)")
        }
        other => other.to_string(),
    }
}

pub struct Worker {
    pub db: DbPool,
    pub settings: WebhookSettings,
    pub wake: Arc<Notify>,
    /// Told of each delivery given up after its last attempt (tenant, webhook, URL).
    pub on_dead: Arc<dyn Fn(Uuid, Uuid, String) + Send + Sync>,
}

#[derive(Default)]
struct InFlight {
    total: usize,
    per_endpoint: HashMap<Uuid, usize>,
}

/// The webhook outbox's worker runs on every node.
pub fn schedule(jobs: &mut crate::app::jobs::Jobs, state: &crate::app::AppState) {
    jobs.spawn(
        Worker {
            db: state.db.clone(),
            settings: state.settings.webhooks.clone(),
            wake: state.webhook_wake.clone(),
            on_dead: dead_letter_notifier(state),
        }
        .run(),
    );
}

/// Tells the tenant's members (a notification, at most one a day per endpoint).
fn dead_letter_notifier(
    state: &crate::app::AppState,
) -> Arc<dyn Fn(Uuid, Uuid, String) + Send + Sync> {
    // The handlers' state is what notifications need; the worker holds only a weak path to it.
    let app = state.automation.app.clone();
    Arc::new(move |tenant, webhook, url| {
        let Some(state) = app.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        tokio::spawn(async move {
            crate::notifications::webhook_dead_letter(&state, tenant, webhook, &url).await;
        });
    })
}

impl Worker {
    pub async fn run(self) {
        // Names resolve through the egress guard at every connect (checked at every attempt,
        // and the checked addresses are the ones connected to: DNS rebinding cannot slip in).
        let client = match crate::http::egress::client_builder(self.settings.allow_private_targets)
            .timeout(Duration::from_secs(self.settings.timeout_secs))
            .user_agent(concat!("wagate-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "building the webhook HTTP client; webhooks are off");
                return;
            }
        };
        let in_flight = Arc::new(Mutex::new(InFlight::default()));
        let slot_freed = Arc::new(Notify::new());
        let (outcomes, rx) = mpsc::unbounded_channel::<Outcome>();
        tokio::spawn(write_outcomes(self.db.clone(), rx));
        let settings = Arc::new(self.settings);
        let cap = settings.max_in_flight_per_endpoint.max(1);
        let lock_secs = (settings.timeout_secs + 30) as f64;
        let poll = Duration::from_millis(settings.poll_interval_ms.max(10));
        loop {
            let room = MAX_IN_FLIGHT.saturating_sub(lock(&in_flight).total);
            if room == 0 {
                slot_freed.notified().await;
                continue;
            }
            let limit = (settings.batch_size.max(1) as usize).min(room) as i64;
            let taken: Arc<Mutex<Vec<Uuid>>> = Arc::default();
            let claimed = match self.db.get().await {
                Ok(mut conn) => {
                    let (flight, taken) = (in_flight.clone(), taken.clone());
                    store::claim_due(&mut conn, limit, lock_secs, move |webhook| {
                        let mut f = lock(&flight);
                        let n = f.per_endpoint.entry(webhook).or_default();
                        if *n >= cap {
                            return false;
                        }
                        *n += 1;
                        f.total += 1;
                        lock(&taken).push(webhook);
                        true
                    })
                    .await
                    .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            let claimed = match claimed {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming webhook deliveries");
                    let claimed_for: Vec<Uuid> = lock(&taken).drain(..).collect();
                    {
                        let mut f = lock(&in_flight);
                        for w in claimed_for {
                            release(&mut f, w);
                        }
                    }
                    tokio::time::sleep(poll).await;
                    continue;
                }
            };
            let full = claimed.len() as i64 == limit;
            for c in claimed {
                let (client, settings, outcomes) =
                    (client.clone(), settings.clone(), outcomes.clone());
                let (in_flight, slot_freed) = (in_flight.clone(), slot_freed.clone());
                let on_dead = self.on_dead.clone();
                tokio::spawn(async move {
                    let webhook = c.delivery.webhook_id;
                    let (tenant, url) = (c.delivery.tenant_id, c.url.clone());
                    let outcome = attempt(&client, &settings, c).await;
                    if matches!(outcome.retry, Some(None)) {
                        on_dead(tenant, webhook, url);
                    }
                    let _ = outcomes.send(outcome);
                    release(&mut lock(&in_flight), webhook);
                    slot_freed.notify_one();
                });
            }
            if !full {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = slot_freed.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn release(f: &mut InFlight, webhook: Uuid) {
    f.total = f.total.saturating_sub(1);
    if let Some(n) = f.per_endpoint.get_mut(&webhook) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            f.per_endpoint.remove(&webhook);
        }
    }
}

/// One signed POST.
async fn attempt(client: &reqwest::Client, settings: &WebhookSettings, c: Claimed) -> Outcome {
    let d = &c.delivery;
    let attempted_at = Utc::now();
    let clock = std::time::Instant::now();
    let result: Result<u16, String> = async {
        let url = reqwest::Url::parse(&c.url).map_err(|e| format!("bad URL: {e}"))?;
        if !settings.allow_private_targets {
            crate::http::egress::check_literal(&url).map_err(|e| refused(&e))?;
        }
        let key = signature::key_of(&c.secret).ok_or("the webhook secret is malformed")?;
        let body = d.payload.to_string();
        let timestamp = Utc::now().timestamp();
        let res = client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &d.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature::sign(&key, &d.id, timestamp, body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if let Some(egress) = crate::http::egress::refusal(&e) {
                    refused(egress)
                } else if e.is_timeout() {
                    format!("no answer within {} s", settings.timeout_secs)
                } else {
                    format!("request failed: {e}")
                }
            })?;
        Ok(res.status().as_u16())
    }
    .await;
    let took = clock.elapsed();
    let attempt_no = d.attempts as usize + 1;
    let retry_at = || {
        retry_delay(
            &settings.retry_schedule_secs,
            attempt_no,
            rand::random::<f64>(),
        )
        .map(|delay| {
            Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero())
        })
    };
    let (status_code, error, retry) = match result {
        Ok(code) if (200..300).contains(&code) => (Some(i32::from(code)), None, None),
        Ok(code) => (
            Some(i32::from(code)),
            Some(format!("the endpoint answered {code}")),
            Some(retry_at()),
        ),
        Err(e) => (None, Some(e), Some(retry_at())),
    };
    let outcome = match &retry {
        None => "delivered",
        Some(None) => "dead",
        Some(Some(_)) => "retry",
    };
    crate::metrics::WEBHOOK_DELIVERIES
        .with_label_values(&[outcome])
        .inc();
    Outcome {
        id: d.id.clone(),
        status_code,
        error,
        retry,
        attempted_at,
        duration_ms: i32::try_from(took.as_millis()).unwrap_or(i32::MAX),
    }
}

/// Writes outcomes in batches (one statement for many attempts).
async fn write_outcomes(db: DbPool, mut rx: mpsc::UnboundedReceiver<Outcome>) {
    let mut batch = Vec::with_capacity(OUTCOME_BATCH);
    while rx.recv_many(&mut batch, OUTCOME_BATCH).await > 0 {
        loop {
            let written = match db.get().await {
                Ok(mut conn) => store::record_outcomes(&mut conn, &batch)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match written {
                Ok(()) => break,
                Err(e) => {
                    // Unrecorded outcomes would be attempted again when their claim
                    // expires: keep trying to record them.
                    tracing::warn!(error = %e, "recording webhook outcomes; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        batch.clear();
    }
}

/// How long to wait after failed attempt `attempt_no` (1-based) before the next one: the
/// schedule's entry with ±20 % jitter (`unit` is a random number in [0, 1)), so endpoints
/// that failed together are not retried in lockstep. `None`: that was the last attempt.
pub fn retry_delay(schedule: &[u64], attempt_no: usize, unit: f64) -> Option<Duration> {
    let secs = *schedule.get(attempt_no.checked_sub(1)?)?;
    let jitter = 1.0 + 0.2 * (unit.clamp(0.0, 1.0) * 2.0 - 1.0);
    Some(Duration::from_secs_f64(secs as f64 * jitter))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configuration::{Overrides, Settings};

    #[test]
    fn the_default_schedule_retries_for_about_a_day_with_jitter_then_gives_up() {
        let s = Settings::load_from(&Overrides::default(), &Default::default()).expect("defaults");
        let schedule = s.webhooks.retry_schedule_secs;
        assert_eq!(schedule, [5, 300, 1800, 7200, 18000, 36000, 36000]);
        // Eight attempts in all: the first, then one per entry; then dead.
        assert!(retry_delay(&schedule, 7, 0.5).is_some());
        assert_eq!(retry_delay(&schedule, 8, 0.5), None);
        let middle: f64 = (1..=7)
            .map(|n| {
                retry_delay(&schedule, n, 0.5)
                    .expect("a retry")
                    .as_secs_f64()
            })
            .sum();
        assert!(
            (23.0 * 3600.0..30.0 * 3600.0).contains(&middle),
            "{middle} s"
        );
        // ±20 %: the bounds at the ends of the unit interval, and every draw between them.
        for (n, secs) in schedule.iter().enumerate() {
            let secs = *secs as f64;
            let low = retry_delay(&schedule, n + 1, 0.0)
                .expect("a retry")
                .as_secs_f64();
            let high = retry_delay(&schedule, n + 1, 1.0)
                .expect("a retry")
                .as_secs_f64();
            assert!((low - 0.8 * secs).abs() < 1e-6 && (high - 1.2 * secs).abs() < 1e-6);
        }
        let draws: Vec<f64> = (0..200)
            .map(|_| {
                retry_delay(&schedule, 2, rand::random::<f64>())
                    .expect("a retry")
                    .as_secs_f64()
            })
            .collect();
        assert!(
            draws.iter().all(|d| (240.0..=360.0).contains(d)),
            "{draws:?}"
        );
        let distinct = draws
            .iter()
            .map(|d| (d * 1000.0) as u64)
            .collect::<std::collections::HashSet<_>>();
        assert!(distinct.len() > 100, "jittered, not fixed");
    }
}
