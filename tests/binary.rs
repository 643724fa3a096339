#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `wagate` binary itself: zero-config start on a private PostgreSQL, restart with the data
//! kept, graceful SIGTERM, request ids in logs, configuration errors.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_wagate");
const ADMIN: &str = "binary-test-admin-key-0123";

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wagate-bin-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("tempdir");
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A wagate process with no database URL, JSON logs to a file.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(data_dir: &Path, port: u16, run: u32) -> Server {
        let log = data_dir.join(format!("wagate-{run}.log"));
        let child = Command::new(BIN)
            .args(["--port", &port.to_string(), "--data-dir"])
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
        Server { child, port, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
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
        stop_cluster(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stop_cluster(data_dir: &Path) {
    // Whatever a failed test left running: stop it so no server outlives the test.
    let pg = data_dir.join("postgres");
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
    let port = free_port();
    let client = reqwest::Client::new();

    // First start: initdb, start, migrate.
    let mut server = Server::start(&data, port, 1);
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

    // Second start reuses the cluster: the tenant is still there.
    let mut server = Server::start(&data, port, 2);
    server.wait_healthy().await;
    server
        .assert_tenant_exists(&id, "the tenant survived a restart")
        .await;

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
    let mut server = Server::start(&data, port, 3);
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
    let mut server = Server::start(&data, port, 4);
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
    let cases: [(&[(&str, &str)], &str); 5] = [
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
