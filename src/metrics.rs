//! Prometheus metrics, served as text on `/metrics`.

use std::sync::LazyLock;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    // Registration fails only for a duplicate name, which is a programming error caught by tests.
    if let Err(e) = REGISTRY.register(Box::new(c.clone())) {
        tracing::error!(error = %e, "metric registration failed");
    }
    c
}

pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "wagate_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["method", "route", "status"],
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static HTTP_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "wagate_http_request_duration_seconds",
                "HTTP latency by route",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["method", "route"],
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static RATE_LIMITED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "wagate_rate_limited_total",
                "Requests refused with 429, by route class",
            ),
            &["class"],
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static REDIS_FALLBACK_ACTIVE: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "wagate_redis_fallback_active",
            "1 while Redis is configured but failing and in-memory fallbacks answer",
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static SESSIONS_BY_STATE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new("wagate_sessions", "Session actors on this node by state"),
            &["state"],
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static SESSION_RECONNECTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "wagate_session_reconnects_total",
            "Reconnects scheduled after a session's connection ended",
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static SESSION_QR_CODES: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "wagate_session_qr_codes_total",
            "QR codes shown for pairing",
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static ACTOR_RESTARTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "wagate_actor_restarts_total",
                "Session actors restarted by their pool (crashes and admin restarts), by tier",
            ),
            &["tier"],
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static SESSION_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "wagate_session_events_total",
                "Session events stored, by type",
            ),
            &["type"],
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

/// A session actor moved from one state to another (`None`: appeared or went away).
pub fn session_status_moved(from: Option<&str>, to: Option<&str>) {
    if let Some(from) = from {
        SESSIONS_BY_STATE.with_label_values(&[from]).dec();
    }
    if let Some(to) = to {
        SESSIONS_BY_STATE.with_label_values(&[to]).inc();
    }
}

pub fn session_event(kind: &str) {
    SESSION_EVENTS.with_label_values(&[kind]).inc();
}

// Metric constructors fail only on invalid names/labels, which are literals above.
#[allow(clippy::panic)]
fn unreachable_metric<T>() -> T {
    panic!("invalid metric definition")
}

/// Touches every metric so `/metrics` lists them from the first scrape.
fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|_| unreachable_metric()),
    )
}

fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).unwrap_or_else(|_| unreachable_metric()))
}

pub static MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "wagate_messages_total",
        "Messages by direction (in, out) and what happened (queued, sent, delivered, read, failed, received)",
        &["direction", "status"],
    )
});

pub static MESSAGES_QUEUED: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "wagate_messages_queue_depth",
            "Outgoing messages waiting to be sent (all sessions, sampled)",
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static INBOUND_STORE_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "wagate_inbound_store_failures_total",
        "Attempts to store a received message that failed (retried, then dead-lettered)",
    )
});

pub static INBOUND_DEAD_LETTERS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "wagate_inbound_dead_letters_total",
        "Received messages kept as dead letters and acked after every attempt to store them failed",
    )
});

pub static DB_STATEMENTS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "wagate_db_statements_total",
        "SQL statements the node ran (transaction control not counted), for cost per request",
    )
});

pub static DB_TRANSACTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "wagate_db_transactions_total",
        "Postgres transactions the node ended: explicit ones and single statements outside one",
    )
});

pub static GROUP_FALLBACKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "wagate_group_fallbacks_total",
        "Group writes that failed and were retried one job at a time, by kind",
        &["kind"],
    )
});

pub static KEYSTORE_OPERATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "wagate_keystore_operations_total",
        "The WhatsApp key store's work by operation and kind of entry (session, prekey, sent_message, …): rows for upserts, statements for the rest",
        &["op", "kind"],
    )
});

pub static GROUP_WRITES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "wagate_group_writes_total",
        "Shared transactions of the group writers (accepted messages, send outcomes), by kind",
        &["kind"],
    )
});

pub static GROUP_JOBS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "wagate_group_jobs_total",
        "Jobs written by the group writers, by kind: jobs / writes is the mean group size",
        &["kind"],
    )
});

pub static EVENTS_PUBLISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "wagate_events_published_total",
        "Events stored and handed to the fan-out, by type",
        &["type"],
    )
});

pub static EVENTS_STREAMED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "wagate_events_streamed_total",
        "Events written to WebSocket subscribers",
    )
});

pub static EVENT_SUBSCRIBERS_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "wagate_event_subscribers_dropped_total",
        "WebSocket subscribers closed for falling behind",
    )
});

pub static WEBHOOK_DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "wagate_webhook_deliveries_total",
        "Webhook delivery attempts by outcome (delivered, retry, dead)",
        &["outcome"],
    )
});

pub fn init() {
    LazyLock::force(&MESSAGES);
    LazyLock::force(&AUDIT_WRITTEN);
    LazyLock::force(&AUDIT_DROPPED);
    LazyLock::force(&MESSAGES_QUEUED);
    LazyLock::force(&INBOUND_STORE_FAILURES);
    LazyLock::force(&INBOUND_DEAD_LETTERS);
    LazyLock::force(&EVENTS_PUBLISHED);
    LazyLock::force(&DB_STATEMENTS);
    LazyLock::force(&GROUP_WRITES);
    LazyLock::force(&KEYSTORE_OPERATIONS);
    LazyLock::force(&GROUP_FALLBACKS);
    LazyLock::force(&GROUP_JOBS);
    LazyLock::force(&DB_TRANSACTIONS);
    LazyLock::force(&EVENTS_STREAMED);
    LazyLock::force(&EVENT_SUBSCRIBERS_DROPPED);
    LazyLock::force(&WEBHOOK_DELIVERIES);
    LazyLock::force(&HTTP_REQUESTS);
    LazyLock::force(&HTTP_LATENCY);
    LazyLock::force(&RATE_LIMITED);
    LazyLock::force(&REDIS_FALLBACK_ACTIVE);
    LazyLock::force(&SESSION_RECONNECTS);
    LazyLock::force(&SESSION_QR_CODES);
    LazyLock::force(&ACTOR_RESTARTS);
    LazyLock::force(&SESSION_EVENTS);
    // The business figures exist from the first scrape (a dashboard's series never appear
    // halfway through), with no data until the statistics job's first pass.
    for kind in ["in", "out", "out_bot", "failed", "delivered", "read"] {
        BUSINESS_MESSAGES_TODAY.with_label_values(&[kind]).set(0);
    }
    for rate in [
        "delivery",
        "read",
        "bot_containment",
        "handoff",
        "webhook_success",
    ] {
        BUSINESS_RATE.with_label_values(&[rate]).set(f64::NAN);
    }
    for by in ["human", "bot"] {
        BUSINESS_FIRST_RESPONSE_MS.with_label_values(&[by]).set(0);
    }
    for figure in [
        "active_chats_24h",
        "ai_conversations_24h",
        "ai_tokens_today",
        "ai_cost_usd_today",
        "cards",
        "stat_deltas_waiting",
    ] {
        BUSINESS_FIGURES.with_label_values(&[figure]).set(0.0);
    }
    for tier in wagate_actors::tier::Tier::ALL {
        BUSINESS_TENANTS.with_label_values(&[tier.as_str()]).set(0);
    }
    for state in wagate_actors::session::SessionStatus::ALL {
        SESSIONS_BY_STATE
            .with_label_values(&[state.as_str()])
            .add(0);
    }
}

pub fn render() -> String {
    let mut buf = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&REGISTRY.gather(), &mut buf) {
        tracing::error!(error = %e, "encoding metrics");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// Middleware: counts requests and times them, labelled by route pattern (not raw path, which
/// would explode the label set with ids).
pub async fn http_metrics_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let method = method_label(req.method());
    let res = next.call(req).await?;
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let status = res.status().as_u16().to_string();
    HTTP_REQUESTS
        .with_label_values(&[method, &route, &status])
        .inc();
    HTTP_LATENCY
        .with_label_values(&[method, &route])
        .observe(start.elapsed().as_secs_f64());
    Ok(res)
}

/// A request's method as a label: the standard ones by name, any other (a client may send
/// any token) as `other`, so no caller can add label values without bound.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

pub static AI_CALLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "wagate_ai_calls_total",
                "Model calls by provider and outcome (ok, error, blocked, circuit_open, rate_limited, budget, cached)",
            ),
            &["provider", "outcome"],
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static AI_CALL_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "wagate_ai_call_duration_seconds",
                "Model call latency (retries included) by provider",
            )
            .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            &["provider"],
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static AI_TOKENS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "wagate_ai_tokens_total",
                "Tokens the providers reported, by provider and kind (prompt, output)",
            ),
            &["provider", "kind"],
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static AI_CIRCUIT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "wagate_ai_circuit_state",
                "A credential's circuit: 0 closed, 1 half-open, 2 open",
            ),
            &["credential"],
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static AUDIT_WRITTEN: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new("wagate_audit_written_total", "Audit-log entries written")
            .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static AUDIT_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "wagate_audit_dropped_total",
            "Audit-log entries dropped: the writer's buffer was full or the database refused them",
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static AUTOMATION_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "wagate_automation_events_total",
                "Events automation looked at, by outcome (fired, no_match, resumed, or why it skipped)",
            ),
            &["outcome"],
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static FLOW_EXECUTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "wagate_flow_executions_total",
                "Flow executions that ended, by outcome (completed, failed, cancelled)",
            ),
            &["outcome"],
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static FLOW_STEPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "wagate_flow_steps_total",
                "Flow steps run, by type and outcome",
            ),
            &["type", "outcome"],
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static AI_DECISIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "wagate_ai_decisions_total",
                "What the reply pipeline did with a chat (reply, failed, handoff, or why it kept quiet)",
            ),
            &["outcome"],
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

/// The business figures of the whole system (every tenant), refreshed every few seconds
/// from the statistics' rollup by `stats::jobs`, so a Grafana dashboard needs no SQL.
/// Today is the UTC day; rates and averages cover the last 24 hours.
pub static BUSINESS_MESSAGES_TODAY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "wagate_business_messages_today",
                "Messages of the UTC day, by kind (in, out, out_bot, failed, delivered, read)",
            ),
            &["kind"],
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static BUSINESS_RATE: LazyLock<prometheus::GaugeVec> = LazyLock::new(|| {
    register(
        prometheus::GaugeVec::new(
            Opts::new(
                "wagate_business_rate",
                "Rates over the last 24 hours, 0 to 1 (delivery, read, bot_containment, handoff, webhook_success)",
            ),
            &["rate"],
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static BUSINESS_FIRST_RESPONSE_MS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "wagate_business_first_response_avg_ms",
                "Average time to a first answer over the last 24 hours, by who answered (human, bot)",
            ),
            &["by"],
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static BUSINESS_FIGURES: LazyLock<prometheus::GaugeVec> = LazyLock::new(|| {
    register(
        prometheus::GaugeVec::new(
            Opts::new(
                "wagate_business_figure",
                "Other business figures (active_chats_24h, ai_conversations_24h, ai_tokens_today, ai_cost_usd_today, cards, stat_deltas_waiting)",
            ),
            &["figure"],
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static BUSINESS_TENANTS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new("wagate_business_tenants", "Tenants by tier"),
            &["tier"],
        )
        .unwrap_or_else(|_| unreachable_metric()),
    )
});
