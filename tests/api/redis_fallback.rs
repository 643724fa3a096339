use std::process::{Child, Command, Stdio};
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use wagate::configuration::LimitSettings;

use crate::helpers::{TestApp, assert_error, spawn_app_with};

/// A throwaway redis-server on a free port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        let mut this = RedisServer { port, child: None };
        this.restart();
        this
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (the README test command installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not start");
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let client = bb8_redis::redis::Client::open(self.url()).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        bb8_redis::redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut conn)
            .await
            .expect("KEYS")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl TestApp {
    pub(crate) async fn ready(&self) -> (u16, Value) {
        let res = self.get("/ready").send().await.expect("req");
        let status = res.status().as_u16();
        (status, res.json().await.expect("json"))
    }
}

#[actix_web::test]
async fn requests_keep_working_when_redis_dies_and_redis_is_used_again_when_back() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let app = spawn_app_with(move |s| {
        s.redis.url = Some(SecretString::from(url));
        s.redis.retry_interval_secs = 1;
        s.rate_limit.standard = LimitSettings {
            limit: 5,
            window_secs: 60,
        };
    })
    .await;
    let (tenant, key) = app.create_tenant("redis", "standard").await;
    let path = format!("/api/v1/tenants/{tenant}");
    assert_eq!(app.get_as(&path, &key).await.status(), 200);
    let counters = redis.keys("wagate:rl:*").await;
    assert!(
        counters.iter().any(|k| k.contains(&tenant.to_string())),
        "counted in Redis: {counters:?}"
    );
    let (status, body) = app.ready().await;
    assert_eq!(
        (status, body["checks"]["redis"].as_str()),
        (200, Some("ok"))
    );

    redis.kill();
    // No 500s: the in-memory limiter takes over (a fresh window, so 5 more are allowed).
    for i in 0..5 {
        let res = app.get_as(&path, &key).await;
        assert_eq!(res.status(), 200, "request {i} with Redis down");
    }
    let res = app.get_as(&path, &key).await;
    assert_error(res, 429, "rate_limited").await;
    let (status, body) = app.ready().await;
    assert_eq!(status, 200, "the fallback keeps the node ready: {body}");
    assert!(
        body["checks"]["redis"]
            .as_str()
            .is_some_and(|s| s.starts_with("degraded")),
        "{body}"
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("wagate_redis_fallback_active 1"),
        "{metrics}"
    );

    redis.restart();
    let mut recovered = false;
    for _ in 0..50 {
        let (_, body) = app.ready().await;
        if body["checks"]["redis"] == "ok" {
            recovered = true;
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "Redis is used again once it answers");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("wagate_redis_fallback_active 0"),
        "{metrics}"
    );
    assert_eq!(app.get_as(&path, &key).await.status(), 200);
    assert!(
        !redis.keys("wagate:rl:*").await.is_empty(),
        "counting in Redis again"
    );
}

#[actix_web::test]
async fn a_redis_that_is_down_at_boot_does_not_stop_the_server() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let app = spawn_app_with(move |s| {
        s.redis.url = Some(SecretString::from(format!("redis://127.0.0.1:{port}")))
    })
    .await;
    let (tenant, key) = app.create_tenant("no-redis", "standard").await;
    assert_eq!(
        app.get_as(&format!("/api/v1/tenants/{tenant}"), &key)
            .await
            .status(),
        200
    );
    let (status, body) = app.ready().await;
    assert_eq!(status, 200);
    assert!(
        body["checks"]["redis"]
            .as_str()
            .is_some_and(|s| s.starts_with("degraded")),
        "{body}"
    );
}

#[actix_web::test]
async fn pubsub_crosses_nodes_through_redis_and_stays_local_without_it() {
    use futures::StreamExt;
    use wagate::kv::{Ephemeral, PubSub};
    let redis = RedisServer::start();
    let t = Duration::from_millis(500);
    let node_a = Ephemeral::with_redis(&redis.url(), t, Duration::from_secs(1)).expect("a");
    let node_b = Ephemeral::with_redis(&redis.url(), t, Duration::from_secs(1)).expect("b");
    let mut on_b = node_b.subscribe("events").await.expect("subscribe");
    // The relay subscribes asynchronously: publish until it is listening.
    let mut got = None;
    for _ in 0..40 {
        node_a.publish("events", b"from-a").await.expect("publish");
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), on_b.next()).await {
            got = Some(m);
            break;
        }
    }
    assert_eq!(
        got.as_deref(),
        Some(&b"from-a"[..]),
        "a message from node A reaches node B"
    );

    let local = Ephemeral::in_memory();
    let mut sub = local.subscribe("events").await.expect("subscribe");
    local.publish("events", b"local").await.expect("publish");
    let m = tokio::time::timeout(Duration::from_secs(1), sub.next())
        .await
        .expect("in time");
    assert_eq!(m.as_deref(), Some(&b"local"[..]));
}

#[actix_web::test]
async fn the_cache_uses_redis_and_falls_back_to_memory() {
    use wagate::kv::{Cache, Ephemeral};
    let mut redis = RedisServer::start();
    let kv = Ephemeral::with_redis(
        &redis.url(),
        Duration::from_millis(300),
        Duration::from_secs(30),
    )
    .expect("kv");
    kv.set("k", b"v", Duration::from_secs(30))
        .await
        .expect("set");
    assert_eq!(kv.get("k").await.expect("get").as_deref(), Some(&b"v"[..]));
    assert_eq!(
        redis.keys("wagate:cache:*").await,
        vec!["wagate:cache:k".to_owned()]
    );
    redis.kill();
    kv.set("k2", b"v2", Duration::from_secs(30))
        .await
        .expect("set with Redis down");
    assert_eq!(
        kv.get("k2").await.expect("get").as_deref(),
        Some(&b"v2"[..])
    );
    assert!(kv.health().is_degraded());
}
