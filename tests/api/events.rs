//! `GET /api/v1/events` over a real WebSocket: replay then live with no gap or duplicate,
//! filters, auth, tenant isolation, and a consumer too slow to keep up.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::helpers::{ADMIN_KEY, Emit, TestApp, assert_error, spawn_app_with};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

const WAIT: Duration = Duration::from_secs(20);

impl TestApp {
    pub(crate) async fn connect(&self, query: &str, key: Option<&str>) -> Ws {
        let url = format!("ws://127.0.0.1:{}/api/v1/events{query}", self.port);
        let mut req = url.into_client_request().unwrap();
        if let Some(key) = key {
            req.headers_mut()
                .insert("authorization", format!("Bearer {key}").parse().unwrap());
        }
        connect_async(req).await.expect("websocket").0
    }
}

/// The next event on the stream (pings are answered by the client library).
pub(crate) async fn next_event(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// Returns once the connection's subscription is in place: a ping sent after the upgrade is
/// answered only after the stream has subscribed.
pub(crate) async fn subscribed(ws: &mut Ws) {
    ws.send(Message::Ping(vec![1].into())).await.unwrap();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        if let Some(Ok(Message::Pong(_))) = msg {
            return;
        }
        assert!(matches!(msg, Some(Ok(_))), "stream ended: {msg:?}");
    }
}

async fn ids(ws: &mut Ws, n: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_event(ws).await["id"].as_i64().unwrap());
    }
    out
}

#[actix_web::test]
async fn the_stream_replays_then_goes_live_with_no_gap_or_duplicate() {
    let app = spawn_app_with(|s| s.rate_limit.enabled = false).await;
    let (tenant, key) = app.create_tenant("Acme", "standard").await;
    assert_eq!(
        app.emit_events(tenant, 5, Emit::default()).await,
        [1, 2, 3, 4, 5]
    );

    // Replay after 2, then live.
    let mut ws = app.connect("?since=2", Some(&key)).await;
    assert_eq!(ids(&mut ws, 3).await, [3, 4, 5]);
    app.emit_events(tenant, 3, Emit::default()).await;
    let first = next_event(&mut ws).await;
    assert_eq!(first["id"], 6);
    assert_eq!(first["type"], "error");
    assert_eq!(first["tenant_id"], tenant.to_string());
    assert!(first["at"].is_string() && first["data"]["n"] == 0);
    assert_eq!(ids(&mut ws, 2).await, [7, 8]);
    drop(ws);

    // Connecting while a burst is being stored: replay and live meet with every id once.
    let burst = {
        let app_url = app.address.clone();
        let client = app.client.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                client
                    .post(format!("{app_url}/__test/admin/tenants/{tenant}/events"))
                    .bearer_auth(ADMIN_KEY)
                    .json(&json!({"count": 10}))
                    .send()
                    .await
                    .unwrap();
            }
        })
    };
    let mut ws = app.connect("?since=8", Some(&key)).await;
    let got = ids(&mut ws, 200).await;
    burst.await.unwrap();
    assert_eq!(got, (9..=208).collect::<Vec<_>>());

    // Without `since`: only what happens from now on.
    let mut live = app.connect("", Some(&key)).await;
    // The subscription is in place once a ping round trip went through.
    subscribed(&mut live).await;
    app.emit_events(tenant, 1, Emit::default()).await;
    assert_eq!(next_event(&mut live).await["id"], 209);
}

#[actix_web::test]
async fn streams_filter_authenticate_and_isolate_tenants() {
    let app = spawn_app_with(|s| s.rate_limit.enabled = false).await;
    let (tenant_a, key_a) = app.create_tenant("Acme", "professional").await;
    let (tenant_b, key_b) = app.create_tenant("Globex", "standard").await;
    let s1 = app.new_session(&key_a, "one").await;
    let s2 = app.new_session(&key_a, "two").await;
    app.emit_events(
        tenant_a,
        2,
        Emit {
            session: Some(s1.as_str()),
            ..Emit::default()
        },
    )
    .await;
    app.emit_events(
        tenant_a,
        2,
        Emit {
            session: Some(s2.as_str()),
            ..Emit::default()
        },
    )
    .await;
    app.emit_events(tenant_b, 3, Emit::default()).await;

    // A session filter, and a JWT in the query instead of a header.
    let token = app
        .post("/api/v1/auth/token")
        .json(&json!({"api_key": key_a}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ws = app
        .connect(&format!("?since=0&session_id={s2}&token={token}"), None)
        .await;
    let e = next_event(&mut ws).await;
    assert_eq!(
        (e["id"].as_i64(), e["session_id"].as_str()),
        (Some(3), Some(s2.as_str()))
    );
    assert_eq!(next_event(&mut ws).await["id"], 4);
    // Type filter: nothing of another type gets through, the wanted type does. An event of
    // another type, then one of the wanted type: the first the stream yields is the second.
    let mut typed = app
        .connect("?since=0&types=message.received", Some(&key_a))
        .await;
    app.emit_events(tenant_a, 1, Emit::default()).await;
    let wanted = app.emit_event_of(tenant_a, "message.received").await;
    let first = next_event(&mut typed).await;
    assert_eq!(
        (first["id"].as_i64(), first["type"].as_str()),
        (Some(wanted), Some("message.received")),
        "no event of another type came first: {first}"
    );

    // Tenant B sees only its own events, and not A's sessions.
    let mut b = app.connect("?since=0", Some(&key_b)).await;
    let got: Vec<Value> = vec![
        next_event(&mut b).await,
        next_event(&mut b).await,
        next_event(&mut b).await,
    ];
    assert!(got.iter().all(|e| e["tenant_id"] == tenant_b.to_string()));
    assert_eq!(got[2]["id"], 3);

    // Refusals happen before the upgrade, as JSON.
    let ws_get = |query: String, key: Option<String>| {
        let mut req = app
            .get(&format!("/api/v1/events{query}"))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send()
    };
    assert_error(
        ws_get(format!("?session_id={s1}"), Some(key_b.clone()))
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_error(
        ws_get(String::new(), None).await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    assert_error(
        ws_get("?since=-1".into(), Some(key_a.clone()))
            .await
            .unwrap(),
        400,
        "validation_failed",
    )
    .await;
    assert_error(
        ws_get("?session_id=nope".into(), Some(key_a.clone()))
            .await
            .unwrap(),
        400,
        "validation_failed",
    )
    .await;
    assert_error(
        ws_get(String::new(), Some(ADMIN_KEY.into())).await.unwrap(),
        400,
        "validation_failed",
    )
    .await;
    // The seed's path serves the same stream.
    let url = format!(
        "ws://127.0.0.1:{}/api/whatsapp/events?since=0&token={token}",
        app.port
    );
    let (mut compat, _) = connect_async(url).await.unwrap();
    assert_eq!(next_event(&mut compat).await["id"], 1);
}

#[actix_web::test]
async fn a_consumer_that_stops_reading_is_closed_with_a_reason_not_buffered() {
    let app = spawn_app_with(|s| s.rate_limit.enabled = false).await;
    let (tenant, key) = app.create_tenant("Acme", "standard").await;
    let dropped_before = app.metric("wagate_event_subscribers_dropped_total").await;
    let mut ws = app.connect("", Some(&key)).await;
    subscribed(&mut ws).await;
    // The client reads nothing while ~40 MB of events are published: far more than the
    // socket buffers and the per-connection buffer hold.
    let total = 2500;
    for _ in 0..25 {
        app.emit_events(
            tenant,
            total / 25,
            Emit {
                size: 16 * 1024,
                ..Emit::default()
            },
        )
        .await;
    }
    // Reading now: some events, then a close frame that says why, long before all of them.
    let mut events = 0;
    let reason = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(_))) => events += 1,
            Some(Ok(Message::Close(Some(frame)))) => break frame.reason.to_string(),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?} after {events} events"),
        }
    };
    assert!(reason.starts_with("slow_consumer"), "{reason}");
    assert!(events < total, "{events} of {total} events were buffered");
    assert_eq!(
        app.metric("wagate_event_subscribers_dropped_total").await,
        dropped_before + 1.0,
        "dropped subscriber counted"
    );
}

#[actix_web::test]
async fn with_redis_an_event_stored_on_one_node_reaches_subscribers_on_another() {
    let redis = crate::redis_fallback::RedisServer::start();
    let mut settings = crate::helpers::test_settings().await;
    settings.rate_limit.enabled = false;
    settings.redis.url = Some(secrecy::SecretString::from(redis.url()));
    let mut a_settings = settings.clone();
    a_settings.sessions.node_id = Some("node-a".into());
    let mut b_settings = settings;
    b_settings.sessions.node_id = Some("node-b".into());
    let a = crate::helpers::spawn_with_settings(a_settings).await;
    let b = crate::helpers::spawn_with_settings(b_settings).await;
    let (tenant, key) = a.create_tenant("Acme", "standard").await;

    let mut on_b = b.connect("", Some(&key)).await;
    subscribed(&mut on_b).await;
    // Node B's relay listener subscribes to Redis in the background: publish until it is in
    // place, then every event arrives once and in order.
    let deadline = tokio::time::Instant::now() + WAIT;
    let first = loop {
        let id = a.emit_events(tenant, 1, Emit::default()).await[0];
        if let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(300), on_b.next()).await
        {
            break (id, serde_json::from_str::<Value>(&t).unwrap());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no event crossed nodes"
        );
    };
    assert_eq!(first.1["tenant_id"], tenant.to_string());
    // An event published before B listened is filled in from the store (the gap): read up
    // to the last one emitted.
    let mut last = first.1["id"].as_i64().unwrap();
    while last < first.0 {
        let next = next_event(&mut on_b).await["id"].as_i64().unwrap();
        assert_eq!(next, last + 1, "in order, once");
        last = next;
    }
    let more = a.emit_events(tenant, 3, Emit::default()).await;
    let got = ids(&mut on_b, 3).await;
    assert_eq!(got, more);
    assert!(got[0] > first.0);
}

/// The stream's heartbeats: a client's ping is answered with its own payload, and the server
/// pings a quiet client by itself (every 10 s), so dead connections are found from both ends.
#[actix_web::test]
async fn the_event_stream_answers_pings_and_pings_on_its_own() {
    let app = spawn_app_with(|_| {}).await;
    let (_tenant, key) = app.create_tenant("Acme", "standard").await;
    let mut ws = app.connect("", Some(&key)).await;
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Pong(payload))) => {
                assert_eq!(&payload[..], b"are you there");
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("no pong: {other:?}"),
        }
    }
    let deadline = wagate::events::ws::HEARTBEAT_INTERVAL + Duration::from_secs(5);
    loop {
        match tokio::time::timeout(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => break,
            Ok(Some(Ok(_))) => {}
            other => panic!("the server never pinged: {other:?}"),
        }
    }
}

/// Reads until the server's close frame; its reason.
async fn close_reason(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => return frame.reason.to_string(),
            Some(Ok(Message::Close(None))) | None => return String::new(),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("stream failed before its close frame: {e}"),
        }
    }
}

/// A stream lives no longer than its credential: revoking the key, deleting the tenant or
/// the token's expiry closes it with the reason, while other connections stream on.
#[actix_web::test]
async fn a_stream_closes_when_its_key_is_revoked_its_tenant_deleted_or_its_token_expires() {
    let app = spawn_app_with(|s| {
        s.rate_limit.enabled = false;
        s.auth.jwt_ttl_secs = 3;
    })
    .await;
    let (tenant, key) = app.create_tenant("Acme", "standard").await;
    let created: Value = app
        .post(&format!("/api/v1/tenants/{tenant}/api-keys"))
        .bearer_auth(&key)
        .json(&json!({"name": "dashboard", "role": "read_only"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (second, second_id) = (
        created["key"].as_str().unwrap().to_owned(),
        created["id"].as_str().unwrap().to_owned(),
    );
    let mut revoked = app.connect("", Some(&second)).await;
    let mut kept = app.connect("", Some(&key)).await;
    subscribed(&mut revoked).await;
    subscribed(&mut kept).await;
    let id = app.emit_event_of(tenant, "session.connected").await;
    assert_eq!(
        next_event(&mut revoked).await["id"],
        id,
        "streams before the revocation"
    );
    assert_eq!(next_event(&mut kept).await["id"], id);

    let res = app
        .delete(&format!("/api/v1/tenants/{tenant}/api-keys/{second_id}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let since = tokio::time::Instant::now();
    let reason = close_reason(&mut revoked).await;
    assert!(reason.starts_with("credential_revoked"), "{reason}");
    assert!(
        since.elapsed() < Duration::from_secs(6),
        "closed after {:?}",
        since.elapsed()
    );
    let id = app.emit_event_of(tenant, "session.connected").await;
    assert_eq!(
        next_event(&mut kept).await["id"],
        id,
        "the other key streams on"
    );

    // A token: the stream closes at its expiry.
    let token: Value = app
        .post("/api/v1/auth/token")
        .json(&json!({"api_key": key}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    let mut by_token = app.connect(&format!("?token={token}"), None).await;
    subscribed(&mut by_token).await;
    let reason = close_reason(&mut by_token).await;
    assert!(reason.starts_with("token_expired"), "{reason}");

    // Deleting the tenant closes its streams.
    let res = app
        .delete(&format!("/api/v1/tenants/{tenant}"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let reason = close_reason(&mut kept).await;
    assert!(reason.starts_with("credential_revoked"), "{reason}");
}
