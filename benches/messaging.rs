#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Benchmark: messaging through the whole gateway — sends, inbound messages, authenticated
//! reads — and, with the gateway in this process, event fan-out and webhook delivery.
//!
//! 1. Sends, closed loop: `BENCH_MESSAGES` (20,000) texts over HTTP (64 in flight) across
//!    `BENCH_SESSIONS` (100) linked sessions of as many tenants, unpaced; reports accept
//!    latency (p50/p99 of the 202) and messages/s from the first accept to the last
//!    simulator ack (status `sent` stored). Contacts send no receipts, so only the send
//!    path is measured.
//! 2. Sends, open loop: `BENCH_RATE` (2,500) messages/s offered for `BENCH_OPEN_SECS` (10 s)
//!    on a fixed schedule, whatever the answers; latency is measured from each request's
//!    scheduled time, so queueing in the gateway shows (no coordinated omission).
//! 3. Inbound: `BENCH_INBOUND` (20,000) contact messages injected through the simulator (64
//!    at a time) across the sessions; reports messages/s until all are stored (each with its
//!    `message.received` event and webhook row; one webhook per tenant subscribes).
//!    Then (3b) answered by agents: every session gets one (no debounce, no typing) whose
//!    model is a local double answering at once in Gemini's format; `BENCH_AI` (2,000)
//!    contact messages in rounds of one per session, each round answered before the next;
//!    reports answers/s from the first message to the last answer `sent`, and the cost per
//!    answer: in all (the message stored, the pipeline, the answer sent) and the pipeline's
//!    own (less phase 3's cost of a stored message and phase 1's of a sent one). Phase 3's
//!    webhook deliveries are drained and the webhooks turned off first.
//!    Then (3c) automation: 1,000 triggers per tenant (regex, contains and keyword-list
//!    conditions) of which only the last matches, `BENCH_AUTOMATION` (2,000) messages each
//!    answered by it; reports events/s evaluated and answered and the cost per event, all and
//!    less a stored message's. Then `BENCH_FLOWS` (1,000) executions of a seven-step flow
//!    (three sends) started over HTTP: steps/s and the cost per step.
//! 4. Reads with wrk (when installed): `GET /api/v1/sessions/{id}` and
//!    `GET /api/v1/sessions/{id}/messages?limit=50` with a tenant key, 64 connections, and
//!    `/health` latency under that load from one more connection.
//! 5. Fan-out (in-process gateway only): 1,000 WebSocket subscribers of one tenant;
//!    `BENCH_EVENTS` (200) events published.
//! 6. Webhooks (in-process gateway only): `BENCH_DELIVERIES` (20,000) outbox rows over 16
//!    endpoints of a local receiver.
//!
//! Each messaging phase reports its cost per message: gateway CPU µs, simulator CPU µs,
//! Postgres CPU µs (every `postgres` process), statements (the gateway's
//! `wagate_db_statements_total`) and transactions (`wagate_db_transactions_total`).
//!
//!     cargo bench -p wagate --features sandbox --bench messaging
//!     BENCH_REMOTE_SIM=1 cargo bench -p wagate --features sandbox --bench messaging
//!
//! `BENCH_NO_STATS_ROLLUP=1` turns the statistics' triggers on `messages` off (an A/B of
//! what the rollup costs the hot paths). `BENCH_REMOTE_SIM=1` measures the gateway alone: the simulator runs in a child process
//! (this binary again) and the gateway is the real `wagate` binary in another, reached over
//! loopback like WhatsApp; this process only generates load and reads `/proc`. Without it,
//! gateway, simulator and load generator share this process (its CPU is theirs together).
//!
//! A fresh database is created on the Postgres server `TEST_DATABASE_URL` (or `DATABASE_URL`)
//! names, else on the tests' private cluster (`tests/support/database.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures::StreamExt;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wagate::app::{AppState, Application, RunOptions};
use wagate::configuration::{Overrides, Settings, TierQuotas};

#[path = "support/processes.rs"]
mod processes;
#[path = "support/sim_network.rs"]
mod sim_network;
use processes::{cpu_secs_of, postgres_cpu_secs};
use sim_network::{Network, ROLE_ENV, json_of, serve_simulator};

const ADMIN_KEY: &str = "bench-admin-key-0123456789";
/// The key store's key, set explicitly: a gateway the benchmark starts never leans on a generated one.
const STORE_KEY: &str = "YmVuY2gtc3RvcmUta2V5LTAxMjM0NTY3ODlhYmNkZWY=";
const JWT_SECRET: &str = "bench-jwt-secret-0123456789abcdef0123456789";
const CONTACT: &str = "+4915112345678";
/// Messages sent at once in the closed-loop phase, and injected at once in the inbound one.
const IN_FLIGHT: usize = 64;
/// The port of the local model double (phase 3b).
static MODEL_PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();

/// A model double that answers every `generateContent` at once, as Gemini does.
fn start_model_double() -> u16 {
    let server = HttpServer::new(|| {
        App::new().default_service(web::to(|| async {
            HttpResponse::Ok().json(json!({
                "candidates": [{"content": {"role": "model", "parts": [{"text": "Thanks, we will get back to you."}]},
                                "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 40, "candidatesTokenCount": 8, "totalTokenCount": 48}
            }))
        }))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let port = server.addrs()[0].port();
    actix_web::rt::spawn(server.run());
    port
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[path = "../tests/support/database.rs"]
mod database;

/// A fresh database for one run (`wagate_bench_<uuid>`), where the tests make theirs.
async fn fresh_database() -> String {
    database::fresh_database_named("wagate_bench").await
}

/// The gateway's settings, as configuration keys: set on the in-process gateway's `Settings`
/// and as `APP_…` variables on the gateway process, so both run the same configuration.
fn config(db: &str) -> Vec<(&'static str, String)> {
    let mut c = vec![
        ("APP_DATABASE__URL", db.to_owned()),
        ("APP_DATABASE__POOL_SIZE", "32".into()),
        ("APP_DATABASE__CONNECT_TIMEOUT_SECS", "30".into()),
        ("APP_AUTH__ADMIN_KEY", ADMIN_KEY.into()),
        ("APP_AUTH__JWT_SECRET", JWT_SECRET.into()),
        ("APP_STORE__ENCRYPTION_KEY", STORE_KEY.into()),
        ("APP_RATE_LIMIT__ENABLED", "false".into()),
        ("APP_SESSIONS__QR_TIMEOUT_SECS", "3600".into()),
        ("APP_SESSIONS__NODE_ID", "bench".into()),
        ("APP_MESSAGES__RATE_PER_MINUTE__STANDARD", "0".into()),
        ("APP_MESSAGES__MAX_QUEUED_PER_TENANT", "1000000".into()),
        ("APP_WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true".into()),
        ("APP_WEBHOOKS__POLL_INTERVAL_MS", "50".into()),
        // Phase 3c answers every message of one contact per session: the per-chat guard
        // against bots talking forever would cap it at ten a minute.
        (
            "APP_AUTOMATION__MAX_SENDS_PER_CHAT_PER_MINUTE",
            "1000000".into(),
        ),
        (
            "APP_LOG__LEVEL",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        ),
    ];
    // Agents answer through a local model double; nothing limits them but the pipeline.
    if let Some(port) = MODEL_PORT.get() {
        c.extend([
            (
                "APP_AI__GEMINI__BASE_URL",
                format!("http://127.0.0.1:{port}"),
            ),
            ("APP_AI__GEMINI__API_KEY", "bench-gemini-key".into()),
            ("APP_AI__CALLS_PER_MINUTE__STANDARD", "0".into()),
            ("APP_AI__TOKENS_PER_DAY__STANDARD", "0".into()),
            ("APP_AI__MAX_REPLIES_PER_CHAT_PER_MINUTE", "1000000".into()),
            // Phase 1's sends are the operator's: no pause after them here.
            ("APP_AI__HUMAN_PAUSE_SECS", "0".into()),
            ("APP_AI__POLL_INTERVAL_MS", "50".into()),
        ]);
    }
    // Every session here is standard: `BENCH_SEND_SLOTS` sends at once (default: the config's).
    if let Ok(n) = std::env::var("BENCH_SEND_SLOTS") {
        c.push(("APP_MESSAGES__SEND_SLOTS__STANDARD", n));
    }
    c
}

fn settings(db: &str) -> Settings {
    let vars: HashMap<String, String> = config(db)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let mut s = Settings::load_from(&Overrides::default(), &vars).unwrap();
    s.application.port = 0;
    s.auth.admin_key = Some(SecretString::from(ADMIN_KEY));
    s.auth.jwt_secret = Some(SecretString::from(JWT_SECRET));
    s.store.encryption_key = Some(SecretString::from(STORE_KEY));
    s.sandbox.persist_network = false;
    s.database.url = Some(SecretString::from(db.to_owned()));
    s.messages.rate_per_minute = TierQuotas {
        standard: 0,
        professional: 0,
        enterprise: 0,
    };
    s
}

/// The gateway under load: in this process, or the real binary in a child process.
enum Gateway {
    InProcess(web::Data<AppState>),
    Process {
        child: std::process::Child,
        data_dir: std::path::PathBuf,
    },
}

impl Gateway {
    async fn start(db: &str, net: &Network) -> (Gateway, String) {
        let Some((ws, control)) = net.remote_urls() else {
            let app = Application::build(
                settings(db),
                RunOptions {
                    handle_signals: false,
                    network: Some(net.for_gateway()),
                },
            )
            .await
            .unwrap();
            let base = format!("http://127.0.0.1:{}", app.port());
            let state = app.state();
            actix_web::rt::spawn(app.run_until_stopped());
            return (Gateway::InProcess(state), base);
        };
        // A port picked by binding and dropping: a benchmark can live with that race.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data_dir = std::env::temp_dir().join(format!("wagate-bench-{}", uuid::Uuid::new_v4()));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_wagate"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["--sandbox", "--port", &port.to_string(), "--data-dir"])
            .arg(&data_dir)
            .env_remove("APP_REDIS__URL")
            .envs(config(db))
            .env("APP_SANDBOX__SIMULATOR_URL", ws)
            .env("APP_SANDBOX__SIMULATOR_MEDIA_URL", control)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while !reqwest::get(format!("{base}/health"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(started.elapsed() < Duration::from_secs(60), "no gateway");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (Gateway::Process { child, data_dir }, base)
    }

    fn pid(&self) -> u32 {
        match self {
            Gateway::InProcess(_) => std::process::id(),
            Gateway::Process { child, .. } => child.id(),
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Gateway::Process { child, data_dir } = self {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(data_dir);
        }
    }
}

async fn count(db: &str, sql: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    // One connection for all the polling: a new backend per poll would cost Postgres a
    // process start every few milliseconds, on the cores being measured.
    static CONN: tokio::sync::Mutex<Option<AsyncPgConnection>> =
        tokio::sync::Mutex::const_new(None);
    let mut slot = CONN.lock().await;
    if slot.is_none() {
        *slot = Some(AsyncPgConnection::establish(db).await.unwrap());
    }
    diesel::sql_query(sql)
        .get_result::<N>(slot.as_mut().unwrap())
        .await
        .unwrap()
        .n
}

async fn wait_count(db: &str, sql: &str, n: i64) -> Instant {
    let started = Instant::now();
    loop {
        let c = count(db, sql).await;
        if c >= n {
            return Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "only {c}/{n}: {sql}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// What the machine had spent at one moment: CPU seconds of the gateway, the simulator and
/// Postgres, and the gateway's statement and transaction counters.
struct Spent {
    gateway: f64,
    simulator: f64,
    postgres: f64,
    statements: f64,
    transactions: f64,
    /// `wagate_keystore_operations_total` by its labels.
    keystore: HashMap<String, f64>,
}

struct Bench {
    base: String,
    db: String,
    net: Network,
    gateway: Gateway,
    http: reqwest::Client,
}

impl Bench {
    async fn spent(&self) -> Spent {
        let metrics = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let counter = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or(f64::NAN)
        };
        let in_process = !self.net.is_remote();
        Spent {
            gateway: cpu_secs_of(self.gateway.pid()),
            simulator: if in_process {
                0.0
            } else {
                cpu_secs_of(self.net.pid())
            },
            postgres: postgres_cpu_secs(),
            statements: counter("wagate_db_statements_total"),
            transactions: counter("wagate_db_transactions_total"),
            keystore: metrics
                .lines()
                .filter_map(|l| {
                    let (labels, v) = l
                        .strip_prefix("wagate_keystore_operations_total{")?
                        .rsplit_once("} ")?;
                    Some((labels.to_owned(), v.trim().parse().ok()?))
                })
                .collect(),
        }
    }

    /// The cost of one message between two readings.
    fn per_message(&self, before: &Spent, after: &Spent, n: usize) -> Value {
        let n = n as f64;
        let us = |a: f64, b: f64| ((a - b) / n * 1e6).round();
        let per = |a: f64, b: f64| ((a - b) / n * 100.0).round() / 100.0;
        let gateway = if self.net.is_remote() {
            "gateway_cpu_us"
        } else {
            // One process: gateway, simulator and load generator together.
            "gateway_simulator_and_load_cpu_us"
        };
        // Key-store operations per message, by operation and kind (the larger ones).
        let keystore: serde_json::Map<String, Value> = after
            .keystore
            .iter()
            .filter_map(|(labels, v)| {
                let per = per(*v, before.keystore.get(labels).copied().unwrap_or(0.0));
                (per >= 0.05).then(|| (labels.replace('"', ""), json!(per)))
            })
            .collect();
        json!({
            "keystore_operations": keystore,
            gateway: us(after.gateway, before.gateway),
            "simulator_cpu_us": us(after.simulator, before.simulator),
            "postgres_cpu_us": us(after.postgres, before.postgres),
            "statements": per(after.statements, before.statements),
            "transactions": per(after.transactions, before.transactions),
        })
    }

    async fn send(&self, key: &str, session: &str, text: String) -> reqwest::StatusCode {
        self.http
            .post(format!("{}/api/v1/sessions/{session}/messages", self.base))
            .bearer_auth(key)
            .json(&json!({"to": CONTACT, "text": text}))
            .send()
            .await
            .unwrap()
            .status()
    }
}

/// A local webhook receiver that answers 204 to everything and counts what it got.
struct Receiver {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Receiver {
    fn start() -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let server = HttpServer::new(move || {
            let h = h.clone();
            App::new().default_service(web::to(move || {
                h.fetch_add(1, Ordering::Relaxed);
                async { HttpResponse::NoContent().finish() }
            }))
        })
        .workers(1)
        .bind(("127.0.0.1", 0))
        .unwrap();
        let port = server.addrs()[0].port();
        actix_web::rt::spawn(server.run());
        Self { port, hits }
    }

    fn hits(&self) -> usize {
        AtomicUsize::load(&self.hits, Ordering::Relaxed)
    }
}

/// A linked session: its tenant's key, its id, its tenant, its phone.
#[derive(Clone)]
struct Linked {
    key: String,
    id: String,
    tenant: uuid::Uuid,
    phone: String,
}

fn main() {
    if std::env::var(ROLE_ENV).is_ok_and(|v| v == "simulator") {
        actix_web::rt::System::new().block_on(serve_simulator());
        return;
    }
    actix_web::rt::System::new().block_on(run());
}

async fn run() {
    let sessions = env("BENCH_SESSIONS", 100);
    let messages = env("BENCH_MESSAGES", 20_000);
    let rate = env("BENCH_RATE", 2_500);
    let open_secs = env("BENCH_OPEN_SECS", 10);
    let inbound = env("BENCH_INBOUND", 20_000);
    let events = env("BENCH_EVENTS", 200);
    let subscribers = env("BENCH_SUBSCRIBERS", 1000);
    let deliveries = env("BENCH_DELIVERIES", 20_000);
    let ai_messages = env("BENCH_AI", 2_000);
    let automation_messages = env("BENCH_AUTOMATION", 2_000);
    let flow_executions = env("BENCH_FLOWS", 1_000);
    MODEL_PORT.get_or_init(start_model_double);
    let db = fresh_database().await;
    wagate::telemetry::init(&settings(&db).log);
    let net = Network::start();
    net.set_contact_behaviour(CONTACT, None, None).await;
    let (gateway, base) = Gateway::start(&db, &net).await;
    // An A/B switch for what the statistics' rollup costs the hot paths: the same binary
    // with its triggers on `messages` off.
    if std::env::var("BENCH_NO_STATS_ROLLUP").is_ok_and(|v| v == "1") {
        let mut conn = AsyncPgConnection::establish(&db).await.unwrap();
        for t in ["messages_stats_inserted", "messages_stats_updated"] {
            diesel::sql_query(format!("ALTER TABLE messages DISABLE TRIGGER {t}"))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        println!("(the statistics' rollup triggers are off)");
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let bench = Bench {
        base: base.clone(),
        db: db.clone(),
        net,
        gateway,
        http: http.clone(),
    };
    let mut report = serde_json::Map::new();
    report.insert(
        "mode".into(),
        json!(if bench.net.is_remote() {
            "gateway and simulator each in a process of their own"
        } else {
            "gateway, simulator and load generator in one process"
        }),
    );

    // A receiver for webhook deliveries (each tenant subscribes to its received messages).
    let receiver = Receiver::start();
    let rport = receiver.port;

    // One tenant per session, each linked by a simulated phone.
    let bench_ref = &bench;
    let linked: Vec<Linked> = futures::stream::iter(0..sessions)
        .map(|i| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let t = json_of(
                    http.post(format!("{base}/api/v1/tenants"))
                        .bearer_auth(ADMIN_KEY)
                        .json(&json!({"name": format!("t{i}")})),
                )
                .await;
                let key = t["api_key"].as_str().unwrap().to_owned();
                let tenant: uuid::Uuid = t["id"].as_str().unwrap().parse().unwrap();
                let s = json_of(
                    http.post(format!("{base}/api/v1/sessions"))
                        .bearer_auth(&key)
                        .json(&json!({"name": "s"})),
                )
                .await;
                let id = s["id"].as_str().unwrap().to_owned();
                http.post(format!("{base}/api/v1/webhooks"))
                    .bearer_auth(&key)
                    .json(&json!({"url": format!("http://127.0.0.1:{rport}/in/{i}"), "events": ["message.received"]}))
                    .send()
                    .await
                    .unwrap();
                http.post(format!("{base}/api/v1/sessions/{id}/start"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap();
                let phone = format!("+1555{:07}", 1_000_000 + i);
                loop {
                    let res = http
                        .get(format!("{base}/api/v1/sessions/{id}/qr"))
                        .bearer_auth(&key)
                        .send()
                        .await
                        .unwrap();
                    if res.status() == 200 {
                        let qr: Value = res.json().await.unwrap();
                        if bench_ref
                            .net
                            .scan_qr(qr["qr"].as_str().unwrap(), &phone)
                            .await
                            .is_ok()
                        {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Linked {
                    key,
                    id,
                    tenant,
                    phone,
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    wait_count(
        &db,
        "SELECT count(*) AS n FROM sessions WHERE status = 'connected'",
        sessions as i64,
    )
    .await;
    // The first message each way sets up the Signal sessions with the contact.
    for l in &linked {
        assert_eq!(bench.send(&l.key, &l.id, "warm-up".into()).await, 202);
        bench
            .net
            .inject_text(CONTACT, &l.phone, "warm-up")
            .await
            .unwrap();
    }
    let mut expected_sent = sessions as i64;
    wait_count(
        &db,
        "SELECT count(*) AS n FROM messages WHERE status = 'sent'",
        expected_sent,
    )
    .await;
    wait_count(
        &db,
        "SELECT count(*) AS n FROM messages WHERE direction = 'in'",
        sessions as i64,
    )
    .await;
    eprintln!("{sessions} sessions linked and warmed up");

    // 1. Sends, closed loop.
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(messages)));
    let before = bench.spent().await;
    let started = Instant::now();
    futures::stream::iter(0..messages)
        .map(|i| {
            let l = &linked[i % linked.len()];
            let latencies = latencies.clone();
            let bench = &bench;
            async move {
                let t = Instant::now();
                assert_eq!(bench.send(&l.key, &l.id, format!("bench {i}")).await, 202);
                latencies.lock().unwrap().push(t.elapsed());
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let accepted_in = started.elapsed();
    expected_sent += messages as i64;
    let done = wait_count(
        &db,
        "SELECT count(*) AS n FROM messages WHERE status = 'sent'",
        expected_sent,
    )
    .await;
    let after = bench.spent().await;
    let all_sent = done - started;
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    let closed = json!({
        "messages": messages,
        "sessions": sessions,
        "in_flight": IN_FLIGHT,
        "accepted_per_s": (messages as f64 / accepted_in.as_secs_f64()).round(),
        "accept_to_sent_per_s": (messages as f64 / all_sent.as_secs_f64()).round(),
        "accept_p50_ms": ms(percentile(&lat, 0.5)),
        "accept_p99_ms": ms(percentile(&lat, 0.99)),
        "per_message": bench.per_message(&before, &after, messages),
    });
    println!("sends, closed loop: {closed}");
    report.insert("sends_closed_loop".into(), closed);

    // 2. Sends, open loop: a fixed schedule, latency from each scheduled time.
    let total = rate * open_secs;
    let before = bench.spent().await;
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let statuses = Arc::new(std::sync::Mutex::new(HashMap::<u16, usize>::new()));
    let tasks: Vec<_> = (0..total)
        .map(|i| {
            let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
            let l = linked[i % linked.len()].clone();
            let (http, base, statuses) = (http.clone(), base.clone(), statuses.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let status = http
                    .post(format!("{base}/api/v1/sessions/{}/messages", l.id))
                    .bearer_auth(&l.key)
                    .json(&json!({"to": CONTACT, "text": format!("open {i}")}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                *statuses.lock().unwrap().entry(status).or_default() += 1;
                at.elapsed()
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(total);
    for t in tasks {
        lat.push(t.await.unwrap());
    }
    let offered_for = start.elapsed();
    let accepted = statuses.lock().unwrap().get(&202).copied().unwrap_or(0);
    expected_sent += accepted as i64;
    let done = wait_count(
        &db,
        "SELECT count(*) AS n FROM messages WHERE status = 'sent'",
        expected_sent,
    )
    .await;
    let after = bench.spent().await;
    lat.sort();
    let open = json!({
        "offered_per_s": rate,
        "seconds": open_secs,
        "statuses": *statuses.lock().unwrap(),
        "accept_p50_ms": ms(percentile(&lat, 0.5)),
        "accept_p99_ms": ms(percentile(&lat, 0.99)),
        "accept_max_ms": ms(*lat.last().unwrap()),
        "all_sent_after_s": ((done - start.into_std()).as_secs_f64() * 100.0).round() / 100.0,
        "offered_over_s": (offered_for.as_secs_f64() * 100.0).round() / 100.0,
        "per_message": bench.per_message(&before, &after, accepted),
    });
    println!("sends, open loop: {open}");
    report.insert("sends_open_loop".into(), open);

    // 3. Inbound: contacts' messages through the simulator.
    let in_before = count(
        &db,
        "SELECT count(*) AS n FROM messages WHERE direction = 'in'",
    )
    .await;
    let before = bench.spent().await;
    let started = Instant::now();
    futures::stream::iter(0..inbound)
        .map(|i| {
            let l = &linked[i % linked.len()];
            let bench = &bench;
            async move {
                bench
                    .net
                    .inject_text(CONTACT, &l.phone, &format!("inbound {i}"))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let injected_in = started.elapsed();
    let done = wait_count(
        &db,
        "SELECT count(*) AS n FROM messages WHERE direction = 'in'",
        in_before + inbound as i64,
    )
    .await;
    let after = bench.spent().await;
    let stored_in = done - started;
    let webhook_rows = count(
        &db,
        "SELECT count(*) AS n FROM webhook_deliveries WHERE event_type = 'message.received'",
    )
    .await;
    assert!(webhook_rows >= in_before + inbound as i64, "{webhook_rows}");
    let inbound_report = json!({
        "messages": inbound,
        "injected_per_s": (inbound as f64 / injected_in.as_secs_f64()).round(),
        "stored_per_s": (inbound as f64 / stored_in.as_secs_f64()).round(),
        "per_message": bench.per_message(&before, &after, inbound),
    });
    println!("inbound: {inbound_report}");
    let inbound_cost = inbound_report["per_message"].clone();
    report.insert("inbound".into(), inbound_report);

    // 3b. Contacts' messages answered by an agent.
    if ai_messages > 0 {
        let send_cost = report["sends_closed_loop"]["per_message"].clone();
        let answers =
            answered_by_agents(&bench, &linked, ai_messages, &inbound_cost, &send_cost).await;
        println!("answered by agents: {answers}");
        report.insert("answered_by_agents".into(), answers);
    }

    // 3c. Triggers and flows.
    if automation_messages > 0 || flow_executions > 0 {
        let automation = automation(
            &bench,
            &linked,
            automation_messages,
            flow_executions,
            &inbound_cost,
        )
        .await;
        println!("automation: {automation}");
        report.insert("automation".into(), automation);
    }

    // 4. Authenticated reads with wrk, and /health under that load.
    let l = &linked[0];
    let auth = format!("Authorization: Bearer {}", l.key);
    for (name, path) in [
        ("read_session", format!("/api/v1/sessions/{}", l.id)),
        (
            "read_messages",
            format!("/api/v1/sessions/{}/messages?limit=50", l.id),
        ),
    ] {
        let Some(result) = wrk_reads(&base, &path, &auth).await else {
            eprintln!("wrk is not installed: no read benchmark (apt-get install wrk)");
            break;
        };
        println!("{name}: {result}");
        report.insert(name.into(), result);
    }

    if let Gateway::InProcess(state) = &bench.gateway {
        let (fanout, hooks) = fan_out_and_webhooks(
            state,
            &bench,
            &linked[0],
            &receiver,
            events,
            subscribers,
            deliveries,
        )
        .await;
        report.insert("fan_out".into(), fanout);
        report.insert("webhooks".into(), hooks);
    }
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    drop(bench);
    std::process::exit(0);
}

/// Phase 3c: 1,000 triggers per tenant, of which only the lowest-priority one matches (every
/// event is evaluated against all of them); `messages` contact messages across the sessions,
/// each answered by that trigger's reply. Then `executions` flow executions of seven steps
/// (three sends) started over HTTP, until all complete.
async fn automation(
    bench: &Bench,
    linked: &[Linked],
    messages: usize,
    executions: usize,
    inbound_cost: &Value,
) -> Value {
    let mut out = serde_json::Map::new();
    // Phase 3b's agents off: this phase measures triggers alone.
    count(
        &bench.db,
        "WITH d AS (DELETE FROM session_agents RETURNING 1) SELECT count(*) AS n FROM d",
    )
    .await;
    // Triggers straight into the table: 100,000 over HTTP would measure the API instead.
    count(
        &bench.db,
        "WITH t AS (INSERT INTO triggers (id, tenant_id, name, event, conditions, reply_text, priority) \
           SELECT gen_random_uuid(), s.tenant_id, 'kw ' || g, 'message.received', \
             jsonb_build_array(jsonb_build_object('field', 'text', 'op', \
               CASE WHEN g % 3 = 0 THEN 'regex' WHEN g % 3 = 1 THEN 'contains' ELSE 'any' END, \
               'value', CASE WHEN g % 3 = 0 THEN to_jsonb('^order\\s+#' || g || '$') \
                             WHEN g % 3 = 1 THEN to_jsonb('keyword ' || g) \
                             ELSE jsonb_build_array('word' || g, 'other' || g) END)), \
             'never', 1000 - g \
           FROM (SELECT DISTINCT tenant_id FROM sessions) s, generate_series(1, 999) g RETURNING 1), \
         last AS (INSERT INTO triggers (id, tenant_id, name, event, conditions, reply_text, priority) \
           SELECT gen_random_uuid(), s.tenant_id, 'the one', 'message.received', \
             '[{\"field\": \"text\", \"op\": \"starts_with\", \"value\": \"auto\"}]', \
             'Automatic answer to {{text}}', -1 FROM (SELECT DISTINCT tenant_id FROM sessions) s \
           RETURNING 1), \
         v AS (INSERT INTO automation_versions (tenant_id, version) \
           SELECT DISTINCT tenant_id, 1 FROM sessions ON CONFLICT (tenant_id) \
           DO UPDATE SET version = automation_versions.version + 1 RETURNING 1) \
         SELECT (SELECT count(*) FROM t) + (SELECT count(*) FROM last) AS n",
    )
    .await;
    let fired_sql = "SELECT count(*) AS n FROM automation_work WHERE outcome = 'fired'";
    let sent_sql = "SELECT count(*) AS n FROM messages WHERE status = 'sent'";
    if messages > 0 {
        let sent_before = count(&bench.db, sent_sql).await;
        let before = bench.spent().await;
        let started = Instant::now();
        futures::stream::iter(0..messages)
            .map(|i| {
                let l = &linked[i % linked.len()];
                async move {
                    bench
                        .net
                        .inject_text(CONTACT, &l.phone, &format!("automatic {i}"))
                        .await
                        .unwrap();
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        let evaluated = wait_count(&bench.db, fired_sql, messages as i64).await;
        let done = wait_count(&bench.db, sent_sql, sent_before + messages as i64).await;
        let after = bench.spent().await;
        let all = bench.per_message(&before, &after, messages);
        let own = |field: &str| {
            let f = |v: &Value| v[field].as_f64().unwrap_or(f64::NAN);
            ((f(&all) - f(inbound_cost)) * 100.0).round() / 100.0
        };
        out.insert(
            "triggers".into(),
            json!({
                "triggers_per_tenant": 1000,
                "messages": messages,
                "evaluated_per_s": (messages as f64 / (evaluated - started).as_secs_f64()).round(),
                "answered_per_s": (messages as f64 / (done - started).as_secs_f64()).round(),
                "per_event": all,
                "less_inbound_per_event": {
                    "statements": own("statements"),
                    "transactions": own("transactions"),
                    "postgres_cpu_us": own("postgres_cpu_us"),
                    "gateway_cpu_us": own("gateway_cpu_us"),
                },
            }),
        );
    }
    if executions > 0 {
        let mut flows = Vec::new();
        for l in linked {
            let flow = json_of(bench.http.post(format!("{}/api/v1/flows", bench.base)).bearer_auth(&l.key).json(
                &json!({"name": "bench", "steps": [
                    {"id": "hello", "type": "send_text", "text": "Hello {{phone}}"},
                    {"id": "count", "type": "set_variable", "name": "n", "value": "1"},
                    {"id": "more", "type": "send_text", "text": "Step {{n}}"},
                    {"id": "again", "type": "set_variable", "name": "n", "value": "2"},
                    {"id": "check", "type": "branch", "conditions": [{"field": "n", "op": "equals", "value": "2"}], "then": "bye", "else": "end"},
                    {"id": "bye", "type": "send_text", "text": "Bye"},
                    {"id": "end", "type": "end"}
                ]}),
            ))
            .await;
            flows.push(flow["id"].as_str().unwrap().to_owned());
        }
        let done_sql = "SELECT count(*) AS n FROM flow_executions WHERE status = 'completed'";
        let done_before = count(&bench.db, done_sql).await;
        let before = bench.spent().await;
        let started = Instant::now();
        futures::stream::iter(0..executions)
            .map(|i| {
                let (l, flow) = (&linked[i % linked.len()], &flows[i % linked.len()]);
                async move {
                    let res = bench
                        .http
                        .post(format!("{}/api/v1/flows/{flow}/execute", bench.base))
                        .bearer_auth(&l.key)
                        .json(&json!({"session_id": l.id, "chat": CONTACT}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(res.status(), 202);
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        let done = wait_count(&bench.db, done_sql, done_before + executions as i64).await;
        let after = bench.spent().await;
        let steps = executions * 7;
        out.insert(
            "flows".into(),
            json!({
                "executions": executions,
                "steps": steps,
                "steps_per_s": (steps as f64 / (done - started).as_secs_f64()).round(),
                "executions_per_s": (executions as f64 / (done - started).as_secs_f64()).round(),
                // Per step: the HTTP start, the interpreter, its commits and three queued sends.
                "per_step": bench.per_message(&before, &after, steps),
            }),
        );
    }
    Value::Object(out)
}

/// Phase 3b: an agent on every session; `total` contact messages in rounds of one per
/// session, each round answered (and the answers sent) before the next.
async fn answered_by_agents(
    bench: &Bench,
    linked: &[Linked],
    total: usize,
    inbound_cost: &Value,
    send_cost: &Value,
) -> Value {
    for l in linked {
        let agent = json_of(
            bench
                .http
                .post(format!("{}/api/v1/agents", bench.base))
                .bearer_auth(&l.key)
                .json(
                    &json!({"name": "bench", "provider": "gemini", "model": "gemini-2.0-flash",
                    "system_prompt": "Answer briefly.", "debounce_ms": 0, "typing": false}),
                ),
        )
        .await;
        let res = bench
            .http
            .put(format!("{}/api/v1/sessions/{}/agent", bench.base, l.id))
            .bearer_auth(&l.key)
            .json(&json!({"agent_id": agent["id"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    // Phase 3's webhook deliveries drained and the webhooks off: this phase measures the
    // message stored, the answer and its sending, nothing left over from before.
    wait_count(
        &bench.db,
        "SELECT count(*) AS n FROM (SELECT 1 FROM webhook_deliveries WHERE status = 'pending' \
         HAVING count(*) = 0) d",
        1,
    )
    .await;
    count(
        &bench.db,
        "WITH off AS (UPDATE webhooks SET enabled = false RETURNING 1) SELECT count(*) AS n FROM off",
    )
    .await;
    let rounds = total.div_ceil(linked.len());
    let sent_sql = "SELECT count(*) AS n FROM messages WHERE status = 'sent'";
    let replies_sql = "SELECT count(*) AS n FROM ai_calls WHERE kind = 'reply'";
    let sent_before = count(&bench.db, sent_sql).await;
    let before = bench.spent().await;
    let started = Instant::now();
    let mut answered = 0usize;
    for round in 0..rounds {
        futures::stream::iter(linked)
            .map(|l| async move {
                bench
                    .net
                    .inject_text(CONTACT, &l.phone, &format!("question {round}"))
                    .await
                    .unwrap();
            })
            .buffer_unordered(IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        answered += linked.len();
        wait_count(&bench.db, replies_sql, answered as i64).await;
    }
    let done = wait_count(&bench.db, sent_sql, sent_before + answered as i64).await;
    let after = bench.spent().await;
    let took = done - started;
    let replies = count(&bench.db, replies_sql).await;
    assert_eq!(replies, answered as i64, "one answer per message");
    let all = bench.per_message(&before, &after, answered);
    // The pipeline's own: less what storing the message and sending the answer cost anyway.
    let own = |field: &str| {
        let f = |v: &Value| v[field].as_f64().unwrap_or(f64::NAN);
        ((f(&all) - f(inbound_cost) - f(send_cost)) * 100.0).round() / 100.0
    };
    json!({
        "messages": answered,
        "sessions": linked.len(),
        "answers_per_s": (answered as f64 / took.as_secs_f64()).round(),
        "per_answer": all,
        "pipeline_own_per_answer": {
            "statements": own("statements"),
            "transactions": own("transactions"),
            "postgres_cpu_us": own("postgres_cpu_us"),
            "gateway_cpu_us": own("gateway_cpu_us"),
        },
    })
}

/// `wrk` for 10 s with 64 connections on `path`, and one more connection on `/health`
/// meanwhile; `None` when wrk is not installed.
async fn wrk_reads(base: &str, path: &str, auth: &str) -> Option<Value> {
    let secs = env("BENCH_READ_SECS", 10).to_string();
    let run = |args: Vec<String>| {
        tokio::process::Command::new("wrk")
            .args(args)
            .kill_on_drop(true)
            .output()
    };
    let load = run(vec![
        "-t2".into(),
        "-c64".into(),
        format!("-d{secs}s"),
        "--latency".into(),
        "-H".into(),
        auth.to_owned(),
        format!("{base}{path}"),
    ]);
    let health = run(vec![
        "-t1".into(),
        "-c1".into(),
        format!("-d{secs}s"),
        "--latency".into(),
        format!("{base}/health"),
    ]);
    let (load, health) = futures::join!(load, health);
    let (load, health) = (load.ok()?, health.ok()?);
    let load = String::from_utf8_lossy(&load.stdout).into_owned();
    let health = String::from_utf8_lossy(&health.stdout).into_owned();
    let non_2xx = load
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .map(|v| v.trim().to_owned());
    assert!(non_2xx.is_none(), "reads failed: {load}");
    Some(json!({
        "requests_per_s": wrk_field(&load, "Requests/sec:"),
        "p50_ms": wrk_latency(&load, "50%"),
        "p99_ms": wrk_latency(&load, "99%"),
        "health_p50_ms": wrk_latency(&health, "50%"),
        "health_p99_ms": wrk_latency(&health, "99%"),
    }))
}

fn wrk_field(out: &str, name: &str) -> f64 {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// A percentile of wrk's latency distribution, in ms.
fn wrk_latency(out: &str, pct: &str) -> f64 {
    let Some(v) = out
        .lines()
        .find_map(|l| l.trim().strip_prefix(pct).map(str::trim))
    else {
        return f64::NAN;
    };
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let num: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => num / 1000.0,
        "ms" => num,
        "s" => num * 1000.0,
        "m" => num * 60_000.0,
        _ => f64::NAN,
    }
}

/// WebSocket fan-out to one tenant's subscribers, then webhook deliveries to a local receiver
/// over 16 endpoints (both need the gateway's state in this process).
async fn fan_out_and_webhooks(
    state: &AppState,
    bench: &Bench,
    linked: &Linked,
    receiver: &Receiver,
    events: usize,
    subscribers: usize,
    deliveries: usize,
) -> (Value, Value) {
    let (base, http, db) = (&bench.base, &bench.http, &bench.db);
    let (key, tenant) = (&linked.key, linked.tenant);
    let port = base.rsplit_once(':').unwrap().1;
    let received = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let mut req = format!("ws://127.0.0.1:{port}/api/v1/events")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let received = received.clone();
        clients.push(tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if m.is_text() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut conn = AsyncPgConnection::establish(db).await.unwrap();
    let stats = state
        .events
        .notifier
        .send(wagate_actors::notification::GetStats)
        .await
        .unwrap();
    assert!(stats.subscribers >= subscribers, "{stats:?}");
    let started = Instant::now();
    let mut rows = Vec::with_capacity(events);
    for n in 0..events {
        rows.push(
            wagate::events::insert_event(
                &mut conn,
                tenant,
                None,
                &wagate::events::EventPayload::Session(
                    wagate::events::SessionEvent::Disconnected {
                        reason: format!("bench {n}"),
                    },
                ),
            )
            .await
            .unwrap(),
        );
    }
    let stored_in = started.elapsed();
    let started = Instant::now();
    state.events.publish(rows);
    let want = events * subscribers;
    while AtomicUsize::load(&received, Ordering::Relaxed) < want {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "fan-out stalled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let fanned = started.elapsed();
    let fanout = json!({
        "events": events,
        "subscribers": subscribers,
        "frames_per_s": (want as f64 / fanned.as_secs_f64()).round(),
        "storing_events_one_by_one_s": stored_in.as_secs_f64(),
    });
    println!("fan-out: {fanout}");
    for c in clients {
        c.abort();
    }

    let (rport, hits_before) = (receiver.port, receiver.hits());
    let mut hooks = Vec::new();
    for i in 0..16 {
        let w = json_of(
            http.post(format!("{base}/api/v1/webhooks"))
                .bearer_auth(key)
                .json(&json!({"url": format!("http://127.0.0.1:{rport}/hook/{i}"), "events": ["message.status"]})),
        )
        .await;
        hooks.push(w["id"].as_str().unwrap().to_owned());
    }
    let list = hooks
        .iter()
        .map(|h| format!("'{h}'::uuid"))
        .collect::<Vec<_>>()
        .join(",");
    diesel::sql_query(format!(
        "INSERT INTO webhook_deliveries (id, webhook_id, tenant_id, event_id, event_type, payload) \
         SELECT 'msg_bench_' || g, (ARRAY[{list}])[1 + g % 16], '{tenant}', g, 'message.status', \
                jsonb_build_object('id', g, 'type', 'message.status', 'data', jsonb_build_object('n', g)) \
         FROM generate_series(1, {deliveries}) g"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let started = Instant::now();
    state.webhook_wake.notify_one();
    let done = wait_count(
        db,
        "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'delivered' AND id LIKE 'msg_bench_%'",
        deliveries as i64,
    )
    .await;
    let took = done - started;
    let webhooks = json!({
        "deliveries": deliveries,
        "endpoints": 16,
        "deliveries_per_s": (deliveries as f64 / took.as_secs_f64()).round(),
        "requests_received": receiver.hits() - hits_before,
    });
    println!("webhooks: {webhooks}");
    (fanout, webhooks)
}
