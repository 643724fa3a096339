//! Sessions through the HTTP API: lifecycle, bad input, quotas, tenant isolation, admin.
//! The tests that link a WhatsApp account run in the sandbox build: the real whatsapp-rust
//! client inside the gateway, talking to the in-process simulator.

use reqwest::Response;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, TestApp, assert_error, spawn_app_with};

impl TestApp {
    pub(crate) async fn create_session(&self, key: &str, name: &str) -> Response {
        self.post("/api/v1/sessions")
            .bearer_auth(key)
            .json(&json!({ "name": name }))
            .send()
            .await
            .expect("request")
    }

    pub(crate) async fn new_session(&self, key: &str, name: &str) -> String {
        let res = self.create_session(key, name).await;
        assert_eq!(res.status(), 201, "session creation");
        let body: Value = res.json().await.expect("json");
        assert_eq!(body["status"], "stopped");
        body["id"].as_str().expect("id").to_owned()
    }

    pub(crate) async fn post_as(&self, path: &str, key: &str) -> Response {
        self.post(path)
            .bearer_auth(key)
            .send()
            .await
            .expect("request")
    }
}

#[actix_web::test]
async fn sessions_are_created_listed_and_deleted_within_quota_and_tenant() {
    let app = spawn_app_with(|s| s.rate_limit.enabled = false).await;
    let (tenant_a, key_a) = app.create_tenant("Acme", "standard").await;
    let (_tenant_b, key_b) = app.create_tenant("Globex", "professional").await;

    let res = app.create_session(&key_a, "front desk").await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["tenant_id"], tenant_a.to_string());
    assert_eq!(created["tier"], "standard");
    assert_eq!(created["reconnect_attempts"], 0);
    assert!(created.get("phone").is_none());

    // Standard allows one session.
    let body = assert_error(
        app.create_session(&key_a, "second").await,
        403,
        "quota_exceeded",
    )
    .await;
    assert_eq!(body["error"]["details"]["limit"], 1);
    assert_eq!(body["error"]["details"]["tier"], "standard");
    // Professional allows three.
    for n in 0..3 {
        app.new_session(&key_b, &format!("b{n}")).await;
    }
    assert_error(
        app.create_session(&key_b, "b4").await,
        403,
        "quota_exceeded",
    )
    .await;

    // Bad input.
    assert_error(
        app.create_session(&key_b, "  ").await,
        400,
        "validation_failed",
    )
    .await;
    let res = app
        .post("/api/v1/sessions")
        .bearer_auth(&key_a)
        .json(&json!({"name": "x", "webhook_url": "ftp://nope"}))
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "validation_failed").await;
    let res = app
        .post("/api/v1/sessions")
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "validation_failed").await;

    // Lists are per tenant; the admin sees all.
    let a = app.get_json_as("/api/v1/sessions", &key_a).await;
    assert_eq!(a["items"].as_array().unwrap().len(), 1);
    let b = app.get_json_as("/api/v1/sessions", &key_b).await;
    assert_eq!(b["items"].as_array().unwrap().len(), 3);
    let all = app.get_json_as("/api/v1/sessions", ADMIN_KEY).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 4);

    // Another tenant's session does not exist for them, on every route.
    let path = format!("/api/v1/sessions/{id}");
    assert_error(app.get_as(&path, &key_b).await, 404, "not_found").await;
    for action in ["start", "stop", "restart", "logout"] {
        let res = app.post_as(&format!("{path}/{action}"), &key_b).await;
        assert_error(res, 404, "not_found").await;
    }
    for sub in ["qr", "qr.png", "qr/view", "status", "health", "events"] {
        assert_error(
            app.get_as(&format!("{path}/{sub}"), &key_b).await,
            404,
            "not_found",
        )
        .await;
    }
    let res = app.delete(&path).bearer_auth(&key_b).send().await.unwrap();
    assert_error(res, 404, "not_found").await;

    // Unknown and malformed ids.
    let unknown = format!("/api/v1/sessions/{}", uuid::Uuid::new_v4());
    assert_error(app.get_as(&unknown, &key_a).await, 404, "not_found").await;
    assert_error(
        app.get_as("/api/v1/sessions/not-a-uuid", &key_a).await,
        404,
        "not_found",
    )
    .await;

    // A stopped session has no QR; a pairing code needs a phone and the QR state.
    assert_error(
        app.get_as(&format!("{path}/qr"), &key_a).await,
        409,
        "session_not_in_qr_state",
    )
    .await;
    assert_error(
        app.get_as(&format!("{path}/qr.png"), &key_a).await,
        409,
        "session_not_in_qr_state",
    )
    .await;
    let res = app
        .post(&format!("{path}/pair-code"))
        .bearer_auth(&key_a)
        .json(&json!({"phone": "12345"}))
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "validation_failed").await;
    let res = app
        .post(&format!("{path}/pair-code"))
        .bearer_auth(&key_a)
        .json(&json!({"phone": "+1 555 000 1111"}))
        .send()
        .await
        .unwrap();
    assert_error(res, 409, "session_not_in_qr_state").await;
    // The HTML view still answers, with the status.
    let res = app.get_as(&format!("{path}/qr/view"), &key_a).await;
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("stopped"));
    // A stopped session is not healthy.
    let res = app.get_as(&format!("{path}/health"), &key_a).await;
    let err = assert_error(res, 503, "session_unhealthy").await;
    assert_eq!(err["error"]["details"]["healthy"], false, "{err}");

    // Admin routes are not for tenants.
    assert_error(
        app.get_as("/api/v1/admin/actors", &key_a).await,
        403,
        "forbidden",
    )
    .await;
    for p in [
        format!("/api/v1/admin/sessions/{id}/restart"),
        "/api/v1/admin/pools/standard/restart".to_string(),
        format!("/api/v1/admin/tenants/{tenant_a}/nuke"),
    ] {
        assert_error(app.post_as(&p, &key_a).await, 403, "forbidden").await;
    }
    assert_error(
        app.post_as("/api/v1/admin/pools/gold/restart", ADMIN_KEY)
            .await,
        400,
        "validation_failed",
    )
    .await;
    // A stopped session has no actor to restart.
    assert_error(
        app.post_as(&format!("/api/v1/admin/sessions/{id}/restart"), ADMIN_KEY)
            .await,
        409,
        "session_not_running",
    )
    .await;
    let tree = app.get_json_as("/api/v1/admin/actors", ADMIN_KEY).await;
    let tiers: Vec<&str> = tree["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["tier"].as_str().unwrap())
        .collect();
    assert_eq!(tiers, ["standard", "professional", "enterprise"]);

    // Compatibility routes map onto the same sessions.
    let compat = app.get_json_as("/api/whatsapp/sessions", &key_a).await;
    assert_eq!(compat["items"][0]["id"], id.as_str());
    let st = app
        .get_json_as(&format!("/api/whatsapp/sessions/{id}/status"), &key_a)
        .await;
    assert_eq!(st["status"], "stopped");
    let health = app
        .get_as(&format!("/api/whatsapp/sessions/{id}/health"), &key_a)
        .await;
    assert_eq!(health.status(), 503, "a stopped session is not healthy");
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["healthy"], false, "{health}");
    let metrics = app.get_as("/api/whatsapp/metrics", &key_a).await;
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("wagate_sessions{"));
    assert_error(
        app.get("/api/whatsapp/metrics").send().await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    for (path, other) in [
        (format!("/api/whatsapp/sessions/{id}/health"), &key_b),
        (format!("/api/whatsapp/sessions/{id}/status"), &key_b),
    ] {
        assert_error(app.get_as(&path, other).await, 404, "not_found").await;
    }
    let res = app
        .post_as(&format!("/api/whatsapp/sessions/{id}/initialize"), &key_b)
        .await;
    assert_error(res, 404, "not_found").await;
    // initialize is start: accepted, the session starting (only where the network is the
    // simulator: a default build's session would dial WhatsApp itself).
    #[cfg(feature = "sandbox")]
    {
        let res = app
            .post_as(&format!("/api/whatsapp/sessions/{id}/initialize"), &key_a)
            .await;
        assert_eq!(res.status(), 202);
        let started: Value = res.json().await.unwrap();
        assert_eq!(started["status"], "starting", "{started}");
        // The actor takes it from there: the status moves on by itself.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let st = app
                .get_json_as(&format!("/api/whatsapp/sessions/{id}/status"), &key_a)
                .await;
            if st["status"] != "stopped" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never started: {st}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    // Delete: gone, and the quota is free again.
    let res = app.delete(&path).bearer_auth(&key_a).send().await.unwrap();
    assert_eq!(res.status(), 204);
    assert_error(app.get_as(&path, &key_a).await, 404, "not_found").await;
    app.new_session(&key_a, "again").await;
}

#[cfg(feature = "sandbox")]
mod agents;
#[cfg(feature = "sandbox")]
mod automation;
#[cfg(feature = "sandbox")]
mod contacts;
#[cfg(feature = "sandbox")]
mod crm;
#[cfg(feature = "sandbox")]
mod groups;
#[cfg(feature = "sandbox")]
mod linked;
#[cfg(feature = "sandbox")]
mod messaging;
#[cfg(feature = "sandbox")]
mod quick_replies;
