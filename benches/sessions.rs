#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Benchmark: N gateway sessions linked and connected through the in-process simulator.
//!
//! The whole gateway runs (HTTP, Postgres key stores, supervision tree, a whatsapp-rust
//! client per session on its pool's arbiters). Sessions are created and started over
//! HTTP; a simulated phone scans each QR. Reports the wall time to connect all, resident
//! memory and live heap per connected session, idle CPU, and the time to resume all of
//! them after a gateway restart with the resume rate unthrottled.
//!
//!     cargo bench -p wagate --features sandbox --bench sessions            # N = 1000
//!     BENCH_SESSIONS=5000 cargo bench -p wagate --features sandbox --bench sessions
//!     BENCH_REMOTE_SIM=1 BENCH_SESSIONS=10000 cargo bench -p wagate --features sandbox --bench sessions
//!
//! `BENCH_REMOTE_SIM=1` runs the simulator in a child process (this binary again) and the
//! gateway reaches it over loopback websockets, as it reaches WhatsApp: the RSS and heap then
//! measured are the gateway's alone, not the simulated phones' as well.
//!
//! A fresh database is created on the Postgres server `TEST_DATABASE_URL` (or `DATABASE_URL`)
//! names, else on the tests' private cluster (`tests/support/database.rs`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures::StreamExt;
use secrecy::SecretString;
use serde_json::{Value, json};
use wagate::app::{Application, RunOptions};
use wagate::configuration::{Overrides, Settings};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
#[path = "support/processes.rs"]
mod processes;
#[path = "support/sim_network.rs"]
mod sim_network;
use counting_alloc::{CountingAlloc, live_kib};
use processes::{cpu_secs_of, machine_busy_secs, rss_kib_of};
use sim_network::{Network, ROLE_ENV, json_of, serve_simulator};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const ADMIN_KEY: &str = "bench-admin-key-0123456789";
/// The key store's key, set explicitly: a gateway the benchmark starts never leans on a generated one.
const STORE_KEY: &str = "YmVuY2gtc3RvcmUta2V5LTAxMjM0NTY3ODlhYmNkZWY=";
const CONCURRENCY: usize = 32;
/// How long the benchmark waits for the first gateway's sessions to be recorded stopped.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(120);

fn rss_kib() -> f64 {
    rss_kib_of("self")
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Process CPU time (user + system) in seconds.
fn cpu_secs() -> f64 {
    cpu_secs_of("self")
}

#[path = "../tests/support/database.rs"]
mod database;

/// A fresh database for one run (`wagate_bench_<uuid>`), where the tests make theirs.
async fn fresh_database() -> String {
    database::fresh_database_named("wagate_bench").await
}

fn settings(db: &str, n: u32) -> Settings {
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
    s.rate_limit.enabled = false;
    s.sessions.quotas.standard = n;
    s.sessions.qr_timeout_secs = 3600;
    s.sessions.node_id = Some("bench".into());
    s.database.connect_timeout_secs = 30;
    s.log.level = std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into());
    s
}

async fn start_app(
    s: Settings,
    net: &Network,
) -> (
    String,
    actix_web::dev::ServerHandle,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let app = Application::build(
        s,
        RunOptions {
            handle_signals: false,
            network: Some(net.for_gateway()),
        },
    )
    .await
    .unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let join = actix_web::rt::spawn(app.run_until_stopped());
    (base, handle, join)
}

async fn start_session(http: &reqwest::Client, base: &str, key: &str, id: &str) {
    let res = http
        .post(format!("{base}/api/v1/sessions/{id}/start"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
}

/// Sets `log_statement` for new connections to the bench database.
async fn set_statement_log(db: &str, level: &str) {
    let name = db.rsplit_once('/').map(|(_, n)| n).unwrap();
    diesel::sql_query(format!(
        "ALTER DATABASE {name} SET log_statement = '{level}'"
    ))
    .execute(&mut *poll_conn(db).await)
    .await
    .unwrap();
}

/// The benchmark's own connection for polling, opened once: a new backend per poll would
/// cost Postgres a process start every few milliseconds, on the cores being measured.
async fn poll_conn(db: &str) -> tokio::sync::MappedMutexGuard<'static, AsyncPgConnection> {
    static CONNS: tokio::sync::Mutex<Option<(String, AsyncPgConnection)>> =
        tokio::sync::Mutex::const_new(None);
    let mut slot = CONNS.lock().await;
    if slot.as_ref().is_none_or(|(url, _)| url != db) {
        *slot = Some((
            db.to_owned(),
            AsyncPgConnection::establish(db).await.unwrap(),
        ));
    }
    tokio::sync::MutexGuard::map(slot, |s| &mut s.as_mut().unwrap().1)
}

async fn count_status(db: &str, status: &str) -> i64 {
    use wagate::schema::sessions;
    let mut conn = poll_conn(db).await;
    sessions::table
        .filter(sessions::status.eq(status))
        .count()
        .get_result(&mut *conn)
        .await
        .unwrap()
}

async fn wait_count(db: &str, status: &str, n: i64, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let c = count_status(db, status).await;
        if c >= n {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "only {c}/{n} sessions {status} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn main() {
    if std::env::var(ROLE_ENV).is_ok_and(|v| v == "simulator") {
        actix_web::rt::System::new().block_on(serve_simulator());
        return;
    }
    let n: u32 = std::env::var("BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    actix_web::rt::System::new().block_on(run(n));
}

async fn run(n: u32) {
    wagate::telemetry::init(&settings("postgres://unused/x", n).log);
    let db = fresh_database().await;
    let sim = Network::start();
    let timeout = Duration::from_secs(1800);
    let (base, handle, join) = start_app(settings(&db, n), &sim).await;
    let http = reqwest::Client::new();
    let tenant = json_of(
        http.post(format!("{base}/api/v1/tenants"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"name": "bench", "tier": "standard"})),
    )
    .await;
    let key = tenant["api_key"].as_str().unwrap().to_owned();
    let (rss0, live0, threads0) = (rss_kib(), live_kib(), threads());

    let ids: Vec<String> = futures::stream::iter(0..n)
        .map(|i| {
            let (http, base, key) = (http.clone(), base.clone(), key.clone());
            async move {
                let v = json_of(
                    http.post(format!("{base}/api/v1/sessions"))
                        .bearer_auth(&key)
                        .json(&json!({"name": format!("s{i}")})),
                )
                .await;
                v["id"].as_str().unwrap().to_owned()
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;

    // Start and link in waves (a phone scans each QR as it shows), as sessions are
    // onboarded in practice: ten thousand QR codes on screen at once is not a workload.
    let wave: usize = std::env::var("BENCH_WAVE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let started = Instant::now();
    let mut all_started = Duration::ZERO;
    let mut phone = 15_550_000_000u64;
    let mut scanned: HashMap<uuid::Uuid, String> = HashMap::new();
    for chunk in ids.chunks(wave) {
        let t = Instant::now();
        futures::stream::iter(chunk.iter().cloned())
            .map(|id| {
                let (http, base, key) = (http.clone(), base.clone(), key.clone());
                async move { start_session(&http, &base, &key, &id).await }
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        all_started += t.elapsed();
        let wave_ids: Vec<uuid::Uuid> = chunk.iter().map(|i| i.parse().unwrap()).collect();
        loop {
            use wagate::schema::sessions;
            let rows: Vec<(uuid::Uuid, String, Option<String>)> = sessions::table
                .filter(sessions::id.eq_any(&wave_ids))
                .select((sessions::id, sessions::status, sessions::qr_code))
                .load(&mut *poll_conn(&db).await)
                .await
                .unwrap();
            if rows.iter().all(|(_, status, _)| status == "connected") {
                break;
            }
            // Each session is scanned once; only a failed scan (its QR rotated meanwhile) is
            // tried again, on the next QR: a second scan of a linked session would link it
            // to another phone.
            let mut todo = Vec::new();
            let mut restart = Vec::new();
            for (id, status, qr) in rows {
                // Under load a phone may give up on a pairing the client confirmed too late;
                // WhatsApp then refuses the half-linked device and the session is logged
                // out. Start it again, as its user would, for a new QR.
                if status == "logged_out" {
                    scanned.remove(&id);
                    restart.push(id);
                    continue;
                }
                if let (true, Some(qr)) = (status == "qr", qr)
                    && !scanned.contains_key(&id)
                {
                    phone += 1;
                    scanned.insert(id, qr.clone());
                    todo.push((id, qr, phone.to_string()));
                }
            }
            let failed: Vec<(uuid::Uuid, String)> = futures::stream::iter(todo)
                .map(|(id, qr, p)| {
                    let sim = &sim;
                    async move { sim.scan_qr(&qr, &p).await.err().map(|e| (id, e)) }
                })
                .buffer_unordered(CONCURRENCY)
                .filter_map(|e| async move { e })
                .collect()
                .await;
            if let [(_, first), ..] = failed.as_slice() {
                eprintln!(
                    "{} scans failed (the next QR is scanned again): {first}",
                    failed.len()
                );
            }
            for (id, _) in failed {
                scanned.remove(&id);
            }
            if !restart.is_empty() {
                eprintln!(
                    "{} sessions logged out while linking: starting them again",
                    restart.len()
                );
            }
            for id in restart {
                start_session(&http, &base, &key, &id.to_string()).await;
            }
            assert!(started.elapsed() < timeout, "linking took too long");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let connect_all = started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss1, live1, threads1) = (rss_kib(), live_kib(), threads());
    let cpu0 = cpu_secs();
    let idle_window = Duration::from_secs(30);
    tokio::time::sleep(idle_window).await;
    let idle_cpu = (cpu_secs() - cpu0) / idle_window.as_secs_f64() * 100.0;
    let (rss_idle, live_idle) = (rss_kib(), live_kib());

    // `BENCH_DROP_ROUNDS=k`: the network drops every connection k times; each session
    // reconnects with a fresh client. The live heap must not grow with the rounds.
    let drop_rounds: u32 = std::env::var("BENCH_DROP_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut heap_after_drops = Vec::new();
    for _ in 0..drop_rounds {
        sim.drop_all_connections().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        wait_count(&db, "connected", i64::from(n), timeout).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        heap_after_drops.push((live_kib() - live0) / f64::from(n));
    }

    // Restart the gateway: sessions stop cleanly (no logout), then resume unthrottled.
    let stopping = Instant::now();
    handle.stop(true).await;
    let _ = join.await;
    let server_stopped = stopping.elapsed();
    // A process would exit here; in this one the first gateway's session actors may still
    // be closing (past the shutdown bound) and must not race the second gateway for the
    // same node's sessions: wait until every session is recorded stopped.
    let all_stopped = loop {
        if count_status(&db, "connected").await == 0 || stopping.elapsed() > SHUTDOWN_WAIT {
            break stopping.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_stopped, live_stopped) = (rss_kib(), live_kib());
    let mut s = settings(&db, n);
    s.sessions.resume_per_second = 0;
    // `BENCH_LOG_RESUME_SQL=1`: the server logs every statement of the resume (its log
    // file then says what one resume costs in round trips).
    let log_sql = std::env::var("BENCH_LOG_RESUME_SQL").is_ok_and(|v| v == "1");
    if log_sql {
        set_statement_log(&db, "all").await;
    }
    eprintln!("bench: restarting the gateway");
    let restart = Instant::now();
    let cpu_before_resume = cpu_secs();
    let (_base2, handle2, join2) = start_app(s, &sim).await;
    let resume_all = wait_count(&db, "connected", i64::from(n), timeout).await;
    let resume_total = restart.elapsed();
    let resume_cpu = cpu_secs() - cpu_before_resume;
    eprintln!("bench: all resumed");
    if std::env::var("BENCH_EXIT_AFTER_RESUME").is_ok_and(|v| v == "1") {
        // For heap profilers: what is still allocated at exit is what resumed sessions hold.
        tokio::time::sleep(Duration::from_secs(5)).await;
        std::process::exit(0);
    }
    let (rss2, live2) = (rss_kib(), live_kib());
    if log_sql {
        set_statement_log(&db, "none").await;
    }
    handle2.stop(true).await;
    let _ = join2.await;
    let fresh_process = match &sim {
        Network::Remote {
            ws, control, child, ..
        } => Some(resume_in_a_fresh_process(&db, n, ws, control, child.id(), timeout).await),
        Network::InProcess(_) => None,
    };

    let per = |a: f64, b: f64| (a - b) / f64::from(n);
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "sessions": n,
            "start_requests_s": all_started.as_secs_f64(),
            "connect_all_s": connect_all.as_secs_f64(),
            "rss_baseline_mib": rss0 / 1024.0,
            "rss_connected_mib": rss1 / 1024.0,
            "rss_per_session_kib": per(rss1, rss0),
            "live_heap_per_session_kib": per(live1, live0),
            "threads": {"baseline": threads0, "connected": threads1},
            "idle_cpu_percent_of_one_core": idle_cpu,
            "rss_after_idle_mib": rss_idle / 1024.0,
            "rss_after_stop_mib": rss_stopped / 1024.0,
            "shutdown_returned_s": server_stopped.as_secs_f64(),
            "shutdown_all_sessions_stopped_s": all_stopped.as_secs_f64(),
            "live_heap_per_session_kib_after_each_drop": heap_after_drops,
            "live_heap_after_stop_per_session_kib": per(live_stopped, live0),
            "live_heap_after_idle_per_session_kib": per(live_idle, live0),
            "resume_all_after_restart_s": resume_all.as_secs_f64(),
            "restart_to_all_connected_s": resume_total.as_secs_f64(),
            "resume_cpu_ms_per_session": resume_cpu * 1000.0 / f64::from(n),
            "rss_after_resume_mib": rss2 / 1024.0,
            "live_heap_after_resume_per_session_kib": per(live2, live0),
            "simulator_connections_total": sim.connections_total().await,
            "simulator_process_rss_mib": sim.simulator_rss_mib(),
            "fresh_gateway_process": fresh_process,
        }))
        .unwrap()
    );
}

/// With the simulator in its own process, the gateway's own cost can be read off a process
/// of its own: the real `wagate` binary starts on the benchmark's database, resumes every
/// session unthrottled, and its RSS and CPU are read from `/proc`. No linking leftovers, no
/// benchmark client: what a restarted production node holds per connected session.
async fn resume_in_a_fresh_process(
    db: &str,
    n: u32,
    ws: &str,
    control: &str,
    sim_pid: u32,
    timeout: Duration,
) -> Value {
    let waited = Instant::now();
    while count_status(db, "connected").await > 0 && waited.elapsed() < SHUTDOWN_WAIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let data_dir = std::env::temp_dir().join(format!("wagate-bench-{}", uuid::Uuid::new_v4()));
    let simulator = cpu_secs_of(sim_pid);
    let machine = machine_busy_secs();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wagate"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--sandbox", "--port", "0", "--data-dir"])
        .arg(&data_dir)
        .env_remove("APP_REDIS__URL")
        .env("APP_DATABASE__URL", db)
        .env("APP_DATABASE__POOL_SIZE", "32")
        .env("APP_DATABASE__CONNECT_TIMEOUT_SECS", "30")
        .env("APP_AUTH__ADMIN_KEY", ADMIN_KEY)
        .env("APP_STORE__ENCRYPTION_KEY", STORE_KEY)
        .env("APP_RATE_LIMIT__ENABLED", "false")
        .env("APP_SESSIONS__NODE_ID", "bench")
        .env("APP_SESSIONS__RESUME_PER_SECOND", "0")
        .env("APP_SESSIONS__QUOTAS__STANDARD", n.to_string())
        .env("APP_SANDBOX__SIMULATOR_URL", ws)
        .env("APP_SANDBOX__SIMULATOR_MEDIA_URL", control)
        // `BENCH_FRESH_LOG=<filter>`: that process's log on this one's stderr.
        .env(
            "APP_LOG__LEVEL",
            std::env::var("BENCH_FRESH_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let started = Instant::now();
    let rss_booted = loop {
        // Boot (migrations, pools) before the sessions: the first moment a session connects.
        if count_status(db, "connected").await > 0 || started.elapsed() > timeout {
            break rss_kib_of(pid);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    wait_count(db, "connected", i64::from(n), timeout).await;
    let resume_all = started.elapsed();
    let resume_cpu = cpu_secs_of(pid);
    let simulator = cpu_secs_of(sim_pid) - simulator;
    let machine = machine_busy_secs() - machine;
    eprintln!("bench: fresh process resumed {n} sessions");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_connected = rss_kib_of(pid);
    let cpu0 = cpu_secs_of(pid);
    let idle_window = Duration::from_secs(30);
    tokio::time::sleep(idle_window).await;
    let idle_cpu = (cpu_secs_of(pid) - cpu0) / idle_window.as_secs_f64() * 100.0;
    let rss_idle = rss_kib_of(pid);
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0);
    // SIGTERM: the gateway closes its sessions (no logout) and releases their leases.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&data_dir);
    json!({
        "resume_all_s": resume_all.as_secs_f64(),
        "cpu_ms_per_session_boot_and_resume": resume_cpu * 1000.0 / f64::from(n),
        // The rest of the machine over the same window: the simulator's side of every login,
        // and everything else (Postgres, this benchmark's polling).
        "simulator_cpu_ms_per_session": simulator * 1000.0 / f64::from(n),
        "rest_of_machine_cpu_ms_per_session": (machine - resume_cpu - simulator) * 1000.0 / f64::from(n),
        "rss_at_first_connect_mib": rss_booted / 1024.0,
        "rss_all_connected_mib": rss_connected / 1024.0,
        "rss_per_connected_session_kib": rss_connected / f64::from(n),
        "rss_after_idle_mib": rss_idle / 1024.0,
        "idle_cpu_percent_of_one_core": idle_cpu,
        "threads": threads,
    })
}
