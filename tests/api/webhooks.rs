//! Webhooks: subscriptions, Standard Webhooks signatures, retries with the same
//! `webhook-id`, dead letters and their replay — against a real HTTP receiver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::{ADMIN_KEY, Emit, TestApp, assert_error, spawn_app_with};

const WAIT: Duration = Duration::from_secs(30);

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    signature_ok: bool,
    body: Value,
}

#[derive(Default)]
struct Receiver {
    /// Secrets to verify with (any may match: rotation).
    secrets: Vec<String>,
    /// Fail this many attempts of each delivery before answering 200.
    fail_first: usize,
    /// Fail everything.
    down: bool,
    got: Vec<Received>,
    attempts: HashMap<String, usize>,
}

type Shared = Arc<Mutex<Receiver>>;

fn verify(secret: &str, id: &str, ts: &str, body: &[u8], header: &str) -> bool {
    let Some(key) = secret
        .strip_prefix("whsec_")
        .and_then(|k| STANDARD.decode(k).ok())
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    header.split(' ').any(|s| s == expected)
}

async fn receive(req: HttpRequest, body: web::Bytes, state: web::Data<Shared>) -> HttpResponse {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, ts, sig) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let mut r = state.lock().unwrap();
    let signature_ok = r.secrets.iter().any(|s| verify(s, &id, &ts, &body, &sig));
    let fresh = ts
        .parse::<i64>()
        .is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() < 300);
    r.got.push(Received {
        id: id.clone(),
        signature_ok: signature_ok && fresh,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let n = {
        let n = r.attempts.entry(id).or_default();
        *n += 1;
        *n
    };
    if r.down || n <= r.fail_first {
        HttpResponse::InternalServerError().finish()
    } else {
        HttpResponse::NoContent().finish()
    }
}

async fn start_receiver(state: Shared) -> String {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .default_service(web::to(receive))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let port = server.addrs()[0].port();
    actix_web::rt::spawn(server.run());
    format!("http://127.0.0.1:{port}/hooks")
}

async fn fast_app() -> TestApp {
    spawn_app_with(|s| {
        s.rate_limit.enabled = false;
        s.webhooks.allow_private_targets = true;
        s.webhooks.retry_schedule_secs = vec![1, 1];
        s.webhooks.poll_interval_ms = 100;
    })
    .await
}

impl TestApp {
    pub(crate) async fn create(&self, key: &str, body: Value) -> Value {
        let res = self
            .post("/api/v1/webhooks")
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        res.json().await.unwrap()
    }

    pub(crate) async fn deliveries(&self, key: &str, hook: &str, status: &str) -> Vec<Value> {
        self.get_json_as(
            &format!("/api/v1/webhooks/{hook}/deliveries?status={status}"),
            key,
        )
        .await["items"]
            .as_array()
            .cloned()
            .unwrap()
    }
}

async fn wait_until(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ok().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn deliveries_are_signed_retried_with_one_id_dead_lettered_and_replayed() {
    let app = fast_app().await;
    let (tenant, key) = app.create_tenant("Acme", "standard").await;
    let state: Shared = Arc::new(Mutex::new(Receiver {
        fail_first: 2,
        ..Default::default()
    }));
    let url = start_receiver(state.clone()).await;
    let hook = app
        .create(&key, json!({"url": url, "events": ["error"]}))
        .await;
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(STANDARD.decode(&secret[6..]).unwrap().len(), 32);
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    state.lock().unwrap().secrets.push(secret);

    // Fails twice, then delivered: three attempts under one webhook-id, all signed.
    let ids = app.emit_events(tenant, 1, Emit::default()).await;
    wait_until("delivered", async || {
        app.deliveries(&key, &hook_id, "delivered").await.len() == 1
    })
    .await;
    {
        let r = state.lock().unwrap();
        assert_eq!(r.got.len(), 3, "{:?}", r.got);
        assert!(r.got.iter().all(|g| g.signature_ok && g.id == r.got[0].id));
        assert!(r.got[0].id.starts_with("msg_"));
        assert_eq!(r.got[0].body["id"], ids[0]);
        assert_eq!(r.got[0].body["type"], "error");
        assert_eq!(r.got[0].body["tenant_id"], tenant.to_string());
    }
    let d = &app.deliveries(&key, &hook_id, "delivered").await[0];
    assert_eq!(d["attempts"], 3);
    assert_eq!(d["last_status_code"], 204);
    // The delivery log keeps every attempt: two refusals, then the success.
    let one = app
        .get_json_as(
            &format!(
                "/api/v1/webhooks/{hook_id}/deliveries/{}",
                d["id"].as_str().unwrap()
            ),
            &key,
        )
        .await;
    assert_eq!(one["id"], d["id"]);
    let log = one["attempt_log"].as_array().unwrap();
    let codes: Vec<&Value> = log.iter().map(|a| &a["status_code"]).collect();
    assert_eq!(codes, [&json!(500), &json!(500), &json!(204)], "{one}");
    assert_eq!(log[0]["attempt"], 1);
    assert_eq!(log[2]["attempt"], 3);
    assert_eq!(log[0]["error"], "the endpoint answered 500");
    assert!(log[2]["error"].is_null());
    assert!(log.iter().all(|a| a["duration_ms"].as_i64().unwrap() >= 0));
    let at = |a: &Value| {
        a["at"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    };
    assert!(
        at(&log[0]) < at(&log[1]) && at(&log[1]) < at(&log[2]),
        "{log:?}"
    );

    // The endpoint is down: after the last scheduled retry the delivery is dead.
    {
        let mut r = state.lock().unwrap();
        r.down = true;
        r.got.clear();
    }
    app.emit_events(tenant, 1, Emit::default()).await;
    wait_until("dead", async || {
        app.deliveries(&key, &hook_id, "dead").await.len() == 1
    })
    .await;
    let dead = app.deliveries(&key, &hook_id, "dead").await[0].clone();
    assert_eq!(dead["attempts"], 3);
    assert_eq!(dead["last_status_code"], 500);
    assert_eq!(state.lock().unwrap().got.len(), 3);

    // A delivery still being attempted is not replayed (409 delivery_pending): made pending,
    // with its next attempt far off so no worker takes it meanwhile.
    let dead_id = dead["id"].as_str().unwrap().to_owned();
    let set_status = async |status: &str| {
        app.execute_sql(&format!(
            "UPDATE webhook_deliveries SET status = '{status}', \
             next_attempt_at = now() + interval '1 hour' WHERE id = '{dead_id}'"
        ))
        .await
    };
    set_status("pending").await;
    let res = app
        .post(&format!(
            "/api/v1/webhooks/{hook_id}/deliveries/{dead_id}/replay"
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_error(res, 409, "delivery_pending").await;
    set_status("dead").await;

    // It comes back; replaying the dead letter delivers it, with the same id.
    state.lock().unwrap().down = false;
    let res = app
        .post(&format!(
            "/api/v1/webhooks/{hook_id}/deliveries/{}/replay",
            dead["id"].as_str().unwrap()
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    wait_until("replayed", async || {
        app.deliveries(&key, &hook_id, "delivered").await.len() == 2
    })
    .await;
    assert!(
        state
            .lock()
            .unwrap()
            .got
            .iter()
            .all(|g| g.id == dead["id"].as_str().unwrap())
    );
    // The replay restarted the retry schedule, not the log: three refusals, then the success.
    let replayed = app
        .get_json_as(
            &format!(
                "/api/v1/webhooks/{hook_id}/deliveries/{}",
                dead["id"].as_str().unwrap()
            ),
            &key,
        )
        .await;
    let codes: Vec<i64> = replayed["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [500, 500, 500, 204], "{replayed}");
    assert_eq!(replayed["attempts"], 1);

    // Several dead letters, one call replays them all.
    state.lock().unwrap().down = true;
    app.emit_events(tenant, 2, Emit::default()).await;
    wait_until("two dead", async || {
        app.deliveries(&key, &hook_id, "dead").await.len() == 2
    })
    .await;
    state.lock().unwrap().down = false;
    let res = app
        .post(&format!("/api/v1/webhooks/{hook_id}/deliveries/replay"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["replayed"], 2);
    wait_until("all delivered", async || {
        app.deliveries(&key, &hook_id, "delivered").await.len() == 4
    })
    .await;

    // A rotated secret signs what follows.
    let rotated = app
        .post(&format!("/api/v1/webhooks/{hook_id}/rotate-secret"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    {
        let mut r = state.lock().unwrap();
        r.secrets = vec![new_secret];
        r.got.clear();
        r.fail_first = 0;
    }
    app.emit_events(tenant, 1, Emit::default()).await;
    wait_until("signed with the new secret", async || {
        state.lock().unwrap().got.iter().any(|g| g.signature_ok)
    })
    .await;

    // Only subscribed types are delivered; a disabled webhook gets nothing.
    let res = app
        .patch(&format!("/api/v1/webhooks/{hook_id}"))
        .bearer_auth(&key)
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["enabled"], false);
    let before = app.deliveries(&key, &hook_id, "delivered").await.len();
    // Beside it: an enabled webhook for the same type, and one for another type only. The
    // event's deliveries are written with the event, in one statement, so once the enabled
    // one has its delivery, the other two would have theirs if they were owed one.
    let enabled = app
        .create(&key, json!({"url": url, "events": ["error"]}))
        .await;
    let enabled_id = enabled["id"].as_str().unwrap().to_owned();
    let other_type = app
        .create(&key, json!({"url": url, "events": ["message.received"]}))
        .await;
    let other_id = other_type["id"].as_str().unwrap().to_owned();
    app.emit_events(tenant, 1, Emit::default()).await;
    wait_until("the enabled webhook got the event", async || {
        app.deliveries(&key, &enabled_id, "delivered").await.len() == 1
    })
    .await;
    assert_eq!(
        app.deliveries(&key, &hook_id, "delivered").await.len(),
        before,
        "the disabled webhook got nothing"
    );
    assert!(app.deliveries(&key, &hook_id, "pending").await.is_empty());
    for status in ["pending", "delivered", "dead"] {
        assert!(
            app.deliveries(&key, &other_id, status).await.is_empty(),
            "a webhook for another type got nothing ({status})"
        );
    }
    let metrics = app.metrics_text().await;
    assert!(metrics.contains("wagate_webhook_deliveries_total{outcome=\"dead\"}"));
}

#[actix_web::test]
async fn webhooks_validate_input_refuse_private_targets_and_stay_within_their_tenant() {
    let app = spawn_app_with(|s| s.rate_limit.enabled = false).await;
    let (_a, key_a) = app.create_tenant("Acme", "standard").await;
    let (_b, key_b) = app.create_tenant("Globex", "standard").await;
    let post = |key: &str, body: Value| {
        app.post("/api/v1/webhooks")
            .bearer_auth(key.to_owned())
            .json(&body)
            .send()
    };
    for (body, field) in [
        (json!({"url": "not a url"}), "url"),
        (json!({"url": "ftp://example.com/x"}), "url"),
        (json!({"url": "http://127.0.0.1:9/x"}), "url"),
        (json!({"url": "http://localhost/x"}), "url"),
        (json!({"url": "http://10.1.2.3/x"}), "url"),
        (json!({"url": "http://[::1]/x"}), "url"),
        (json!({"url": "http://169.254.169.254/latest"}), "url"),
        (json!({"url": "http://localhost./x"}), "url"),
        (json!({"url": "http://[64:ff9b::7f00:1]/x"}), "url"),
        (json!({"url": "http://[::ffff:10.0.0.1]/x"}), "url"),
        (json!({"url": "http://[::7f00:1]/x"}), "url"),
        (json!({"url": "http://[2002:7f00:1::]/x"}), "url"),
        (json!({"url": "http://[ff02::1]/x"}), "url"),
        (json!({"url": "http://198.18.0.1/x"}), "url"),
        (json!({"url": "http://240.0.0.1/x"}), "url"),
        (json!({"url": "http://224.0.0.1/x"}), "url"),
        (
            json!({"url": "https://hooks.example.com/x", "events": ["nope"]}),
            "events[0]",
        ),
    ] {
        let body = assert_error(post(&key_a, body).await.unwrap(), 400, "validation_failed").await;
        assert_eq!(body["error"]["details"]["field"], field);
    }
    let hook = post(&key_a, json!({"url": "https://hooks.example.com/x", "events": ["message.received", "message.status"]}))
        .await
        .unwrap();
    assert_eq!(hook.status(), 201);
    let hook: Value = hook.json().await.unwrap();
    let id = hook["id"].as_str().unwrap();
    let listed = app.get_json_as("/api/v1/webhooks", &key_a).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert!(
        listed["items"][0].get("secret").is_none(),
        "secrets are shown once"
    );

    // Another tenant cannot see, change, replay or delete it.
    assert_eq!(
        app.get_json_as("/api/v1/webhooks", &key_b).await["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    for res in [
        app.get_as(&format!("/api/v1/webhooks/{id}"), &key_b).await,
        app.get_as(&format!("/api/v1/webhooks/{id}/deliveries"), &key_b)
            .await,
        app.get_as(&format!("/api/v1/webhooks/{id}/deliveries/msg_any"), &key_b)
            .await,
        app.patch(&format!("/api/v1/webhooks/{id}"))
            .bearer_auth(&key_b)
            .json(&json!({"enabled": false}))
            .send()
            .await
            .unwrap(),
        app.post(&format!("/api/v1/webhooks/{id}/rotate-secret"))
            .bearer_auth(&key_b)
            .send()
            .await
            .unwrap(),
        app.post(&format!("/api/v1/webhooks/{id}/deliveries/replay"))
            .bearer_auth(&key_b)
            .send()
            .await
            .unwrap(),
        app.delete(&format!("/api/v1/webhooks/{id}"))
            .bearer_auth(&key_b)
            .send()
            .await
            .unwrap(),
    ] {
        assert_error(res, 404, "not_found").await;
    }
    let res = app
        .delete(&format!("/api/v1/webhooks/{id}"))
        .bearer_auth(&key_a)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_error(
        app.get_as(&format!("/api/v1/webhooks/{id}"), &key_a).await,
        404,
        "not_found",
    )
    .await;
}

/// A name the API cannot judge (it resolves to loopback only at delivery) is refused when
/// the client connects, by the resolver whose addresses it connects to: nothing reaches the
/// internal endpoint, and the delivery says why.
#[actix_web::test]
async fn a_name_that_resolves_to_an_internal_address_is_refused_at_connect() {
    let app = spawn_app_with(|s| {
        s.rate_limit.enabled = false;
        s.webhooks.retry_schedule_secs = vec![60];
        s.webhooks.poll_interval_ms = 100;
    })
    .await;
    let (tenant, key) = app.create_tenant("Acme", "standard").await;
    let state: Shared = Arc::default();
    let receiver = start_receiver(state.clone()).await;
    // This machine's own name resolves to loopback (/etc/hosts).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let resolved: Vec<_> = tokio::net::lookup_host((host.as_str(), 80))
        .await
        .unwrap()
        .collect();
    assert!(
        resolved.iter().all(|a| a.ip().is_loopback()),
        "the test needs a host name that resolves to loopback: {host} is {resolved:?}"
    );
    let url = receiver.replace("127.0.0.1", &host);
    let hook = app.create(&key, json!({"url": url})).await;
    let hook = hook["id"].as_str().unwrap().to_owned();
    app.emit_events(tenant, 1, Emit::default()).await;
    wait_until("the delivery was attempted", async || {
        !app.deliveries(&key, &hook, "pending").await.is_empty()
            && app.deliveries(&key, &hook, "pending").await[0]["attempts"] == 1
    })
    .await;
    let attempted = app.deliveries(&key, &hook, "pending").await;
    let error = attempted[0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("private or loopback"), "{error}");
    assert!(
        state.lock().unwrap().got.is_empty(),
        "the internal endpoint was reached"
    );
}

/// A session's `webhook_url` is held to the same policy and delivered: it is a signed
/// webhook of that session's events, its secret in the answer that created the session.
#[actix_web::test]
async fn a_session_webhook_url_is_guarded_and_delivered() {
    let guarded = spawn_app_with(|s| s.rate_limit.enabled = false).await;
    let (_t, key) = guarded.create_tenant("Acme", "standard").await;
    let res = guarded
        .post("/api/v1/sessions")
        .bearer_auth(&key)
        .json(&json!({"name": "desk", "webhook_url": "http://localhost./hook"}))
        .send()
        .await
        .unwrap();
    let err = assert_error(res, 400, "validation_failed").await;
    assert_eq!(err["error"]["details"]["field"], "webhook_url");

    let app = fast_app().await;
    let (tenant, key) = app.create_tenant("Acme", "standard").await;
    let state: Shared = Arc::default();
    let url = start_receiver(state.clone()).await;
    let res = app
        .post("/api/v1/sessions")
        .bearer_auth(&key)
        .json(&json!({"name": "desk", "webhook_url": url}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let session: Value = res.json().await.unwrap();
    let id = session["id"].as_str().unwrap().to_owned();
    assert_eq!(session["webhook_url"], url.as_str());
    let secret = session["webhook"]["secret"].as_str().unwrap().to_owned();
    state.lock().unwrap().secrets.push(secret);
    let again = app
        .get_json_as(&format!("/api/v1/sessions/{id}"), &key)
        .await;
    assert!(
        again.get("webhook").is_none(),
        "the secret is shown once: {again}"
    );
    let listed = app.get_json_as("/api/v1/webhooks", &key).await;
    assert_eq!(listed["items"][0]["session_id"], id.as_str(), "{listed}");

    // A tenant-wide event is not this session's; the session's own is delivered, signed.
    app.emit_events(tenant, 1, Emit::default()).await;
    let res = app
        .post(&format!("/__test/admin/tenants/{tenant}/events"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"count": 1, "session_id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ids: Value = res.json().await.unwrap();
    wait_until("the session's event was delivered", async || {
        !state.lock().unwrap().got.is_empty()
    })
    .await;
    let got = state.lock().unwrap().got.clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].signature_ok);
    assert_eq!(got[0].body["id"], ids["ids"][0], "{:?}", got[0].body);
}
