#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Benchmark: messaging, event fan-out and webhook delivery through the whole gateway, with
//! the in-process simulator.
//!
//! 1. Sends: `BENCH_MESSAGES` (20,000) texts over HTTP (64 in flight) across
//!    `BENCH_SESSIONS` (100) linked sessions of as many tenants, unpaced; reports accept
//!    latency (p50/p99 of the 202) and messages/s from the first accept to the last
//!    simulator ack (status `sent` stored). Contacts send no receipts, so only the send
//!    path is measured.
//! 2. Fan-out: 1,000 WebSocket subscribers of one tenant; `BENCH_EVENTS` (200) events
//!    published; reports events/s written to subscribers (events × subscribers / time until
//!    every subscriber has them all).
//! 3. Webhooks: `BENCH_DELIVERIES` (20,000) outbox rows over 16 endpoints of a local
//!    receiver; reports deliveries/s until all are stored as delivered.
//!
//!     cargo bench -p wagate --features sandbox --bench messaging
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
use wagate::app::{Application, RunOptions};
use wagate::configuration::{Overrides, Settings, TierQuotas};
use wagate::whatsapp_network::{Simulator, WhatsAppNetwork};
use wagate_sim::network::ContactBehaviour;

const ADMIN_KEY: &str = "bench-admin-key-0123456789";
/// The key store's key, set explicitly: a gateway the benchmark starts never leans on a generated one.
const STORE_KEY: &str = "YmVuY2gtc3RvcmUta2V5LTAxMjM0NTY3ODlhYmNkZWY=";
const CONTACT: &str = "+4915112345678";

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

fn settings(db: &str) -> Settings {
    let mut s = Settings::load_from(&Overrides::default(), &HashMap::new()).unwrap();
    s.application.port = 0;
    s.auth.admin_key = Some(SecretString::from(ADMIN_KEY));
    s.auth.jwt_secret = Some(SecretString::from(
        "bench-jwt-secret-0123456789abcdef0123456789",
    ));
    s.store.encryption_key = Some(SecretString::from(STORE_KEY));
    s.sandbox.persist_network = false;
    s.database.url = Some(SecretString::from(db.to_owned()));
    s.database.pool_size = 32;
    s.database.connect_timeout_secs = 30;
    s.rate_limit.enabled = false;
    s.sessions.qr_timeout_secs = 3600;
    s.sessions.node_id = Some("bench".into());
    s.messages.rate_per_minute = TierQuotas {
        standard: 0,
        professional: 0,
        enterprise: 0,
    };
    s.messages.max_queued_per_tenant = 1_000_000;
    // Every session here is standard: `BENCH_SEND_SLOTS` sends at once (default: the config's).
    if let Ok(n) = std::env::var("BENCH_SEND_SLOTS") {
        s.messages.send_slots.standard = n.parse().unwrap();
    }
    s.webhooks.allow_private_targets = true;
    s.webhooks.poll_interval_ms = 50;
    s.log.level = std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into());
    s
}

async fn count(db: &str, sql: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(db).await.unwrap();
    diesel::sql_query(sql)
        .get_result::<N>(&mut conn)
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

fn main() {
    actix_web::rt::System::new().block_on(run());
}

async fn run() {
    let sessions = env("BENCH_SESSIONS", 100);
    let messages = env("BENCH_MESSAGES", 20_000);
    let events = env("BENCH_EVENTS", 200);
    let subscribers = env("BENCH_SUBSCRIBERS", 1000);
    let deliveries = env("BENCH_DELIVERIES", 20_000);
    let db = fresh_database().await;
    let s = settings(&db);
    wagate::telemetry::init(&s.log);
    let sim = Simulator::new();
    sim.set_contact_behaviour(
        CONTACT,
        ContactBehaviour {
            deliver_after_ms: None,
            read_after_ms: None,
        },
    )
    .unwrap();
    let app = Application::build(
        s,
        RunOptions {
            handle_signals: false,
            network: Some(WhatsAppNetwork::Sandbox(sim.clone())),
        },
    )
    .await
    .unwrap();
    let port = app.port();
    let state = app.state();
    let base = format!("http://127.0.0.1:{port}");
    actix_web::rt::spawn(app.run_until_stopped());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()
        .unwrap();

    // One tenant per session, each linked by a simulated phone.
    let linked: Vec<(String, String, uuid::Uuid)> = futures::stream::iter(0..sessions)
        .map(|i| {
            let (http, base, sim) = (http.clone(), base.clone(), sim.clone());
            async move {
                let t: Value = http
                    .post(format!("{base}/api/v1/tenants"))
                    .bearer_auth(ADMIN_KEY)
                    .json(&json!({"name": format!("t{i}")}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let key = t["api_key"].as_str().unwrap().to_owned();
                let tenant: uuid::Uuid = t["id"].as_str().unwrap().parse().unwrap();
                let s: Value = http
                    .post(format!("{base}/api/v1/sessions"))
                    .bearer_auth(&key)
                    .json(&json!({"name": "s"}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let id = s["id"].as_str().unwrap().to_owned();
                http.post(format!("{base}/api/v1/sessions/{id}/start"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap();
                loop {
                    let res = http
                        .get(format!("{base}/api/v1/sessions/{id}/qr"))
                        .bearer_auth(&key)
                        .send()
                        .await
                        .unwrap();
                    if res.status() == 200 {
                        let qr: Value = res.json().await.unwrap();
                        let phone = format!("+1555{:07}", 1_000_000 + i);
                        if sim
                            .scan_qr(qr["qr"].as_str().unwrap(), &phone)
                            .await
                            .is_ok()
                        {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                (key, id, tenant)
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
    // The first message of each session sets up its Signal session with the contact.
    for (key, id, _) in &linked {
        http.post(format!("{base}/api/v1/sessions/{id}/messages"))
            .bearer_auth(key)
            .json(&json!({"to": CONTACT, "text": "warm-up"}))
            .send()
            .await
            .unwrap();
    }
    wait_count(
        &db,
        "SELECT count(*) AS n FROM messages WHERE status = 'sent'",
        sessions as i64,
    )
    .await;
    eprintln!("{sessions} sessions linked and warmed up");

    // 1. Sends.
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(messages)));
    let started = Instant::now();
    futures::stream::iter(0..messages)
        .map(|i| {
            let (http, base) = (http.clone(), base.clone());
            let (key, id, _) = linked[i % linked.len()].clone();
            let latencies = latencies.clone();
            async move {
                let t = Instant::now();
                let res = http
                    .post(format!("{base}/api/v1/sessions/{id}/messages"))
                    .bearer_auth(&key)
                    .json(&json!({"to": CONTACT, "text": format!("bench {i}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 202);
                latencies.lock().unwrap().push(t.elapsed());
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let accepted_in = started.elapsed();
    let done = wait_count(
        &db,
        "SELECT count(*) AS n FROM messages WHERE status = 'sent'",
        (messages + sessions) as i64,
    )
    .await;
    let all_sent = done - started;
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    println!(
        "sends: {messages} messages over {sessions} sessions: accepted in {:.2} s ({:.0}/s), \
         all acked by the simulator in {:.2} s = {:.0} messages/s; accept latency p50 {:.1} ms, p99 {:.1} ms",
        accepted_in.as_secs_f64(),
        messages as f64 / accepted_in.as_secs_f64(),
        all_sent.as_secs_f64(),
        messages as f64 / all_sent.as_secs_f64(),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
    );

    // 2. WebSocket fan-out to one tenant's subscribers.
    let (key, _, tenant) = linked[0].clone();
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
    let mut conn = AsyncPgConnection::establish(&db).await.unwrap();
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
    println!(
        "fan-out: {events} events to {subscribers} WebSocket subscribers ({want} frames) in {:.2} s = {:.0} events/s delivered \
         (storing the {events} events one by one took {:.2} s)",
        fanned.as_secs_f64(),
        want as f64 / fanned.as_secs_f64(),
        stored_in.as_secs_f64(),
    );
    for c in clients {
        c.abort();
    }

    // 3. Webhook deliveries to a local receiver, 16 endpoints.
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
    let rport = server.addrs()[0].port();
    actix_web::rt::spawn(server.run());
    let mut hooks = Vec::new();
    for i in 0..16 {
        let w: Value = http
            .post(format!("{base}/api/v1/webhooks"))
            .bearer_auth(&key)
            .json(&json!({"url": format!("http://127.0.0.1:{rport}/hook/{i}"), "events": ["message.status"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
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
        &db,
        "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'delivered' AND id LIKE 'msg_bench_%'",
        deliveries as i64,
    )
    .await;
    let took = done - started;
    println!(
        "webhooks: {deliveries} deliveries to 16 endpoints (4 in flight each) in {:.2} s = {:.0} deliveries/s ({} requests received)",
        took.as_secs_f64(),
        deliveries as f64 / took.as_secs_f64(),
        AtomicUsize::load(&hits, Ordering::Relaxed)
    );
    std::process::exit(0);
}
