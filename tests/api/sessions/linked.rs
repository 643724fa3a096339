//! Sessions linked to (simulated) WhatsApp accounts: the gateway's own whatsapp-rust clients,
//! driven only through HTTP, against the in-process simulator.

use std::time::Duration;

use serde_json::{Value, json};
use wagate::configuration::Settings;
use wagate::whatsapp_network::WhatsAppNetwork;

use crate::helpers::{ADMIN_KEY, TestApp, assert_error, spawn_on_network, test_settings};

pub(super) const WAIT: Duration = Duration::from_secs(20);

/// Timings short enough for tests: leases of 3 s renewed every second, quick reconnects.
pub(super) fn fast(s: &mut Settings) {
    s.rate_limit.enabled = false;
    s.sessions.lease_ttl_secs = 3;
    s.sessions.lease_renew_interval_secs = 1;
    s.sessions.reconnect_base_ms = 100;
    s.sessions.reconnect_cap_secs = 2;
    s.sessions.orphan_scan_interval_secs = 1;
}

pub(super) async fn spawn(customize: impl FnOnce(&mut Settings)) -> TestApp {
    let mut s = test_settings().await;
    fast(&mut s);
    customize(&mut s);
    spawn_on_network(s, None).await
}

impl TestApp {
    pub(crate) async fn session(&self, key: &str, id: &str) -> Value {
        self.get_json_as(&format!("/api/v1/sessions/{id}"), key)
            .await
    }

    /// Polls the session until `pick` accepts it.
    pub(crate) async fn wait_for(
        &self,
        key: &str,
        id: &str,
        what: &str,
        pick: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let s = self.session(key, id).await;
            if pick(&s) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; session is {s}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn wait_status(&self, key: &str, id: &str, status: &str) -> Value {
        self.wait_for(key, id, status, |s| s["status"] == status)
            .await
    }

    pub(crate) async fn events(&self, key: &str, id: &str, since: i64) -> Vec<Value> {
        let body = self
            .get_json_as(
                &format!("/api/v1/sessions/{id}/events?since={since}&limit=1000"),
                key,
            )
            .await;
        body["items"].as_array().cloned().unwrap_or_default()
    }

    pub(crate) async fn last_event_id(&self, key: &str, id: &str) -> i64 {
        self.events(key, id, 0)
            .await
            .last()
            .and_then(|e| e["id"].as_i64())
            .unwrap_or(0)
    }

    pub(crate) async fn wait_event(&self, key: &str, id: &str, since: i64, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(e) = self
                .events(key, id, since)
                .await
                .into_iter()
                .find(|e| e["type"] == kind)
            {
                return e;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for event {kind}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the session, scans its QR with a simulated phone through the sandbox API, and
    /// waits until it is connected.
    pub(crate) async fn link(&self, key: &str, id: &str, phone: &str) -> Value {
        let res = self
            .post_as(&format!("/api/v1/sessions/{id}/start"), key)
            .await;
        assert_eq!(res.status(), 202);
        self.wait_status(key, id, "qr").await;
        let res = self
            .post(&format!("/api/v1/sandbox/sessions/{id}/scan"))
            .bearer_auth(key)
            .json(&json!({ "phone": phone }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "scan");
        self.wait_status(key, id, "connected").await
    }

    pub(crate) async fn wait_tree(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let tree = self.get_json_as("/api/v1/admin/actors", ADMIN_KEY).await;
            if ok(&tree) {
                return tree;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {tree}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub(super) fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[actix_web::test]
async fn a_session_links_with_no_phone_and_survives_drops_restarts_and_logout() {
    let mut app = spawn(|_| {}).await;
    let (_tenant, key) = app.create_tenant("Acme", "standard").await;
    let id = app.new_session(&key, "front desk").await;
    let base = format!("/api/v1/sessions/{id}");

    // Start: accepted (202), the session `starting`; then a QR code in every form.
    let res = app.post_as(&format!("{base}/start"), &key).await;
    assert_eq!(res.status(), 202);
    let started: Value = res.json().await.unwrap();
    assert_eq!(started["status"], "starting", "{started}");
    app.wait_status(&key, &id, "qr").await;
    let qr = app.get_json_as(&format!("{base}/qr"), &key).await;
    assert!(qr["qr"].as_str().unwrap().starts_with("2@"), "{qr}");
    assert!(
        qr["data_url"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,")
    );
    assert!(qr["terminal"].as_str().unwrap().contains('█'));
    assert!(qr["expires_at"].is_string());
    let png = app.get_as(&format!("{base}/qr.png"), &key).await;
    assert_eq!(png.headers()["content-type"], "image/png");
    assert_eq!(&png.bytes().await.unwrap()[1..4], b"PNG");
    let view = app.get_as(&format!("{base}/qr/view"), &key).await;
    let html = view.text().await.unwrap();
    assert!(
        html.contains("<img") && html.contains("http-equiv=\"refresh\""),
        "{html}"
    );
    // Starting again is idempotent.
    let again = app.post_as(&format!("{base}/start"), &key).await;
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        again["status"], "qr",
        "a running session answers its own state"
    );

    // A simulated phone scans it through the sandbox API.
    let res = app
        .post(&format!("/api/v1/sandbox/sessions/{id}/scan"))
        .bearer_auth(&key)
        .json(&json!({ "phone": "+1 555 000 1001" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let linked = app.wait_status(&key, &id, "connected").await;
    assert_eq!(linked["phone"], "+15550001001");
    assert!(linked["jid"].as_str().unwrap().starts_with("15550001001"));
    assert_error(
        app.get_as(&format!("{base}/qr"), &key).await,
        409,
        "session_not_in_qr_state",
    )
    .await;
    let health = app.get_as(&format!("{base}/health"), &key).await;
    assert_eq!(health.status(), 200);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["healthy"], true);
    assert_eq!(health["connected"], true);
    let kinds_so_far = kinds(&app.events(&key, &id, 0).await);
    for k in ["session.qr", "session.paired", "session.connected"] {
        assert!(
            kinds_so_far.contains(&k.to_string()),
            "{k} in {kinds_so_far:?}"
        );
    }
    let ids: Vec<i64> = app
        .events(&key, &id, 0)
        .await
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[1] > w[0]),
        "monotonic event ids: {ids:?}"
    );

    // A contact writes: the session's client decrypts it and the contact's phone gets the
    // delivery receipt.
    let sim = app.sim();
    let res = app
        .sandbox_inbound(&key, &id, "+15550002002", "hello gateway")
        .await;
    assert_eq!(res.status(), 202);
    let sent: Value = res.json().await.unwrap();
    let msg_id = sent["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !sim
        .contact_receipts("15550002002")
        .iter()
        .any(|r| r.id == msg_id)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no receipt for the inbound message"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let inbox = app
        .get_json_as("/api/v1/sandbox/contacts/+15550002002/messages", &key)
        .await;
    assert_eq!(inbox["items"], json!([]), "this session has sent nothing");

    // The simulator cuts the connection: the session reconnects by itself, with no QR.
    let mark = app.last_event_id(&key, &id).await;
    let res = app
        .post_as(&format!("/api/v1/sandbox/sessions/{id}/drop"), &key)
        .await;
    assert_eq!(res.status(), 200);
    app.wait_event(&key, &id, mark, "session.reconnecting")
        .await;
    app.wait_event(&key, &id, mark, "session.connected").await;
    app.wait_status(&key, &id, "connected").await;
    assert!(!kinds(&app.events(&key, &id, mark).await).contains(&"session.qr".to_string()));

    // The whole gateway restarts: the session comes back from Postgres with no new QR.
    let mark = app.last_event_id(&key, &id).await;
    let db = app.db_url.clone();
    app.stop().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while sim.connections_of("15550001001") != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a stopped gateway holds no connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut settings = test_settings().await;
    fast(&mut settings);
    settings.database.url = Some(db.into());
    let mut app = spawn_on_network(settings, Some(WhatsAppNetwork::Sandbox(sim.clone()))).await;
    app.wait_event(&key, &id, mark, "session.connected").await;
    app.wait_status(&key, &id, "connected").await;
    let after_restart = kinds(&app.events(&key, &id, mark).await);
    assert!(
        !after_restart.contains(&"session.qr".to_string()),
        "{after_restart:?}"
    );
    assert_eq!(sim.connections_of("15550001001"), 1);

    // Logout: the phone forgets the device, the keys are gone, a start shows a new QR.
    let res = app.post_as(&format!("{base}/logout"), &key).await;
    assert_eq!(res.status(), 200);
    let out = app.wait_status(&key, &id, "logged_out").await;
    assert!(out.get("phone").is_none(), "{out}");
    assert!(sim.linked_devices("15550001001").is_empty());
    let res = app.post_as(&format!("{base}/start"), &key).await;
    assert_eq!(res.status(), 202);
    app.wait_status(&key, &id, "qr").await;
    app.stop().await;
}

#[actix_web::test]
async fn a_session_links_by_pairing_code() {
    let app = spawn(|_| {}).await;
    let (_t, key) = app.create_tenant("Acme", "standard").await;
    let id = app.new_session(&key, "code").await;
    app.post_as(&format!("/api/v1/sessions/{id}/start"), &key)
        .await;
    app.wait_status(&key, &id, "qr").await;
    let res = app
        .post(&format!("/api/v1/sessions/{id}/pair-code"))
        .bearer_auth(&key)
        .json(&json!({ "phone": "+15550003003" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let code = res.json::<Value>().await.unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(code.len(), 9, "{code}");
    assert_eq!(&code[4..5], "-", "{code}");
    app.wait_status(&key, &id, "pairing").await;
    app.sim()
        .enter_pair_code("+15550003003", &code)
        .await
        .unwrap();
    let s = app.wait_status(&key, &id, "connected").await;
    assert_eq!(s["phone"], "+15550003003");
}

fn pool<'a>(tree: &'a Value, tier: &str) -> &'a Value {
    tree["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["tier"] == tier)
        .unwrap()
}

fn node<'a>(tree: &'a Value, id: &str) -> Option<(&'a Value, &'a Value)> {
    for p in tree["pools"].as_array().unwrap() {
        for a in p["arbiters"].as_array().unwrap() {
            for s in a["sessions"].as_array().unwrap() {
                if s["id"] == id {
                    return Some((a, s));
                }
            }
        }
    }
    None
}

#[actix_web::test]
async fn the_tree_restarts_a_panicked_session_and_a_dead_arbiter() {
    let app = spawn(|s| {
        s.sessions.quotas.standard = 3;
        s.sessions.pools.standard.sessions_per_arbiter = 3;
    })
    .await;
    let (_a, key_a) = app.create_tenant("Acme", "standard").await;
    let (_b, key_b) = app.create_tenant("Globex", "enterprise").await;
    let mut standard = Vec::new();
    for n in 0..3 {
        let id = app.new_session(&key_a, &format!("a{n}")).await;
        app.link(&key_a, &id, &format!("+1555000100{n}")).await;
        standard.push(id);
    }
    let enterprise = app.new_session(&key_b, "b").await;
    app.link(&key_b, &enterprise, "+15550002000").await;
    // Metrics are process-wide: this test judges what it changed.
    let restarts_before = app
        .metric("wagate_actor_restarts_total{tier=\"standard\"}")
        .await;
    let connected_before = app.metric("wagate_sessions{state=\"connected\"}").await;

    // Standard packs its three sessions on one arbiter; enterprise has its own.
    let tree = app.get_json_as("/api/v1/admin/actors", ADMIN_KEY).await;
    let arbiter = node(&tree, &standard[0]).unwrap().0["id"].clone();
    for id in &standard {
        assert_eq!(node(&tree, id).unwrap().0["id"], arbiter, "{tree}");
    }
    assert_eq!(
        pool(&tree, "standard")["arbiters"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        pool(&tree, "enterprise")["arbiters"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (_, s) = node(&tree, &standard[0]).unwrap();
    assert_eq!(s["status"], "connected");
    assert!(s["mailbox_len"].is_u64() && s["uptime_secs"].is_u64());

    // A panic inside one session's handler takes its arbiter's thread with it: that session
    // and its arbiter neighbours come back by themselves, connected from their stored keys
    // (no QR); the other pool is untouched.
    let mark = app.last_event_id(&key_a, &standard[0]).await;
    let fault = |id: &str, kind: &str| {
        app.post(&format!("/__test/admin/sessions/{id}/fault"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({ "kind": kind }))
            .send()
    };
    assert_eq!(fault(&standard[0], "panic").await.unwrap().status(), 202);
    let ids = standard.clone();
    let tree = app
        .wait_tree(
            "the panicked session back (and any neighbour it took down)",
            |t| {
                node(t, &ids[0]).is_some_and(|(_, s)| s["restarts"] == 1)
                    && ids.iter().all(|id| {
                        node(t, id).is_some_and(|(a, s)| {
                            a["alive"] == true && s["alive"] == true && s["status"] == "connected"
                        })
                    })
            },
        )
        .await;
    assert_eq!(pool(&tree, "enterprise")["restarts_total"], 0);
    assert_eq!(node(&tree, &enterprise).unwrap().1["restarts"], 0);
    assert!(
        !kinds(&app.events(&key_a, &standard[0], mark).await).contains(&"session.qr".to_string())
    );
    let restarts = |t: &Value| -> Vec<u64> {
        standard
            .iter()
            .map(|id| node(t, id).unwrap().1["restarts"].as_u64().unwrap())
            .collect()
    };
    let before = restarts(&tree);

    // The arbiter stops under its sessions: all of them come back on a new one.
    assert_eq!(
        fault(&standard[1], "kill_arbiter").await.unwrap().status(),
        202
    );
    let ids = standard.clone();
    let expected: Vec<u64> = before.iter().map(|r| r + 1).collect();
    let tree = app
        .wait_tree("every session of the dead arbiter restarted", |t| {
            ids.iter().all(|id| {
                node(t, id).is_some_and(|(a, s)| {
                    a["alive"] == true && s["alive"] == true && s["status"] == "connected"
                })
            }) && restarts(t) == expected
        })
        .await;
    let total: u64 = expected.iter().sum();
    assert_eq!(pool(&tree, "standard")["restarts_total"], total);
    assert_eq!(pool(&tree, "enterprise")["restarts_total"], 0);
    let b = node(&tree, &enterprise).unwrap().1;
    assert_eq!(
        (b["status"].as_str(), b["restarts"].as_u64()),
        (Some("connected"), Some(0))
    );
    for id in &standard {
        let h = app
            .get_as(&format!("/api/v1/sessions/{id}/health"), &key_a)
            .await;
        assert_eq!(h.status(), 200);
    }
    assert_eq!(
        app.metric("wagate_actor_restarts_total{tier=\"standard\"}")
            .await,
        restarts_before + total as f64,
        "every restart counted"
    );
    assert_eq!(
        app.metric("wagate_sessions{state=\"connected\"}").await,
        connected_before,
        "all four connected again"
    );

    // Admin restarts: one session, then a whole pool; the other pool is untouched.
    let res = app
        .post_as(
            &format!("/api/v1/admin/sessions/{}/restart", standard[2]),
            ADMIN_KEY,
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .post_as("/api/v1/admin/pools/standard/restart", ADMIN_KEY)
        .await;
    assert_eq!(res.json::<Value>().await.unwrap()["restarted"], 3);
    let ids = standard.clone();
    let tree = app
        .wait_tree("the pool restarted and reconnected", |t| {
            ids.iter()
                .all(|id| node(t, id).is_some_and(|(_, s)| s["status"] == "connected"))
        })
        .await;
    assert_eq!(
        node(&tree, &standard[2]).unwrap().1["restarts"],
        expected[2] + 2
    );
    assert_eq!(pool(&tree, "enterprise")["restarts_total"], 0);
}

/// A connection that stops carrying traffic fails the health check (a ping gets no answer in
/// time) and the session reconnects.
#[actix_web::test]
async fn a_silent_connection_fails_the_health_check_and_reconnects() {
    let app = spawn(|s| s.sessions.health_check_interval_secs = 1).await;
    let (_t, key) = app.create_tenant("Acme", "standard").await;
    let id = app.new_session(&key, "quiet").await;
    app.link(&key, &id, "+15550009100").await;
    let mark = app.last_event_id(&key, &id).await;
    let sim = app.sim();
    // Everything the network sends now arrives 30 s late: pings go unanswered.
    sim.set_latency(Duration::from_secs(30));
    let failed = app
        .wait_event(&key, &id, mark, "session.health_check_failed")
        .await;
    assert_eq!(failed["data"]["reason"], "no answer to a ping", "{failed}");
    sim.set_latency(Duration::ZERO);
    let after = app
        .wait_event(
            &key,
            &id,
            failed["id"].as_i64().unwrap(),
            "session.connected",
        )
        .await;
    assert!(after["id"].as_i64() > failed["id"].as_i64());
    app.wait_status(&key, &id, "connected").await;
}

/// Links four sessions, restarts the gateway with `configure` (and `latency` on every frame
/// the network sends), and returns the time between the first and the last reconnection.
async fn resume_spread(
    prefix: &str,
    latency: Duration,
    configure: impl FnOnce(&mut Settings),
) -> Duration {
    let mut app = spawn(|s| s.sessions.quotas.standard = 4).await;
    let (_t, key) = app.create_tenant("Acme", "standard").await;
    let mut ids = Vec::new();
    for n in 0..4 {
        let id = app.new_session(&key, &format!("s{n}")).await;
        app.link(&key, &id, &format!("{prefix}{n}")).await;
        ids.push(id);
    }
    let marks: Vec<i64> =
        futures::future::join_all(ids.iter().map(|id| app.last_event_id(&key, id))).await;
    let sim = app.sim();
    let db = app.db_url.clone();
    app.stop().await;

    sim.set_latency(latency);
    let mut settings = test_settings().await;
    fast(&mut settings);
    settings.database.url = Some(db.into());
    configure(&mut settings);
    let app = spawn_on_network(settings, Some(WhatsAppNetwork::Sandbox(sim))).await;
    let mut connected_at = Vec::new();
    for (id, mark) in ids.iter().zip(&marks) {
        let e = app.wait_event(&key, id, *mark, "session.connected").await;
        let at = chrono::DateTime::parse_from_rfc3339(e["at"].as_str().unwrap()).unwrap();
        connected_at.push(at);
    }
    connected_at.sort();
    (connected_at[3] - connected_at[0]).to_std().unwrap()
}

/// At boot, running sessions are resumed at `sessions.resume_per_second`, not all at once.
#[actix_web::test]
async fn a_restarted_gateway_resumes_its_sessions_at_the_configured_rate() {
    let spread = resume_spread("+1555000800", Duration::ZERO, |s| {
        s.sessions.resume_per_second = 2;
    })
    .await;
    // Four sessions at two a second: the last starts at least 1.5 s after the first.
    assert!(
        spread >= Duration::from_millis(1400),
        "resumed too fast: {spread:?}"
    );
}

/// Unthrottled, a resume still connects at most `sessions.resume_concurrency` sessions at a
/// time: with one at a time and every connection taking at least two 300 ms frames, four
/// sessions come up one after another.
#[actix_web::test]
async fn an_unthrottled_resume_connects_at_most_the_configured_number_at_once() {
    let spread = resume_spread("+1555000810", Duration::from_millis(300), |s| {
        s.sessions.resume_per_second = 0;
        s.sessions.resume_concurrency = 1;
    })
    .await;
    assert!(
        spread >= Duration::from_millis(1500),
        "sessions connected side by side: {spread:?}"
    );
}

#[actix_web::test]
async fn a_tier_change_moves_live_sessions_without_a_new_qr() {
    let app = spawn(|_| {}).await;
    let (tenant, key) = app.create_tenant("Acme", "professional").await;
    let id = app.new_session(&key, "mover").await;
    app.link(&key, &id, "+15550005005").await;
    let tree = app.get_json_as("/api/v1/admin/actors", ADMIN_KEY).await;
    assert!(pool(&tree, "professional").to_string().contains(&id));
    let mark = app.last_event_id(&key, &id).await;

    let res = app
        .patch(&format!("/api/v1/tenants/{tenant}"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"tier": "enterprise"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let moved = id.clone();
    app.wait_tree("the session in the enterprise pool, connected", |t| {
        pool(t, "enterprise").to_string().contains(&moved)
            && !pool(t, "professional").to_string().contains(&moved)
            && node(t, &moved).is_some_and(|(_, s)| s["status"] == "connected")
    })
    .await;
    let s = app.wait_status(&key, &id, "connected").await;
    assert_eq!(s["tier"], "enterprise");
    let after = kinds(&app.events(&key, &id, mark).await);
    assert!(
        after.contains(&"session.connected".to_string())
            && !after.contains(&"session.qr".to_string()),
        "{after:?}"
    );
    assert_eq!(app.sim().linked_devices("15550005005"), vec![1]);
}

#[actix_web::test]
async fn an_unscanned_qr_stops_and_an_unreachable_network_fails_the_session() {
    let app = spawn(|s| {
        s.sessions.qr_timeout_secs = 1;
        s.sessions.reconnect_max_attempts = 2;
    })
    .await;
    let (_t, key) = app.create_tenant("Acme", "professional").await;
    let idle = app.new_session(&key, "never scanned").await;
    app.post_as(&format!("/api/v1/sessions/{idle}/start"), &key)
        .await;
    let s = app
        .wait_for(&key, &idle, "the QR timeout", |s| {
            s["status"] == "stopped"
                && s["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("qr_timeout"))
        })
        .await;
    assert!(s.get("phone").is_none(), "{s}");
    let k = kinds(&app.events(&key, &idle, 0).await);
    assert_eq!(k.iter().filter(|k| *k == "session.qr").count(), 1, "{k:?}");
    assert!(k.contains(&"session.qr_timeout".to_string()), "{k:?}");

    let id = app.new_session(&key, "cut off").await;
    app.link(&key, &id, "+15550006006").await;
    let sim = app.sim();
    let reconnects = app.metric("wagate_session_reconnects_total").await;
    sim.refuse_connections_for(Duration::from_secs(60));
    app.post_as(&format!("/api/v1/sandbox/sessions/{id}/drop"), &key)
        .await;
    let s = app.wait_status(&key, &id, "failed").await;
    assert_eq!(s["reconnect_attempts"], 2);
    // Why it could not reconnect is on the session, not only in the logs: in the state it
    // reconnected in (its event carries the session's last_error) and in the final one.
    let why = |e: &Value| {
        e.as_str().is_some_and(|e| {
            e.contains("cannot reach WhatsApp") && e.contains("connection refused")
        })
    };
    assert!(why(&s["last_error"]), "{s}");
    let all = app.events(&key, &id, 0).await;
    let second = all
        .iter()
        .find(|e| e["type"] == "session.reconnecting" && e["data"]["attempt"] == 2)
        .expect("the second reconnect");
    assert!(why(&second["data"]["last_error"]), "{second}");
    let k = kinds(&app.events(&key, &id, 0).await);
    assert_eq!(
        k.iter().filter(|k| *k == "session.reconnecting").count(),
        2,
        "{k:?}"
    );
    assert!(k.contains(&"session.reconnect_failed".to_string()), "{k:?}");
    assert_eq!(
        app.metric("wagate_session_reconnects_total").await,
        reconnects + 2.0,
        "both reconnects counted"
    );
}

#[actix_web::test]
async fn nuking_a_tenant_stops_its_sessions_and_leaves_nothing() {
    let app = spawn(|_| {}).await;
    let (tenant, key) = app.create_tenant("Doomed", "standard").await;
    let (_other, other_key) = app.create_tenant("Bystander", "standard").await;
    let id = app.new_session(&key, "doomed").await;
    app.link(&key, &id, "+15550007007").await;
    let keep = app.new_session(&other_key, "kept").await;

    let res = app
        .post_as(&format!("/api/v1/admin/tenants/{tenant}/nuke"), ADMIN_KEY)
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["verified"], true, "{body}");
    assert!(
        body["deleted"]["session_keys"].as_i64().unwrap() > 0,
        "{body}"
    );
    for (k, v) in body["remaining"].as_object().unwrap() {
        assert_eq!(v, 0, "{k} left: {body}");
    }
    assert_eq!(app.sim().connections_of("15550007007"), 0);
    let res = app
        .get_as(&format!("/api/v1/sessions/{id}"), ADMIN_KEY)
        .await;
    assert_error(res, 404, "not_found").await;
    assert_error(
        app.get_as("/api/v1/sessions", &key).await,
        401,
        "unauthorized",
    )
    .await;
    let kept = app
        .get_json_as(&format!("/api/v1/sessions/{keep}"), &other_key)
        .await;
    assert_eq!(kept["name"], "kept");
    let res = app
        .post_as(&format!("/api/v1/admin/tenants/{tenant}/nuke"), ADMIN_KEY)
        .await;
    assert_error(res, 404, "not_found").await;
}

/// A simulated number linked to one tenant's session is that tenant's: another tenant can
/// neither link a session to it (which would make it a second device of the same account,
/// seeing all its messages) nor write from it; the first tenant may link more of its own.
#[actix_web::test]
async fn a_sandbox_number_belongs_to_the_tenant_that_linked_it() {
    let mut app = spawn(|_| {}).await;
    let (_a, key_a) = app.create_tenant("First", "professional").await;
    let (_b, key_b) = app.create_tenant("Second", "standard").await;
    const TAKEN: &str = "+15550008008";
    let a1 = app.new_session(&key_a, "first").await;
    app.link(&key_a, &a1, TAKEN).await;

    let b1 = app.new_session(&key_b, "second").await;
    let res = app
        .post_as(&format!("/api/v1/sessions/{b1}/start"), &key_b)
        .await;
    assert_eq!(res.status(), 202);
    app.wait_status(&key_b, &b1, "qr").await;
    let scan = |id: String, key: String, phone: &'static str| {
        app.post(&format!("/api/v1/sandbox/sessions/{id}/scan"))
            .bearer_auth(key)
            .json(&json!({ "phone": phone }))
            .send()
    };
    let res = scan(b1.clone(), key_b.clone(), TAKEN).await.unwrap();
    let err = assert_error(res, 409, "phone_in_use").await;
    assert!(
        err["error"]["message"].as_str().unwrap().contains(TAKEN),
        "{err}"
    );
    // The same refusal for the admin acting for B.
    let res = scan(b1.clone(), ADMIN_KEY.to_owned(), TAKEN).await.unwrap();
    assert_error(res, 409, "phone_in_use").await;
    assert_eq!(
        app.sim().linked_devices("15550008008"),
        vec![1],
        "no second device was linked"
    );
    assert_eq!(app.session(&key_b, &b1).await["status"], "qr");

    // B links a number of its own, then tries to write to it from A's number.
    let res = scan(b1.clone(), key_b.clone(), "+15550008018")
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    app.wait_status(&key_b, &b1, "connected").await;
    let res = app.sandbox_inbound(&key_b, &b1, TAKEN, "pretending").await;
    assert_error(res, 409, "phone_in_use").await;
    // From a number nobody linked, it works (the positive half of the check above).
    let res = app
        .sandbox_inbound(&key_b, &b1, "+15550008028", "hello")
        .await;
    assert_eq!(res.status(), 202);

    // A's second session may join its own number (a second linked device of one account).
    let a2 = app.new_session(&key_a, "first, again").await;
    app.link(&key_a, &a2, TAKEN).await;
    assert_eq!(app.sim().linked_devices("15550008008").len(), 2);
    app.stop().await;
}

/// Each sandbox refusal says why, with its own code.
#[actix_web::test]
async fn sandbox_routes_refuse_with_the_reason() {
    let mut app = spawn(|_| {}).await;
    let (_t, key) = app.create_tenant("Acme", "professional").await;
    let idle = app.new_session(&key, "never linked").await;
    let res = app.sandbox_inbound(&key, &idle, "+15550006101", "hi").await;
    assert_error(res, 409, "session_not_linked").await;
    let res = app
        .post_as(&format!("/api/v1/sandbox/sessions/{idle}/drop"), &key)
        .await;
    assert_error(res, 409, "session_not_linked").await;
    let res = app
        .post(&format!("/api/v1/sandbox/sessions/{idle}/scan"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_error(res, 409, "session_not_in_qr_state").await;

    // A QR the simulated phone cannot read: scan_failed.
    let res = app
        .post_as(&format!("/api/v1/sessions/{idle}/start"), &key)
        .await;
    assert_eq!(res.status(), 202);
    app.wait_status(&key, &idle, "qr").await;
    app.execute_sql(&format!(
        "UPDATE sessions SET qr_code = '2@not-a-ref,AAAA,BBBB,CCCC' WHERE id = '{idle}'"
    ))
    .await;
    let res = app
        .post(&format!("/api/v1/sandbox/sessions/{idle}/scan"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_error(res, 409, "scan_failed").await;

    // A linked session whose number the simulated network does not know: inbound_failed.
    let linked = app.new_session(&key, "linked").await;
    app.link(&key, &linked, "+15550006102").await;
    app.execute_sql(&format!(
        "UPDATE sessions SET phone = '+15550006199' WHERE id = '{linked}'"
    ))
    .await;
    let res = app
        .sandbox_inbound(&key, &linked, "+15550006103", "hi")
        .await;
    assert_error(res, 409, "inbound_failed").await;
    app.stop().await;
}

/// Deleting a linked session logs its device out of WhatsApp and deletes its keys; its
/// history stays unless `?purge=true`.
#[actix_web::test]
async fn deleting_a_linked_session_logs_it_out_and_purge_takes_its_history() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut app = spawn(|_| {}).await;
    let (_t, key) = app.create_tenant("Acme", "professional").await;
    let sim = app.sim();
    let mut db = AsyncPgConnection::establish(&app.db_url).await.unwrap();
    // Keys are stored under the session's id as their store id.
    let mut rows = async |table: &str, id: &str| -> i64 {
        let column = if table.starts_with("wa_store") {
            "store_id"
        } else {
            "session_id"
        };
        diesel::sql_query(format!(
            "SELECT count(*) AS n FROM {table} WHERE {column} = '{id}'"
        ))
        .get_result::<Count>(&mut db)
        .await
        .unwrap()
        .n
    };
    let mut sessions = Vec::new();
    for (name, phone) in [("kept", "+15550007101"), ("purged", "+15550007102")] {
        let id = app.new_session(&key, name).await;
        app.link(&key, &id, phone).await;
        let wa_id = sim
            .inject_text("+4915100000321", phone, "hello")
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !app
            .events(&key, &id, 0)
            .await
            .iter()
            .any(|e| e["data"]["wa_id"] == wa_id.as_str())
        {
            assert!(tokio::time::Instant::now() < deadline, "never received");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sessions.push((id, phone));
    }
    for (id, _) in &sessions {
        assert!(rows("messages", id).await > 0);
        assert_eq!(
            rows("wa_store_devices", id).await,
            1,
            "the device's keys are stored"
        );
    }
    let (kept, kept_phone) = sessions[0].clone();
    let (purged, purged_phone) = sessions[1].clone();
    let res = app
        .delete(&format!("/api/v1/sessions/{kept}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = app
        .delete(&format!("/api/v1/sessions/{purged}?purge=true"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    for (id, phone) in [(&kept, kept_phone), (&purged, purged_phone)] {
        assert_error(
            app.get_as(&format!("/api/v1/sessions/{id}"), &key).await,
            404,
            "not_found",
        )
        .await;
        assert!(
            sim.linked_devices(phone).is_empty(),
            "{phone}'s device was logged out"
        );
    }
    for (id, _) in &sessions {
        assert_eq!(rows("wa_store_devices", id).await, 0, "keys deleted");
        // A write the stopped client had in flight may land a moment later; none may stay.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while rows("wa_store_entries", id).await > 0 {
            assert!(tokio::time::Instant::now() < deadline, "keys left behind");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(rows("messages", &kept).await > 0, "history kept");
    assert!(rows("events", &kept).await > 0, "events kept");
    for table in ["messages", "events", "chats"] {
        assert_eq!(rows(table, &purged).await, 0, "{table} purged");
    }
    app.stop().await;
}

/// The owner moves the tenant between tiers through `/tier/upgrade|downgrade`: its live
/// session changes pools without a new QR, and a downgrade its sessions would not fit is
/// refused until one is gone.
#[actix_web::test]
async fn tier_upgrades_and_downgrades_move_live_sessions_between_pools() {
    let app = spawn(|_| {}).await;
    let (_tenant, key) = app.create_tenant("Acme", "standard").await;
    let id = app.new_session(&key, "mover").await;
    app.link(&key, &id, "+15550005015").await;
    let tree = app.get_json_as("/api/v1/admin/actors", ADMIN_KEY).await;
    assert!(pool(&tree, "standard").to_string().contains(&id));
    let mark = app.last_event_id(&key, &id).await;

    let res = app
        .post_json(
            &key,
            "/api/v1/tier/upgrade",
            json!({"tier": "professional"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let changed: Value = res.json().await.unwrap();
    assert_eq!(changed["sessions_moved"], 1, "{changed}");
    let moved = id.clone();
    app.wait_tree("the session in the professional pool, connected", |t| {
        pool(t, "professional").to_string().contains(&moved)
            && !pool(t, "standard").to_string().contains(&moved)
            && node(t, &moved).is_some_and(|(_, s)| s["status"] == "connected")
    })
    .await;

    // A second session: two do not fit standard's one.
    let extra = app.new_session(&key, "extra").await;
    let res = app
        .post_json(&key, "/api/v1/tier/downgrade", json!({"tier": "standard"}))
        .await;
    let err = assert_error(res, 409, "tier_does_not_fit").await;
    assert_eq!(err["error"]["details"]["quota"], "sessions");
    let res = app
        .delete(&format!("/api/v1/sessions/{extra}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = app
        .post_json(&key, "/api/v1/tier/downgrade", json!({"tier": "standard"}))
        .await;
    assert_eq!(res.status(), 200);
    app.wait_tree("the session back in the standard pool, connected", |t| {
        pool(t, "standard").to_string().contains(&moved)
            && !pool(t, "professional").to_string().contains(&moved)
            && node(t, &moved).is_some_and(|(_, s)| s["status"] == "connected")
    })
    .await;
    let s = app.wait_status(&key, &id, "connected").await;
    assert_eq!(s["tier"], "standard");
    let after = kinds(&app.events(&key, &id, mark).await);
    assert!(!after.contains(&"session.qr".to_string()), "{after:?}");
    assert_eq!(app.sim().linked_devices("15550005015"), vec![1]);
}
