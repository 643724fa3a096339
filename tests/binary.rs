#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `wagate` binary itself: zero-config start on a private PostgreSQL, restart with the data
//! kept, graceful SIGTERM, request ids in logs, configuration errors.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[cfg(feature = "sandbox")]
#[path = "support/database.rs"]
mod database;

const BIN: &str = env!("CARGO_BIN_EXE_wagate");
const ADMIN: &str = "binary-test-admin-key-0123";

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wagate-bin-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("tempdir");
    dir
}

/// A wagate process with no database URL, JSON logs to a file.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(data_dir: &Path, run: u32) -> Server {
        Server::start_logging_to(data_dir, data_dir.join(format!("wagate-{run}.log")))
    }

    fn start_logging_to(data_dir: &Path, log: PathBuf) -> Server {
        let child = Command::new(BIN)
            .args(["--port", "0", "--data-dir"])
            .arg(data_dir)
            .env_remove("APP_DATABASE__URL")
            .env_remove("APP_REDIS__URL")
            .env("APP_AUTH__ADMIN_KEY", ADMIN)
            .env("APP_LOG__FORMAT", "json")
            .env("APP_LOG__LEVEL", "info")
            .env("APP_SHUTDOWN__TIMEOUT_SECS", "20")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn wagate");
        Server {
            child,
            port: 0,
            log,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The port the process says it listens on (started with `--port 0`, so no port is
    /// picked by binding and dropping, and none is reused across restarts).
    fn listening_port(&self) -> Option<u16> {
        std::fs::read_to_string(&self.log)
            .ok()?
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["fields"]["message"] == "wagate listening")
            .and_then(|l| l["fields"]["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "wagate exited early ({status}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if self.port == 0 {
                match self.listening_port() {
                    Some(port) => self.port = port,
                    None => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
            if let Ok(res) = reqwest::get(self.url("/health")).await
                && res.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no /health within 60 s: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, sig).expect("signal");
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "wagate did not exit in time");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The tenant made in the first run is still served, by the admin.
    async fn assert_tenant_exists(&self, id: &str, why: &str) {
        let res = reqwest::Client::new()
            .get(self.url(&format!("/api/v1/tenants/{id}")))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("get tenant");
        assert_eq!(res.status(), 200, "{why}");
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops the private cluster under a data dir and removes the dir when dropped, so a failing
/// test leaves no PostgreSQL running behind it.
struct ClusterGuard(PathBuf);

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        // The cluster may live outside the data dir (behind the `postgres` link).
        let real = cluster_dir(&self.0);
        stop_cluster(&self.0);
        if !real.starts_with(&self.0) {
            let _ = std::fs::remove_dir_all(&real);
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where a data dir's private cluster really is (`<data_dir>/postgres` may be a link).
fn cluster_dir(data_dir: &Path) -> PathBuf {
    let pg = data_dir.join("postgres");
    std::fs::canonicalize(&pg).unwrap_or(pg)
}

/// Runs one query on a database of the private cluster of `data_dir`, over its socket.
async fn query_private(data_dir: &Path, db: &str, sql: &str) -> Vec<String> {
    query_url(
        &wagate::db::private_cluster::socket_url(&cluster_dir(data_dir), db),
        sql,
    )
    .await
}

/// Runs a query returning one text column named `v`.
async fn query_url(url: &str, sql: &str) -> Vec<String> {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        v: String,
    }
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    diesel::sql_query(sql)
        .load::<Row>(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .map(|r| r.v)
        .collect()
}

/// The other PostgreSQL of this machine, when one listens on 127.0.0.1:5432 and lets the
/// `postgres` user in without a password (CI's and many laptops' setup): the server a
/// zero-config wagate must never touch.
async fn tcp_postgres() -> Option<String> {
    use diesel_async::{AsyncConnection, AsyncPgConnection};
    let url = "postgres://postgres@127.0.0.1:5432/postgres".to_owned();
    AsyncPgConnection::establish(&url).await.ok().map(|_| url)
}

fn stop_cluster(data_dir: &Path) {
    // Whatever a failed test left running: stop it so no server outlives the test.
    let pg = cluster_dir(data_dir);
    if let Some(bindir) = wagate::db::private_cluster::find_bindir() {
        let mut cmd = Command::new(bindir.join("pg_ctl"));
        cmd.args(["stop", "-m", "immediate", "-D"])
            .arg(&pg)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if nix::unistd::Uid::effective().is_root() {
            use std::os::unix::process::CommandExt;
            if let Ok(Some(u)) = nix::unistd::User::from_name("postgres") {
                cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
            }
        }
        let _ = cmd.status();
    }
}

#[tokio::test]
async fn zero_config_start_keeps_data_across_restarts_and_crashes() {
    let data = tempdir();
    let _cleanup = ClusterGuard(data.clone());
    let client = reqwest::Client::new();

    // What the machine's own PostgreSQL holds before: a zero-config start must add nothing.
    let other = tcp_postgres().await;
    let databases = "SELECT datname AS v FROM pg_database ORDER BY 1";
    let other_before = match &other {
        Some(url) => query_url(url, databases).await,
        None => Vec::new(),
    };

    // First start: initdb, start, migrate.
    let mut server = Server::start(&data, 1);
    server.wait_healthy().await;
    assert!(
        data.join("postgres/PG_VERSION").is_file(),
        "the cluster lives under the data dir"
    );
    let pg_conf =
        std::fs::read_to_string(data.join("postgres/postmaster.opts")).unwrap_or_default();
    assert!(
        pg_conf.contains("listen_addresses="),
        "started with no TCP listener: {pg_conf}"
    );
    let res = client
        .post(server.url("/api/v1/tenants"))
        .bearer_auth(ADMIN)
        .header("x-request-id", "trace-me-123")
        .json(&json!({"name": "persisted", "tier": "enterprise"}))
        .send()
        .await
        .expect("create");
    assert_eq!(res.status(), 201);
    let tenant: Value = res.json().await.expect("json");
    let id = tenant["id"].as_str().expect("id").to_owned();
    let secret_key = tenant["api_key"].as_str().expect("key").to_owned();

    // The tenant is in the private cluster, whose server runs from the data dir; the other
    // server on 127.0.0.1:5432 got no database and holds no such tenant.
    let data_directory = query_private(
        &data,
        "wagate",
        "SELECT setting AS v FROM pg_settings WHERE name = 'data_directory'",
    )
    .await;
    assert_eq!(
        data_directory.first().map(PathBuf::from),
        Some(cluster_dir(&data)),
        "the server wagate uses runs from --data-dir"
    );
    let tenants = format!("SELECT id::text AS v FROM tenants WHERE id = '{id}'");
    assert_eq!(
        query_private(&data, "wagate", &tenants).await,
        vec![id.clone()],
        "the tenant was stored in the private cluster"
    );
    if let Some(url) = &other {
        assert_eq!(
            query_url(url, databases).await,
            other_before,
            "no database was created on the machine's own PostgreSQL"
        );
        if other_before.iter().any(|d| d == "wagate") {
            let theirs = "postgres://postgres@127.0.0.1:5432/wagate";
            let found = query_url(
                theirs,
                &format!(
                    "SELECT id::text AS v FROM tenants WHERE id = '{id}' \
                     UNION ALL SELECT 'no tenants table' WHERE to_regclass('tenants') IS NULL"
                ),
            )
            .await;
            assert!(
                !found.contains(&id),
                "the tenant is not in the other server's wagate database"
            );
        }
    } else {
        eprintln!("no PostgreSQL on 127.0.0.1:5432: only the private cluster was checked");
    }

    // This installation's own secrets, kept private in the data dir: a token signed with
    // the JWT secret config/local.yaml used to carry is refused.
    let secrets = data.join("secrets.json");
    let mode = std::fs::metadata(&secrets)
        .expect("secrets.json")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600,
        "secrets.json is private"
    );
    let secrets_before = std::fs::read(&secrets).expect("read secrets");
    let res = client
        .post(server.url("/api/v1/auth/token"))
        .json(&json!({"api_key": secret_key}))
        .send()
        .await
        .expect("token");
    assert_eq!(res.status(), 200);
    let token = res.json::<Value>().await.expect("json")["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let claims: Value = {
        use base64::Engine as _;
        let payload = token.split('.').nth(1).expect("a JWT payload");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url");
        serde_json::from_slice(&bytes).expect("claims")
    };
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"wagate-local-jwt-secret-change-me-0123456789"),
    )
    .expect("forge");
    let tenant_path = format!("/api/v1/tenants/{id}");
    let as_bearer = |t: &str| {
        client
            .get(server.url(&tenant_path))
            .bearer_auth(t.to_owned())
            .send()
    };
    assert_eq!(as_bearer(&token).await.expect("get").status(), 200);
    assert_eq!(
        as_bearer(&forged).await.expect("get").status(),
        401,
        "the old public JWT secret signs nothing"
    );

    // SIGTERM: graceful exit, the private database stopped with it.
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}: {}", server.logs());
    assert!(
        !data.join("postgres/postmaster.pid").exists(),
        "the private database was stopped"
    );
    let logs = server.logs();
    let lines: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!lines.is_empty(), "JSON log lines: {logs}");
    let traced: Vec<&Value> = lines
        .iter()
        .filter(|l| l.to_string().contains("trace-me-123"))
        .collect();
    assert!(
        traced
            .iter()
            .any(|l| l.to_string().contains("tenant created")),
        "the handler's log line carries the request id: {logs}"
    );
    assert!(!logs.contains(&secret_key), "API keys are never logged");
    assert!(!logs.contains(ADMIN), "the admin key is never logged");

    // Second start reuses the cluster: the tenant is still there, and the secrets too (the
    // token issued before the restart is still good).
    let mut server = Server::start(&data, 2);
    server.wait_healthy().await;
    server
        .assert_tenant_exists(&id, "the tenant survived a restart")
        .await;
    assert_eq!(std::fs::read(&secrets).expect("read"), secrets_before);
    let res = client
        .get(server.url(&tenant_path))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 200, "the same JWT secret after a restart");

    // A crash (SIGKILL) leaves the database running: the next start adopts it.
    server.signal(nix::sys::signal::Signal::SIGKILL);
    server.wait_exit(Duration::from_secs(10));
    assert!(
        data.join("postgres/postmaster.pid").exists(),
        "the database outlived the crash"
    );
    // Then the database crashes too, leaving a stale postmaster.pid behind.
    let pid_line = std::fs::read_to_string(data.join("postgres/postmaster.pid")).expect("pid file");
    let pg_pid: i32 = pid_line
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("pid");
    let mut server = Server::start(&data, 3);
    server.wait_healthy().await;
    server
        .assert_tenant_exists(&id, "adopted the running database")
        .await;
    server.signal(nix::sys::signal::Signal::SIGKILL);
    server.wait_exit(Duration::from_secs(10));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pg_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill postgres");
    for _ in 0..100 {
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pg_pid), None).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its children may linger a moment after the postmaster dies.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        data.join("postgres/postmaster.pid").exists(),
        "a stale pid file is left"
    );
    let mut server = Server::start(&data, 4);
    server.wait_healthy().await;
    server
        .assert_tenant_exists(&id, "recovered after the database crashed")
        .await;
    server.signal(nix::sys::signal::Signal::SIGINT);
    assert!(
        server.wait_exit(Duration::from_secs(30)).success(),
        "SIGINT is graceful too"
    );
}

/// As root, with a data dir below a directory the `postgres` account cannot traverse (root's
/// home is mode 0700, as are most temporary directories): the cluster lives in that account's
/// home, `<data_dir>/postgres` links to it, and a restart finds it again.
#[tokio::test]
async fn as_root_a_data_dir_postgres_cannot_reach_still_gets_its_database() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("not root: the cluster runs as this user, nothing to test");
        return;
    }
    let parent = tempdir();
    std::fs::set_permissions(&parent, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    let data = parent.join("data");
    let _cleanup = ClusterGuard(parent.clone());
    let _cleanup_data = ClusterGuard(data.clone());
    let log = parent.join("wagate-root.log");
    let mut server = Server::start_logging_to(&data, log.clone());
    server.wait_healthy().await;
    let link = data.join("postgres");
    assert!(
        std::fs::symlink_metadata(&link)
            .expect("postgres entry")
            .file_type()
            .is_symlink(),
        "the data dir links to its cluster"
    );
    let real = cluster_dir(&data);
    let postgres = nix::unistd::User::from_name("postgres")
        .expect("passwd")
        .expect("postgres account");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&real).expect("stat"));
    assert_eq!(
        owner,
        postgres.uid.as_raw(),
        "owned by the postgres account"
    );
    assert!(real.join("PG_VERSION").is_file());
    let res = reqwest::Client::new()
        .post(server.url("/api/v1/tenants"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "rooted"}))
        .send()
        .await
        .expect("create");
    assert_eq!(res.status(), 201, "{}", server.logs());
    let id = res.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(30)).success());

    let mut server = Server::start_logging_to(&data, log);
    server.wait_healthy().await;
    server
        .assert_tenant_exists(&id, "the same cluster after a restart")
        .await;
    assert_eq!(cluster_dir(&data), real);
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(30)).success());
}

/// A default build has no simulator: asking for one is a configuration error,
/// not a silent run against real WhatsApp.
#[cfg(not(feature = "sandbox"))]
#[test]
fn a_default_build_refuses_sandbox_mode() {
    let out = Command::new(BIN).arg("--sandbox").output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--features sandbox"), "{stderr}");
}

#[test]
fn invalid_configuration_exits_2_naming_the_key() {
    let cases: [(&[(&str, &str)], &str); 7] = [
        // The public local admin key never serves an address others can reach.
        (&[("APP_APPLICATION__HOST", "0.0.0.0")], "auth.admin_key"),
        (&[("APP_APPLICATION__PORT", "eighty")], "application.port"),
        (&[("APP_ENVIRONMENT", "production")], "auth.admin_key"),
        (
            &[
                ("APP_ENVIRONMENT", "production"),
                ("APP_AUTH__ADMIN_KEY", "an-admin-key-of-some-length"),
                (
                    "APP_AUTH__JWT_SECRET",
                    "a-jwt-secret-that-is-long-enough-0123",
                ),
            ],
            "store.encryption_key",
        ),
        (&[("APP_AUTH__JWT_TTL_SECS", "86400")], "auth.jwt_ttl_secs"),
        (&[("APP_ENVIRONMENT", "staging")], "APP_ENVIRONMENT"),
        (
            &[("APP_SANDBOX__SIMULATOR_MEDIA_URL", "http://10.0.0.7:7401")],
            "sandbox.simulator_media_url",
        ),
    ];
    for (vars, key) in cases {
        let out = Command::new(BIN)
            .env_remove("APP_AUTH__ADMIN_KEY")
            .envs(vars.iter().copied())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{vars:?}: {stderr}");
        assert!(stderr.contains(key), "{vars:?} names {key}: {stderr}");
        assert!(
            !stderr.contains("wagate-local-admin-key"),
            "no secret printed"
        );
    }
    let missing = Command::new(BIN)
        .args(["--config", "/nonexistent/wagate.yaml"])
        .output()
        .expect("run");
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--config"));
}

#[test]
fn without_postgres_binaries_it_says_what_to_install() {
    let data = tempdir();
    let out = Command::new(BIN)
        .args(["--port", "0", "--data-dir"])
        .arg(&data)
        .env_remove("APP_DATABASE__URL")
        .env("WAGATE_PG_BINDIR", "/nonexistent")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("apt-get install postgresql") && stderr.contains("database.url"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_dotenv_file_is_read_at_start_and_real_variables_win() {
    // Run from a folder with no config/: the built-in configuration is used, plus the .env.
    let dir = tempdir();
    std::fs::write(dir.join(".env"), "APP_APPLICATION__PORT=eighty\n").expect("write .env");
    let out = Command::new(BIN)
        .current_dir(&dir)
        .env_remove("APP_APPLICATION__PORT")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "the .env value was read: {stderr}"
    );
    assert!(stderr.contains("application.port"), "{stderr}");
    // A variable set in the real environment wins over the .env file.
    let out = Command::new(BIN)
        .current_dir(&dir)
        .env("APP_APPLICATION__PORT", "8080")
        .env("APP_AUTH__JWT_TTL_SECS", "0")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("auth.jwt_ttl_secs") && !stderr.contains("application.port"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two gateway processes on one database and one simulated WhatsApp network (served by this
/// test over a loopback websocket): one session, one connection; when its owner is killed
/// with SIGKILL, the other process takes it over once the lease has expired.
#[cfg(feature = "sandbox")]
mod fleet {
    use super::*;
    use std::sync::{Arc, Mutex};
    use wagate::whatsapp_network::Simulator;

    use crate::database::fresh_database;

    fn start_node_with(
        dir: &Path,
        node: &str,
        db: &str,
        simulator: &str,
        extra: &[(&str, &str)],
    ) -> Server {
        let log = dir.join(format!("{node}-{}.log", uuid::Uuid::new_v4().simple()));
        let child = Command::new(BIN)
            .envs(extra.iter().copied())
            .args(["--sandbox", "--port", "0", "--data-dir"])
            .arg(dir)
            .env_remove("APP_REDIS__URL")
            .env("APP_DATABASE__URL", db)
            .env("APP_AUTH__ADMIN_KEY", ADMIN)
            .env("APP_RATE_LIMIT__ENABLED", "false")
            .env("APP_SESSIONS__NODE_ID", node)
            .env("APP_SESSIONS__LEASE_TTL_SECS", "3")
            .env("APP_SESSIONS__LEASE_RENEW_INTERVAL_SECS", "1")
            .env("APP_SESSIONS__ORPHAN_SCAN_INTERVAL_SECS", "1")
            .env("APP_SANDBOX__SIMULATOR_URL", simulator)
            .env("APP_LOG__FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Server {
            child,
            port: 0,
            log,
        }
    }

    /// Serves the simulator's media servers (`/mms`, `/v`) and control API over HTTP, as
    /// `wagate-sim --control` does, on its own thread; returns the base URL.
    fn serve_media(sim: Simulator) -> String {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let (server, url) =
                    wagate_sim::control::serve(sim, "127.0.0.1:0".parse().unwrap()).unwrap();
                tx.send(url).unwrap();
                let _ = server.await;
            });
        });
        rx.recv().unwrap()
    }

    fn png(len: usize) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0".to_vec();
        b.extend((0..len.saturating_sub(b.len())).map(|i| (i % 251) as u8));
        b
    }

    async fn json(req: reqwest::RequestBuilder) -> (u16, Value) {
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_gateway_processes_hold_a_session_once_and_the_survivor_takes_over() {
        let sim = Simulator::new();
        let ws = wagate_sim::listen_ws(sim.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let media = serve_media(sim.clone());
        let media_env = [("APP_SANDBOX__SIMULATOR_MEDIA_URL", media.as_str())];
        let db = fresh_database().await;
        let dir = tempdir();
        let mut a = start_node_with(&dir, "node-a", &db, &ws.url(), &media_env);
        a.wait_healthy().await;
        let mut b = start_node_with(&dir, "node-b", &db, &ws.url(), &media_env);
        b.wait_healthy().await;
        let http = reqwest::Client::new();

        let (status, tenant) = json(
            http.post(a.url("/api/v1/tenants"))
                .bearer_auth(ADMIN)
                .json(&json!({"name": "Acme"})),
        )
        .await;
        assert_eq!(status, 201, "{tenant}");
        let key = tenant["api_key"].as_str().unwrap().to_owned();
        let (_, session) = json(
            http.post(a.url("/api/v1/sessions"))
                .bearer_auth(&key)
                .json(&json!({"name": "shared"})),
        )
        .await;
        let id = session["id"].as_str().unwrap().to_owned();
        let path = format!("/api/v1/sessions/{id}");
        let wait = |server: &Server, want: &'static str| {
            let url = server.url(&path);
            let (http, key) = (http.clone(), key.clone());
            async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let (_, s) = json(http.get(&url).bearer_auth(&key)).await;
                    if s["status"] == want {
                        return s;
                    }
                    assert!(Instant::now() < deadline, "no {want}: {s}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };

        // Node A links the session: the test's simulated phone scans the QR node A serves.
        let (status, _) = json(http.post(a.url(&format!("{path}/start"))).bearer_auth(&key)).await;
        assert_eq!(status, 202);
        wait(&a, "qr").await;
        let (_, qr) = json(http.get(a.url(&format!("{path}/qr"))).bearer_auth(&key)).await;
        sim.scan_qr(qr["qr"].as_str().unwrap(), "+15550009009")
            .await
            .unwrap();
        wait(&a, "connected").await;

        // Node B is told to start it too: it stands by; the network sees one connection.
        let (status, _) = json(http.post(b.url(&format!("{path}/start"))).bearer_auth(&key)).await;
        assert_eq!(status, 202);
        let connections = sim.counters().connections_total;
        for _ in 0..30 {
            assert_eq!(sim.connections_of("15550009009"), 1);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            sim.counters().connections_total,
            connections,
            "node B never dialled"
        );

        // Media through a simulator in another process: node A (the owner) uploads a photo
        // the contact downloads and decrypts; a photo from the contact is downloaded through
        // node B, which does not hold the session.
        const CONTACT: &str = "+4915112345678";
        let photo = png(20_000);
        let part = reqwest::multipart::Part::bytes(photo.clone())
            .file_name("shop.png")
            .mime_str("image/png")
            .unwrap();
        let (status, uploaded) = json(
            http.post(a.url(&format!("{path}/media")))
                .bearer_auth(&key)
                .multipart(reqwest::multipart::Form::new().part("file", part)),
        )
        .await;
        assert_eq!(status, 201, "{uploaded}");
        let (status, sent) = json(
            http.post(a.url(&format!("{path}/messages")))
                .bearer_auth(&key)
                .json(&json!({"to": CONTACT, "type": "image", "media_id": uploaded["id"]})),
        )
        .await;
        assert_eq!(status, 202, "{sent}");
        let wa_id = sent["wa_id"].as_str().unwrap().to_owned();
        let seen = sim
            .wait_for_contact_message(CONTACT, Duration::from_secs(30), |m| m.id == wa_id)
            .await
            .unwrap();
        let seen = serde_json::to_value(&seen).unwrap();
        assert_eq!(
            seen["media"]["downloaded"]["sha256"],
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&photo)),
            "{seen}"
        );

        let theirs = png(30_000);
        let wa_id = sim
            .inject_media(
                CONTACT,
                "+15550009009",
                wagate_sim::MediaFile {
                    kind: "image",
                    bytes: &theirs,
                    mimetype: "image/png",
                    caption: None,
                    file_name: None,
                },
            )
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let download = loop {
            let (_, list) = json(
                http.get(b.url(&format!("{path}/messages?limit=10")))
                    .bearer_auth(&key),
            )
            .await;
            if let Some(m) = list["items"]
                .as_array()
                .and_then(|items| items.iter().find(|m| m["wa_id"] == wa_id.as_str()))
            {
                break m["media"]["download_url"].as_str().unwrap().to_owned();
            }
            assert!(Instant::now() < deadline, "never stored: {list}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let res = http
            .get(b.url(&download))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            200,
            "a node that does not hold the session serves it"
        );
        assert_eq!(res.bytes().await.unwrap().to_vec(), theirs);

        // SIGKILL node A: no shutdown, the lease stays until it expires; then node B owns it.
        a.signal(nix::sys::signal::Signal::SIGKILL);
        let killed = Instant::now();
        a.wait_exit(Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, h) =
                json(http.get(b.url(&format!("{path}/health"))).bearer_auth(&key)).await;
            if status == 200 && h["node"] == "node-b" {
                break;
            }
            assert!(Instant::now() < deadline, "no take-over: {h}\n{}", b.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = killed.elapsed();
        assert!(
            took >= Duration::from_secs(1),
            "taken over only after the lease expired ({took:?})"
        );
        let s = wait(&b, "connected").await;
        assert_eq!(s["phone"], "+15550009009");
        assert_eq!(sim.connections_of("15550009009"), 1);
        assert!(
            sim.linked_devices("15550009009") == vec![1],
            "the same device, no new pairing"
        );
        drop(b);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A node started with `env`, a tenant, and a session of it linked to `+15550007007`:
    /// the node, the tenant's key and the session's path.
    async fn linked_node(
        dir: &Path,
        db: &str,
        ws: &str,
        env: &[(&str, &str)],
        sim: &Simulator,
    ) -> (Server, String, String) {
        let mut a = start_node_with(dir, "node-a", db, ws, env);
        a.wait_healthy().await;
        let http = reqwest::Client::new();
        let (_, tenant) = json(
            http.post(a.url("/api/v1/tenants"))
                .bearer_auth(ADMIN)
                .json(&json!({"name": "Acme"})),
        )
        .await;
        let key = tenant["api_key"].as_str().unwrap().to_owned();
        let (_, session) = json(
            http.post(a.url("/api/v1/sessions"))
                .bearer_auth(&key)
                .json(&json!({"name": "burst"})),
        )
        .await;
        let id = session["id"].as_str().unwrap().to_owned();
        let path = format!("/api/v1/sessions/{id}");
        json(http.post(a.url(&format!("{path}/start"))).bearer_auth(&key)).await;
        let wait_status = |port: u16, want: &'static str| {
            let url = format!("http://127.0.0.1:{port}{path}");
            let (http, key) = (http.clone(), key.clone());
            async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if let Ok(res) = http.get(&url).bearer_auth(&key).send().await
                        && let Ok(s) = res.json::<Value>().await
                        && s["status"] == want
                    {
                        return;
                    }
                    assert!(Instant::now() < deadline, "no {want}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        wait_status(a.port, "qr").await;
        let (_, qr) = json(http.get(a.url(&format!("{path}/qr"))).bearer_auth(&key)).await;
        sim.scan_qr(qr["qr"].as_str().unwrap(), "+15550007007")
            .await
            .unwrap();
        wait_status(a.port, "connected").await;

        (a, key, path)
    }

    /// Sends from 64 clients at once share the node's group writes (its metrics say so), and
    /// a `kill -9` in the middle loses none that were answered: every 202 is a stored row,
    /// read straight from the database before anything could re-send it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_accepts_share_writes_and_a_kill_loses_none_that_were_answered() {
        const TOTAL: usize = 3000;
        let sim = Simulator::new();
        let ws = wagate_sim::listen_ws(sim.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let db = fresh_database().await;
        let dir = tempdir();
        let unpaced = [
            ("APP_MESSAGES__RATE_PER_MINUTE__STANDARD", "0"),
            ("APP_MESSAGES__MAX_QUEUED_PER_TENANT", "100000"),
        ];
        let (mut a, key, path) = linked_node(&dir, &db, &ws.url(), &unpaced, &sim).await;
        let url = a.url(&format!("{path}/messages"));
        let answered = Arc::new(Mutex::new(Vec::<String>::new()));
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let http = reqwest::Client::new();
        let senders: Vec<_> = (0..64)
            .map(|_| {
                let (answered, next, http) = (answered.clone(), next.clone(), http.clone());
                let (url, key) = (url.clone(), key.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= TOTAL {
                            break;
                        }
                        let Ok(res) = http
                            .post(&url)
                            .bearer_auth(&key)
                            .json(&json!({"to": "+4915112345678", "text": format!("group {i}")}))
                            .timeout(Duration::from_secs(10))
                            .send()
                            .await
                        else {
                            continue;
                        };
                        if res.status() == 202
                            && let Ok(m) = res.json::<Value>().await
                            && let Some(id) = m["id"].as_str()
                        {
                            answered.lock().unwrap().push(id.to_owned());
                        }
                    }
                })
            })
            .collect();
        while answered.lock().unwrap().len() < TOTAL / 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let metrics = reqwest::get(a.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let counter = |name: &str| -> f64 {
            metrics
                .lines()
                .find_map(|l| {
                    l.strip_prefix(name)?
                        .strip_prefix("{kind=\"accepted_messages\"} ")?
                        .parse()
                        .ok()
                })
                .unwrap_or(0.0)
        };
        let (writes, jobs) = (
            counter("wagate_group_writes_total"),
            counter("wagate_group_jobs_total"),
        );
        a.signal(nix::sys::signal::Signal::SIGKILL);
        a.wait_exit(Duration::from_secs(10));
        for s in senders {
            s.await.unwrap();
        }
        assert!(
            writes >= 1.0 && jobs > writes,
            "accepts shared no write: {jobs} in {writes} writes"
        );
        let answered = answered.lock().unwrap().clone();
        assert!(answered.len() < TOTAL, "the kill landed mid-burst");
        let stored: std::collections::HashSet<String> = query_url(
            &db,
            "SELECT id::text AS v FROM messages WHERE direction = 'out'",
        )
        .await
        .into_iter()
        .collect();
        let lost: Vec<&String> = answered.iter().filter(|id| !stored.contains(*id)).collect();
        assert!(
            lost.is_empty(),
            "{} of {} answered messages are not stored: {:?}",
            lost.len(),
            answered.len(),
            &lost[..lost.len().min(5)]
        );
        eprintln!(
            "{} answered before the kill, all stored; {jobs} accepts in {writes} group writes",
            answered.len()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `kill -9` in the middle of a burst of sends: after a restart, and after the client
    /// re-sends what it got no answer for (same `Idempotency-Key`), every message reaches
    /// the contact exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gateway_killed_during_a_burst_delivers_every_message_exactly_once() {
        const TOTAL: usize = 1000;
        const CONTACT: &str = "4915112345678";
        let sim = Simulator::new();
        let ws = wagate_sim::listen_ws(sim.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let db = fresh_database().await;
        let dir = tempdir();
        let unpaced = [
            ("APP_MESSAGES__RATE_PER_MINUTE__STANDARD", "0"),
            ("APP_MESSAGES__MAX_QUEUED_PER_TENANT", "100000"),
        ];
        let (mut a, key, path) = linked_node(&dir, &db, &ws.url(), &unpaced, &sim).await;
        let http = reqwest::Client::new();

        // The burst, eight sends at a time; the gateway dies a third of the way in.
        let (send_path, send_http, send_key) = (path.clone(), http.clone(), key.clone());
        let send = move |port: u16, i: usize| {
            let url = format!("http://127.0.0.1:{port}{send_path}/messages");
            let (http, key) = (send_http.clone(), send_key.clone());
            async move {
                let res = http
                    .post(url)
                    .bearer_auth(key)
                    .header("Idempotency-Key", format!("burst-{i}"))
                    .json(&json!({"to": format!("+{CONTACT}"), "text": format!("message {i}")}))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .ok()?;
                if res.status() != 202 {
                    return None;
                }
                let m: Value = res.json().await.ok()?;
                Some(m["wa_id"].as_str()?.to_owned())
            }
        };
        let accepted = Arc::new(Mutex::new(vec![None::<String>; TOTAL]));
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let senders: Vec<_> = (0..8)
            .map(|_| {
                let (accepted, next, send) = (accepted.clone(), next.clone(), send.clone());
                let port = a.port;
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= TOTAL {
                            break;
                        }
                        let got = send(port, i).await;
                        accepted.lock().unwrap()[i] = got;
                    }
                })
            })
            .collect();
        while accepted.lock().unwrap().iter().flatten().count() < TOTAL / 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        a.signal(nix::sys::signal::Signal::SIGKILL);
        a.wait_exit(Duration::from_secs(10));
        for s in senders {
            s.await.unwrap();
        }
        let before_restart = accepted.lock().unwrap().iter().flatten().count();
        assert!(before_restart < TOTAL, "the kill landed mid-burst");

        // Restarted (same node name, so it resumes its own session at once), the client
        // re-sends whatever got no 202, with the same keys.
        let mut a2 = start_node_with(&dir, "node-a", &db, &ws.url(), &unpaced);
        a2.wait_healthy().await;
        let missing: Vec<usize> = (0..TOTAL)
            .filter(|i| accepted.lock().unwrap()[*i].is_none())
            .collect();
        for i in missing {
            let (status, m) = json(
                http.post(a2.url(&format!("{path}/messages")))
                    .bearer_auth(&key)
                    .header("Idempotency-Key", format!("burst-{i}"))
                    .json(&json!({"to": format!("+{CONTACT}"), "text": format!("message {i}")})),
            )
            .await;
            assert_eq!(status, 202, "message {i} after the restart: {m}");
            accepted.lock().unwrap()[i] = m["wa_id"].as_str().map(str::to_owned);
        }
        let wa_ids: Vec<String> = accepted.lock().unwrap().iter().flatten().cloned().collect();
        assert_eq!(wa_ids.len(), TOTAL);

        // Every accepted message reaches the contact, and only once.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let inbox = sim.contact_inbox(CONTACT);
            let from_us: Vec<_> = inbox.iter().filter(|m| m.from == "15550007007").collect();
            let mut counts: std::collections::HashMap<&str, usize> = Default::default();
            for m in &from_us {
                *counts.entry(m.id.as_str()).or_default() += 1;
            }
            assert!(counts.values().all(|n| *n == 1), "a message arrived twice");
            if wa_ids.iter().all(|w| counts.contains_key(w.as_str())) {
                assert_eq!(from_us.len(), TOTAL, "nothing but the accepted messages");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {TOTAL} arrived\n{}",
                counts.len(),
                a2.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!(
            "accepted before the kill: {before_restart}; duplicates the network dropped: {}",
            sim.counters().duplicates_dropped
        );
        drop(a2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `kill -9` after a contact's message was stored and before the agent answered it: the
    /// chat waiting for an answer was stored with the message, so the restarted gateway
    /// answers it, once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gateway_killed_before_its_agent_answered_answers_once_after_restart() {
        use wiremock::matchers::method;
        use wiremock::{Mock, MockServer, ResponseTemplate};
        const CONTACT: &str = "4915112345679";
        let sim = Simulator::new();
        let ws = wagate_sim::listen_ws(sim.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let gemini = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "candidates": [{"content": {"role": "model", "parts": [{"text": "Hello, how can I help?"}]},
                                "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 6, "totalTokenCount": 16}
            })))
            .mount(&gemini)
            .await;
        let db = fresh_database().await;
        let dir = tempdir();
        let uri = gemini.uri();
        let env = [
            ("APP_AI__GEMINI__BASE_URL", uri.as_str()),
            ("APP_AI__GEMINI__API_KEY", "test-gemini-key-0001"),
            ("APP_AI__POLL_INTERVAL_MS", "50"),
        ];
        let (mut a, key, path) = linked_node(&dir, &db, &ws.url(), &env, &sim).await;
        let http = reqwest::Client::new();
        let (status, agent) = json(http.post(a.url("/api/v1/agents")).bearer_auth(&key).json(
            &json!({
                "name": "Desk", "provider": "gemini", "model": "gemini-2.0-flash",
                "system_prompt": "Be brief.", "debounce_ms": 3000, "typing": false
            }),
        ))
        .await;
        assert_eq!(status, 201, "{agent}");
        let (status, _) = json(
            http.put(a.url(&format!("{path}/agent")))
                .bearer_auth(&key)
                .json(&json!({"agent_id": agent["id"]})),
        )
        .await;
        assert_eq!(status, 200);

        sim.inject_text(CONTACT, "+15550007007", "hello?")
            .await
            .unwrap();
        // Stored (and acked to WhatsApp) with the chat's pending answer; then the crash,
        // inside the agent's quiet time.
        let deadline = Instant::now() + Duration::from_secs(20);
        while query_url(&db, "SELECT count(*)::text AS v FROM ai_pending").await != ["1"] {
            assert!(Instant::now() < deadline, "the message was never stored");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        a.signal(nix::sys::signal::Signal::SIGKILL);
        a.wait_exit(Duration::from_secs(10));
        assert!(
            gemini.received_requests().await.unwrap().is_empty(),
            "killed before answering"
        );

        let mut a2 = start_node_with(&dir, "node-a", &db, &ws.url(), &env);
        a2.wait_healthy().await;
        let from_us = || {
            sim.contact_inbox(CONTACT)
                .into_iter()
                .filter(|m| m.from == "15550007007")
                .filter_map(|m| m.text)
                .collect::<Vec<_>>()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while from_us().is_empty() {
            assert!(Instant::now() < deadline, "never answered\n{}", a2.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            from_us(),
            vec!["Hello, how can I help?"],
            "answered exactly once"
        );
        assert_eq!(gemini.received_requests().await.unwrap().len(), 1);
        assert_eq!(
            query_url(&db, "SELECT count(*)::text AS v FROM ai_pending").await,
            ["0"]
        );
        drop(a2);
        let _ = std::fs::remove_dir_all(&dir);
    }
    /// A flow waits between two texts; the gateway is killed (`kill -9`) during the wait.
    /// The execution's state and its wait live in Postgres, so the restarted gateway goes on
    /// where the last commit left off and every text arrives exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flow_waiting_when_the_gateway_is_killed_goes_on_once_after_restart() {
        const CONTACT: &str = "4915112345680";
        let sim = Simulator::new();
        let ws = wagate_sim::listen_ws(sim.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let db = fresh_database().await;
        let dir = tempdir();
        let env = [("APP_AUTOMATION__POLL_INTERVAL_MS", "50")];
        let (mut a, key, path) = linked_node(&dir, &db, &ws.url(), &env, &sim).await;
        let http = reqwest::Client::new();
        let (status, flow) = json(http.post(a.url("/api/v1/flows")).bearer_auth(&key).json(
            &json!({"name": "drip", "steps": [
                {"id": "first", "type": "send_text", "text": "first"},
                {"id": "pause", "type": "wait", "seconds": 4},
                {"id": "second", "type": "send_text", "text": "second"}
            ]}),
        ))
        .await;
        assert_eq!(status, 201, "{flow}");
        let session = path.trim_start_matches("/api/v1/sessions/").to_owned();
        let (status, trigger) = json(http.post(a.url("/api/v1/triggers")).bearer_auth(&key).json(
            &json!({"name": "drip", "session_id": session, "event": "message.received",
                    "conditions": [{"field": "text", "op": "equals", "value": "start"}],
                    "flow_id": flow["id"]}),
        ))
        .await;
        assert_eq!(status, 201, "{trigger}");

        sim.inject_text(CONTACT, "+15550007007", "start")
            .await
            .unwrap();
        let from_us = || {
            sim.contact_inbox(CONTACT)
                .into_iter()
                .filter(|m| m.from == "15550007007")
                .filter_map(|m| m.text)
                .collect::<Vec<_>>()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while query_url(&db, "SELECT status AS v FROM flow_executions").await != ["waiting"] {
            assert!(
                Instant::now() < deadline,
                "the flow never waited\n{}",
                a.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        a.signal(nix::sys::signal::Signal::SIGKILL);
        a.wait_exit(Duration::from_secs(10));

        let mut a2 = start_node_with(&dir, "node-a", &db, &ws.url(), &env);
        a2.wait_healthy().await;
        let deadline = Instant::now() + Duration::from_secs(40);
        while from_us().len() < 2 {
            assert!(
                Instant::now() < deadline,
                "the flow never went on: {:?}\n{}",
                from_us(),
                a2.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(from_us(), vec!["first", "second"], "each text exactly once");
        assert_eq!(
            query_url(&db, "SELECT status AS v FROM flow_executions").await,
            ["completed"]
        );
        assert_eq!(
            query_url(
                &db,
                "SELECT count(*)::text AS v FROM messages WHERE direction = 'out'"
            )
            .await,
            ["2"]
        );
        drop(a2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// `wagate --sandbox` keeps its simulated network in the data directory: after a graceful
/// restart and after a `kill -9`, the linked session resumes with no new QR, the contact's
/// Signal sessions still work both ways, and a message accepted before the crash reaches
/// its contact exactly once.
#[cfg(feature = "sandbox")]
mod sandbox_restarts {
    use super::*;

    const CONTACT: &str = "+4915100000077";

    fn start_sandbox(data: &Path, run: u32) -> Server {
        let log = data.join(format!("sandbox-{run}.log"));
        let child = Command::new(BIN)
            .args(["--sandbox", "--port", "0", "--data-dir"])
            .arg(data)
            .env_remove("APP_DATABASE__URL")
            .env_remove("APP_REDIS__URL")
            .env_remove("APP_SANDBOX__SIMULATOR_URL")
            .env("APP_AUTH__ADMIN_KEY", ADMIN)
            .env("APP_RATE_LIMIT__ENABLED", "false")
            .env("APP_LOG__FORMAT", "json")
            // The configured default (info), as a newcomer runs it.
            .env_remove("RUST_LOG")
            .env_remove("APP_LOG__LEVEL")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn wagate --sandbox");
        Server {
            child,
            port: 0,
            log,
        }
    }

    struct Api<'a> {
        http: reqwest::Client,
        server: &'a Server,
        key: String,
    }

    impl Api<'_> {
        async fn call(
            &self,
            method: reqwest::Method,
            path: &str,
            body: Option<Value>,
        ) -> (u16, Value) {
            let mut req = self
                .http
                .request(method, self.server.url(path))
                .bearer_auth(&self.key);
            if let Some(body) = body {
                req = req.json(&body);
            }
            let res = req.send().await.expect("request");
            let status = res.status().as_u16();
            (status, res.json().await.unwrap_or(Value::Null))
        }

        async fn wait(&self, what: &str, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (_, body) = self.call(reqwest::Method::GET, path, None).await;
                if ok(&body) {
                    return body;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: {body}\n{}",
                    self.server.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        /// The texts the contact received from the session, in order.
        async fn contact_texts(&self) -> Vec<String> {
            let (_, body) = self
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/sandbox/contacts/{CONTACT}/messages"),
                    None,
                )
                .await;
            body["items"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|m| m["text"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        }

        async fn wait_contact_has(&self, texts: &[&str]) {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let got = self.contact_texts().await;
                if texts.iter().all(|t| got.iter().any(|g| g == t)) {
                    for t in texts {
                        assert_eq!(
                            got.iter().filter(|g| g == t).count(),
                            1,
                            "{t} arrived once: {got:?}"
                        );
                    }
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "the contact has {got:?}, not all of {texts:?}\n{}",
                    self.server.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        async fn send(&self, session: &str, text: &str) {
            let (status, body) = self
                .call(
                    reqwest::Method::POST,
                    &format!("/api/v1/sessions/{session}/messages"),
                    Some(json!({"to": CONTACT, "text": text})),
                )
                .await;
            assert_eq!(status, 202, "{body}");
        }

        async fn inbound(&self, session: &str, text: &str) {
            let (status, body) = self
                .call(
                    reqwest::Method::POST,
                    "/api/v1/sandbox/inbound",
                    Some(json!({"session_id": session, "from": CONTACT, "text": text})),
                )
                .await;
            assert_eq!(status, 202, "{body}");
            self.wait(
                "the contact's message is stored",
                &format!("/api/v1/sessions/{session}/messages?limit=100"),
                |b| {
                    b["items"]
                        .as_array()
                        .is_some_and(|items| items.iter().any(|m| m["text"] == text))
                },
            )
            .await;
        }

        async fn qr_events(&self, session: &str) -> usize {
            let (_, body) = self
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/sessions/{session}/events?limit=1000"),
                    None,
                )
                .await;
            body["items"]
                .as_array()
                .map(|e| e.iter().filter(|e| e["type"] == "session.qr").count())
                .unwrap_or(0)
        }
    }

    /// At the default level, the log of a pairing (by code and by QR), a message and a chat
    /// read holds neither the pairing code nor any phone number, and names routes by their
    /// pattern.
    #[tokio::test]
    async fn logs_hold_no_pairing_code_and_no_phone_number() {
        const CODE_PHONE: &str = "+15550004242";
        const QR_PHONE: &str = "+15550004343";
        let data = tempdir();
        let _cleanup = ClusterGuard(data.clone());
        let http = reqwest::Client::new();
        let mut server = start_sandbox(&data, 1);
        server.wait_healthy().await;
        let tenant: Value = http
            .post(server.url("/api/v1/tenants"))
            .bearer_auth(ADMIN)
            .json(&json!({"name": "logs", "tier": "enterprise"}))
            .send()
            .await
            .expect("tenant")
            .json()
            .await
            .expect("json");
        let api = Api {
            http: http.clone(),
            server: &server,
            key: tenant["api_key"].as_str().expect("key").to_owned(),
        };
        let mut sessions = Vec::new();
        for name in ["by code", "by qr"] {
            let (_, s) = api
                .call(
                    reqwest::Method::POST,
                    "/api/v1/sessions",
                    Some(json!({"name": name})),
                )
                .await;
            let id = s["id"].as_str().expect("id").to_owned();
            api.call(
                reqwest::Method::POST,
                &format!("/api/v1/sessions/{id}/start"),
                None,
            )
            .await;
            api.wait("a QR", &format!("/api/v1/sessions/{id}"), |s| {
                s["status"] == "qr"
            })
            .await;
            sessions.push(id);
        }
        let (status, body) = api
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/sessions/{}/pair-code", sessions[0]),
                Some(json!({"phone": CODE_PHONE})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let code = body["code"].as_str().expect("code").to_owned();
        api.wait(
            "pairing",
            &format!("/api/v1/sessions/{}", sessions[0]),
            |s| s["status"] == "pairing",
        )
        .await;
        let (status, body) = api
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/sandbox/sessions/{}/scan", sessions[1]),
                Some(json!({"phone": QR_PHONE})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let linked = format!("/api/v1/sessions/{}", sessions[1]);
        api.wait("connected", &linked, |s| s["status"] == "connected")
            .await;
        api.send(&sessions[1], "hello").await;
        api.wait_contact_has(&["hello"]).await;
        let (status, _) = api
            .call(
                reqwest::Method::GET,
                &format!("{linked}/chats/{CONTACT}"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        server.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(server.wait_exit(Duration::from_secs(30)).success());

        let logs = server.logs();
        // The log is there and carries the requests' routes.
        let routed = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|l| l["span"]["route"] == "/api/v1/sessions");
        assert!(routed, "no line names the route /api/v1/sessions: {logs}");
        let digits = |p: &str| p.trim_start_matches('+').to_owned();
        for secret in [
            code.clone(),
            code.replace('-', ""),
            digits(CODE_PHONE),
            digits(QR_PHONE),
            digits(CONTACT),
        ] {
            let line = logs.lines().find(|l| l.contains(&secret));
            assert!(line.is_none(), "{secret} is in the log: {line:?}");
        }
        let _ = std::fs::remove_dir_all(&data);
    }

    #[tokio::test]
    async fn a_restarted_sandbox_keeps_its_network_and_delivers_what_was_queued() {
        let data = tempdir();
        let _cleanup = ClusterGuard(data.clone());
        let http = reqwest::Client::new();

        let mut server = start_sandbox(&data, 1);
        server.wait_healthy().await;
        let res = http
            .post(server.url("/api/v1/tenants"))
            .bearer_auth(ADMIN)
            .json(&json!({"name": "restarts"}))
            .send()
            .await
            .expect("tenant");
        let tenant: Value = res.json().await.expect("json");
        let key = tenant["api_key"].as_str().expect("key").to_owned();
        let tenant_id = tenant["id"].as_str().expect("id").to_owned();
        let api = Api {
            http: http.clone(),
            server: &server,
            key: key.clone(),
        };
        let (_, session) = api
            .call(
                reqwest::Method::POST,
                "/api/v1/sessions",
                Some(json!({"name": "desk"})),
            )
            .await;
        let id = session["id"].as_str().expect("id").to_owned();
        let path = format!("/api/v1/sessions/{id}");
        api.call(reqwest::Method::POST, &format!("{path}/start"), None)
            .await;
        api.wait("a QR", &path, |s| s["status"] == "qr").await;
        let (status, body) = api
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/sandbox/sessions/{id}/scan"),
                Some(json!({"phone": "+15550004004"})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        api.wait("connected", &path, |s| s["status"] == "connected")
            .await;
        api.send(&id, "before the restart").await;
        api.wait_contact_has(&["before the restart"]).await;
        api.inbound(&id, "hello before").await;
        let qr_events = api.qr_events(&id).await;
        assert_eq!(qr_events, 1);

        // A graceful restart: the session resumes on the same device, no QR.
        server.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(
            server.wait_exit(Duration::from_secs(30)).success(),
            "{}",
            server.logs()
        );
        assert!(data.join("sandbox-network/network.json").is_file());
        let mut server = start_sandbox(&data, 2);
        server.wait_healthy().await;
        let api = Api {
            http: http.clone(),
            server: &server,
            key: key.clone(),
        };
        let s = api
            .wait("resumed after SIGTERM", &path, |s| {
                s["status"] == "connected"
            })
            .await;
        assert_eq!(s["phone"], "+15550004004", "{s}");
        assert_eq!(api.qr_events(&id).await, qr_events, "no new QR");
        // Both directions still decrypt: the network kept the phones' Signal sessions.
        api.send(&id, "after the restart").await;
        api.wait_contact_has(&["before the restart", "after the restart"])
            .await;
        api.inbound(&id, "hello after").await;

        // Slow the session down, queue two messages, and crash: the one still queued goes
        // out after the restart, and nothing arrives twice.
        // (The pace is the admin's to set.)
        let res = http
            .patch(server.url(&format!("/api/v1/tenants/{tenant_id}")))
            .bearer_auth(ADMIN)
            .json(&json!({"send_rate_per_minute": 6}))
            .send()
            .await
            .expect("pace");
        assert_eq!(res.status(), 200);
        api.send(&id, "queued one").await;
        api.send(&id, "queued two").await;
        server.signal(nix::sys::signal::Signal::SIGKILL);
        server.wait_exit(Duration::from_secs(10));
        let mut server = start_sandbox(&data, 3);
        server.wait_healthy().await;
        let api = Api {
            http,
            server: &server,
            key,
        };
        api.wait("resumed after kill -9", &path, |s| {
            s["status"] == "connected"
        })
        .await;
        assert_eq!(
            api.qr_events(&id).await,
            qr_events,
            "no new QR after a crash"
        );
        api.wait_contact_has(&[
            "before the restart",
            "after the restart",
            "queued one",
            "queued two",
        ])
        .await;
        api.inbound(&id, "hello after the crash").await;
        server.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(server.wait_exit(Duration::from_secs(30)).success());
    }
}
