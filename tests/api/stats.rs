//! Statistics, exports and reports from a known set of stored messages, receipts, agent
//! calls and webhook deliveries: every figure is checked against what that set must give,
//! in the tenant's time zone, before and after the rollup folded its deltas.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::ai::with_gemini;
use crate::helpers::{ADMIN_KEY, TestApp, assert_error, spawn_app, spawn_app_with};

const CHAT_A: &str = "+5511900000001";
const CHAT_B: &str = "+5511900000002";

impl TestApp {
    /// The tenant's time zone, for its statistics (and its automation).
    async fn set_time_zone(&self, key: &str, zone: &str) {
        let res = self
            .put("/api/v1/automation/settings")
            .bearer_auth(key)
            .json(&json!({"time_zone": zone}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "time zone {zone}");
    }
}

/// One stored message of the fixture.
struct Msg {
    id: Uuid,
    chat: &'static str,
    direction: &'static str,
    at: &'static str,
    key: Option<&'static str>,
    text: &'static str,
}

/// The fixture: a tenant in São Paulo (UTC−3, no daylight saving) whose day boundary falls
/// between its first messages, with receipts, three agent calls, a board and webhook
/// deliveries. Returns (tenant, key, session, messages).
async fn fixture(app: &TestApp) -> (Uuid, String, String, Vec<Msg>) {
    let (tenant, key) = app.create_tenant("stats", "standard").await;
    app.set_time_zone(&key, "America/Sao_Paulo").await;
    let session = app.new_session(&key, "stats").await;
    let msgs = vec![
        // 23:30 local on the 29th: a contact writes; a person answers 10 minutes later.
        Msg {
            id: Uuid::new_v4(),
            chat: CHAT_A,
            direction: "in",
            at: "2026-11-30T02:30:00Z",
            key: None,
            text: "hello",
        },
        Msg {
            id: Uuid::new_v4(),
            chat: CHAT_A,
            direction: "out",
            at: "2026-11-30T02:40:00Z",
            key: None,
            text: "hi, a person here",
        },
        // 00:10 local on the 30th: the agent answers in 30 s.
        Msg {
            id: Uuid::new_v4(),
            chat: CHAT_A,
            direction: "in",
            at: "2026-11-30T03:10:00Z",
            key: None,
            text: "price?",
        },
        Msg {
            id: Uuid::new_v4(),
            chat: CHAT_A,
            direction: "out",
            at: "2026-11-30T03:10:30Z",
            key: Some("wagate:ai:7:0"),
            text: "10 dollars",
        },
        // Chat B: two messages, one wait (from the first), a person answers in 5 minutes
        // (and that send fails), then once more (not a first response).
        Msg {
            id: Uuid::new_v4(),
            chat: CHAT_B,
            direction: "in",
            at: "2026-11-30T03:20:00Z",
            key: None,
            text: "hey",
        },
        Msg {
            id: Uuid::new_v4(),
            chat: CHAT_B,
            direction: "in",
            at: "2026-11-30T03:21:00Z",
            key: None,
            text: "anyone, \"there\"?",
        },
        Msg {
            id: Uuid::new_v4(),
            chat: CHAT_B,
            direction: "out",
            at: "2026-11-30T03:25:00Z",
            key: None,
            text: "yes,\nhere",
        },
        Msg {
            id: Uuid::new_v4(),
            chat: CHAT_B,
            direction: "out",
            at: "2026-11-30T03:26:00Z",
            key: None,
            text: "still here",
        },
    ];
    // One statement each, in time order, as the gateway stores them.
    for m in &msgs {
        app.execute_sql(&format!(
            "INSERT INTO messages (id, tenant_id, session_id, wa_id, direction, chat, own_phone, kind, \
               body, text, status, idempotency_key, created_at, updated_at) \
             VALUES ('{id}', '{tenant}', '{session}', '{wa}', '{dir}', '{chat}', '+5511999999999', 'text', \
               '{{}}', $${text}$$, '{status}', {key}, '{at}', '{at}')",
            id = m.id,
            wa = m.id.simple(),
            dir = m.direction,
            chat = m.chat,
            text = m.text,
            status = if m.direction == "in" { "received" } else { "queued" },
            key = m.key.map_or("NULL".to_owned(), |k| format!("'{k}'")),
            at = m.at,
        ))
        .await;
    }
    // Receipts, one statement per step as they arrive.
    let status = |i: usize, s: &str| {
        format!(
            "UPDATE messages SET status = '{s}' WHERE id = '{}'",
            msgs[i].id
        )
    };
    for sql in [
        status(1, "sent"),
        status(1, "delivered"),
        status(1, "read"),
        status(3, "sent"),
        status(3, "delivered"),
        status(6, "failed"),
        status(7, "sent"),
        // A repeated receipt changes nothing.
        status(3, "delivered"),
    ] {
        app.execute_sql(&sql).await;
    }
    // The agent: answers chat A, hands chat B over, then answers it too.
    let agent = app.create_agent(&key, json!({"name": "Desk"})).await;
    let agent = agent["id"].as_str().unwrap().to_owned();
    for (chat, kind, prompt, output, latency, at) in [
        (CHAT_A, "reply", 1000, 200, "800", "2026-11-30T03:10:20Z"),
        (CHAT_B, "handoff", 0, 0, "NULL", "2026-11-30T03:20:30Z"),
        (CHAT_B, "reply", 500, 100, "1200", "2026-11-30T03:22:00Z"),
    ] {
        app.execute_sql(&format!(
            "INSERT INTO ai_calls (id, tenant_id, session_id, chat, agent_id, kind, provider, model, \
               prompt_tokens, output_tokens, latency_ms, cached, created_at) \
             VALUES (gen_random_uuid(), '{tenant}', '{session}', '{chat}', '{agent}', '{kind}', \
               'gemini', NULL, {prompt}, {output}, {latency}, false, '{at}')"
        ))
        .await;
    }
    // Webhook deliveries: three delivered, one dead (none pending: no worker touches them).
    let hook = Uuid::new_v4();
    app.execute_sql(&format!(
        "INSERT INTO webhooks (id, tenant_id, url, secret, enabled) VALUES ('{hook}', '{tenant}', \
           'https://hooks.example.com/in', 'whsec_x', false)"
    ))
    .await;
    for (i, status) in ["delivered", "delivered", "delivered", "dead"]
        .iter()
        .enumerate()
    {
        app.execute_sql(&format!(
            "INSERT INTO webhook_deliveries (id, webhook_id, tenant_id, event_id, event_type, payload, \
               status, attempts, next_attempt_at, created_at) \
             VALUES ('msg_fixture_{i}', '{hook}', '{tenant}', {i}, 'message.received', '{{}}', \
               '{status}', 1, now(), '2026-11-30T03:0{i}:00Z')"
        ))
        .await;
    }
    (tenant, key, session, msgs)
}

fn period(from: &str, to: &str) -> String {
    format!("from={from}&to={to}")
}

/// Waits until the fold job has taken every delta in.
async fn folded(app: &TestApp) {
    let started = Instant::now();
    while app.count_sql("SELECT count(*) AS n FROM stat_deltas").await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the rollup's deltas were never folded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn known_messages_receipts_and_agent_calls_give_exact_figures_in_the_tenants_time_zone() {
    // The agent is never bound to a session: its model is never called.
    let app = spawn_app_with(|s| with_gemini(s, "http://127.0.0.1:9")).await;
    let (tenant, key, session, _) = fixture(&app).await;
    // Some deltas are waiting (the fixture was just written), and the figures are exact with
    // them and once they are folded.
    for pass in ["with deltas", "folded"] {
        if pass == "folded" {
            folded(&app).await;
            assert!(
                app.count_sql("SELECT count(*) AS n FROM stat_buckets")
                    .await
                    > 0
            );
        }
        let o = app
            .get_json_as(
                &format!(
                    "/api/v1/stats/overview?{}",
                    period("2026-11-29", "2026-11-30")
                ),
                &key,
            )
            .await;
        assert_eq!(o["time_zone"], "America/Sao_Paulo", "{pass}");
        assert_eq!(o["from"], "2026-11-29T03:00:00Z", "{pass}");
        assert_eq!(o["to"], "2026-12-01T03:00:00Z", "{pass}");
        let m = &o["messages"];
        assert_eq!(
            (&m["in"], &m["out"], &m["out_bot"], &m["out_human"]),
            (&json!(4), &json!(4), &json!(1), &json!(3)),
            "{pass}: {o}"
        );
        assert_eq!(
            (&m["failed"], &m["delivered"], &m["read"]),
            (&json!(1), &json!(2), &json!(1))
        );
        // Delivered of those not failed (2 of 3), read of delivered (1 of 2).
        assert_eq!(m["delivery_rate"], json!(0.6667));
        assert_eq!(m["read_rate"], json!(0.5));
        // People answered twice (10 min and 5 min), the agent once (30 s).
        let r = &o["first_response"];
        assert_eq!(r["human"], json!({"count": 2, "avg_ms": 450_000}), "{pass}");
        assert_eq!(r["bot"], json!({"count": 1, "avg_ms": 30_000}), "{pass}");
        let ai = &o["ai"];
        assert_eq!(
            (
                &ai["replies"],
                &ai["conversations"],
                &ai["handed_off"],
                &ai["contained"]
            ),
            (&json!(2), &json!(2), &json!(1), &json!(1))
        );
        assert_eq!(
            (&ai["containment_rate"], &ai["handoff_rate"]),
            (&json!(0.5), &json!(0.5))
        );
        assert_eq!(
            (&ai["prompt_tokens"], &ai["output_tokens"]),
            (&json!(1500), &json!(300))
        );
        // gemini-2.0-flash: 1500 × 0.10 + 300 × 0.40 per million.
        assert_eq!(ai["cost_usd"], json!(0.00027));
        assert_eq!(
            o["webhooks"],
            json!({"pending": 0, "delivered": 3, "dead": 1, "success_rate": 0.75})
        );
        assert_eq!(
            o["sessions"],
            json!({"total": 1, "by_status": {"stopped": 1}})
        );

        // By local day: the 29th ends at 03:00 UTC, after the first answer.
        let days = app
            .get_json_as(
                &format!(
                    "/api/v1/stats/messages?interval=day&{}",
                    period("2026-11-29", "2026-11-30")
                ),
                &key,
            )
            .await;
        let items = days["items"].as_array().unwrap();
        assert_eq!(items.len(), 2, "{days}");
        assert_eq!(items[0]["at"], "2026-11-29T03:00:00Z");
        assert_eq!(items[0]["local"], "2026-11-29T00:00:00-03:00");
        assert_eq!(
            (
                &items[0]["in"],
                &items[0]["out"],
                &items[0]["delivered"],
                &items[0]["read"]
            ),
            (&json!(1), &json!(1), &json!(1), &json!(1)),
            "{pass}: {days}"
        );
        assert_eq!(items[0]["first_response_human_avg_ms"], 600_000);
        assert_eq!(
            (
                &items[1]["in"],
                &items[1]["out"],
                &items[1]["out_bot"],
                &items[1]["failed"]
            ),
            (&json!(3), &json!(3), &json!(1), &json!(1)),
            "{pass}: {days}"
        );
        assert_eq!(items[1]["first_response_bot_avg_ms"], 30_000);
        assert_eq!(items[1]["first_response_human_avg_ms"], 300_000);
    }

    // Hourly, across the local midnight; one session's series is the same (it is the only one).
    for extra in ["".to_owned(), format!("&session_id={session}")] {
        let hours = app
            .get_json_as(
                &format!(
                    "/api/v1/stats/messages?interval=hour&from=2026-11-29T23:00:00-03:00&to=2026-11-30T02:00:00-03:00{extra}"
                ),
                &key,
            )
            .await;
        let items = hours["items"].as_array().unwrap();
        let counts: Vec<(i64, i64)> = items
            .iter()
            .map(|i| (i["in"].as_i64().unwrap(), i["out"].as_i64().unwrap()))
            .collect();
        assert_eq!(counts, vec![(1, 1), (3, 3), (0, 0)], "{hours}");
        assert_eq!(items[1]["local"], "2026-11-30T00:00:00-03:00");
    }

    // In India (UTC+05:30) the local hours start at half past the UTC hour: the quarter-hour
    // buckets regroup into them exactly (02:30Z–03:30Z is 08:00–09:00 there).
    app.set_time_zone(&key, "Asia/Kolkata").await;
    let hours = app
        .get_json_as(
            "/api/v1/stats/messages?interval=hour&from=2026-11-30T08:00:00%2B05:30&to=2026-11-30T10:00:00%2B05:30",
            &key,
        )
        .await;
    let items = hours["items"].as_array().unwrap();
    assert_eq!(items[0]["at"], "2026-11-30T02:30:00Z", "{hours}");
    assert_eq!(
        (&items[0]["in"], &items[0]["out"]),
        (&json!(4), &json!(4)),
        "{hours}"
    );
    assert_eq!((&items[1]["in"], &items[1]["out"]), (&json!(0), &json!(0)));

    // Per agent.
    let agents = app
        .get_json_as(
            &format!(
                "/api/v1/stats/agents?{}",
                period("2026-11-29", "2026-11-30")
            ),
            &key,
        )
        .await;
    let items = agents["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{agents}");
    assert_eq!(items[0]["name"], "Desk");
    assert_eq!(items[0]["model"], "gemini-2.0-flash");
    assert_eq!(
        (&items[0]["replies"], &items[0]["handed_off"]),
        (&json!(2), &json!(1))
    );
    assert_eq!(items[0]["avg_latency_ms"], 1000);
    assert_eq!(items[0]["cost_usd"], json!(0.00027));

    // The admin sees the system: this tenant's messages are in it; a tenant may not look.
    let system = app
        .get_json_as(
            "/api/v1/admin/stats?from=2026-11-30&to=2026-11-30",
            ADMIN_KEY,
        )
        .await;
    assert_eq!(system["messages"]["in"], 4, "{system}");
    assert_eq!(system["tenants_by_tier"]["standard"], 1);
    assert_error(
        app.get_as("/api/v1/admin/stats", &key).await,
        403,
        "forbidden",
    )
    .await;
    let _ = tenant;
}

#[actix_web::test]
async fn the_csv_export_and_a_report_parse_back_to_the_stored_rows() {
    let app = spawn_app_with(|s| with_gemini(s, "http://127.0.0.1:9")).await;
    let (_, key, session, msgs) = fixture(&app).await;
    let res = app
        .get_as(
            "/api/v1/stats/export?kind=messages&from=2026-11-29&to=2026-11-30",
            &key,
        )
        .await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let body = res.text().await.unwrap();
    assert!(body.contains("\r\n"), "RFC 4180 ends records with CRLF");
    let parsed = parse_csv(&body);
    assert_eq!(parsed[0][0], "id");
    assert_eq!(
        parsed.len(),
        msgs.len() + 1,
        "a header and every message: {body}"
    );
    for (row, m) in parsed[1..].iter().zip(&msgs) {
        assert_eq!(row[0], m.id.to_string());
        assert_eq!(row[1], session);
        assert_eq!(row[2], m.direction);
        assert_eq!(row[3], m.chat);
        // Quotes, commas and newlines come back as they were.
        assert_eq!(row[7], m.text);
        let by = match (m.direction, m.key) {
            ("in", _) => "contact",
            (_, Some(_)) => "bot",
            _ => "human",
        };
        assert_eq!(row[8], by);
    }
    assert_eq!(parsed[7][5], "failed");

    // The same as a report, generated in the background; and as JSON.
    let res = app
        .post_json(
            &key,
            "/api/v1/reports",
            json!({"kind": "messages", "from": "2026-11-29", "to": "2026-11-30"}),
        )
        .await;
    assert_eq!(res.status(), 202);
    let report: Value = res.json().await.unwrap();
    let id = report["id"].as_str().unwrap().to_owned();
    let done = wait_report(&app, &key, &id).await;
    assert_eq!(done["rows"], msgs.len());
    let res = app
        .get_as(&format!("/api/v1/reports/{id}/download"), &key)
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(parse_csv(&res.text().await.unwrap()), parsed);

    let res = app
        .post_json(
            &key,
            "/api/v1/reports",
            json!({"kind": "webhooks", "from": "2026-11-29", "to": "2026-11-30", "format": "json"}),
        )
        .await;
    let json_id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_report(&app, &key, &json_id).await;
    let rows: Value = app
        .get_as(&format!("/api/v1/reports/{json_id}/download"), &key)
        .await
        .json()
        .await
        .unwrap();
    let statuses: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["delivered", "delivered", "delivered", "dead"]);

    // Another tenant: 404 on the report and its file; a read-only key reads but may not ask.
    let (other_tenant, other) = app.create_tenant("other", "standard").await;
    for path in [
        format!("/api/v1/reports/{id}"),
        format!("/api/v1/reports/{id}/download"),
    ] {
        assert_error(app.get_as(&path, &other).await, 404, "not_found").await;
    }
    let listed = app.get_json_as("/api/v1/reports", &other).await;
    assert_eq!(listed["items"], json!([]));
    let export = app
        .get_as(
            "/api/v1/stats/export?kind=messages&from=2026-11-29&to=2026-11-30",
            &other,
        )
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(parse_csv(&export).len(), 1, "only the header: {export}");
    let viewer = app.read_only_key(other_tenant, &other).await;
    assert_eq!(
        app.get_as("/api/v1/stats/overview", &viewer).await.status(),
        200
    );
    let res = app
        .post_json(
            &viewer,
            "/api/v1/reports",
            json!({"kind": "messages", "from": "2026-11-29", "to": "2026-11-30"}),
        )
        .await;
    assert_error(res, 403, "forbidden").await;
    let listed = app.get_json_as("/api/v1/reports", &key).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
}

#[actix_web::test]
async fn bad_statistics_requests_are_named_400s() {
    let app = spawn_app().await;
    let (_, key) = app.create_tenant("bad", "standard").await;
    for (path, field) in [
        ("/api/v1/stats/messages?interval=week", "interval"),
        ("/api/v1/stats/messages?from=yesterday", "from"),
        (
            "/api/v1/stats/overview?from=2026-12-02&to=2026-12-01",
            "from",
        ),
        (
            "/api/v1/stats/overview?from=2020-01-01&to=2026-01-01",
            "from",
        ),
        (
            "/api/v1/stats/messages?interval=hour&from=2026-01-01&to=2026-12-01",
            "from",
        ),
        ("/api/v1/stats/export?kind=everything", "kind"),
    ] {
        let body = assert_error(app.get_as(path, &key).await, 400, "validation_failed").await;
        assert_eq!(body["error"]["details"]["field"], field, "{path}: {body}");
    }
    for (body, field) in [
        (
            json!({"kind": "messages", "from": "2026-11-01", "to": "2026-11-30", "format": "xls"}),
            "format",
        ),
        (
            json!({"kind": "sales", "from": "2026-11-01", "to": "2026-11-30"}),
            "kind",
        ),
        (
            json!({"kind": "messages", "from": "2026-11-30", "to": "2026-11-01"}),
            "from",
        ),
    ] {
        let res = app.post_json(&key, "/api/v1/reports", body).await;
        let body = assert_error(res, 400, "validation_failed").await;
        assert_eq!(body["error"]["details"]["field"], field, "{body}");
    }
    assert_error(
        app.get_as(&format!("/api/v1/reports/{}", Uuid::new_v4()), &key)
            .await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        app.get_as("/api/v1/reports/not-an-id/download", &key).await,
        404,
        "not_found",
    )
    .await;
}

async fn wait_report(app: &TestApp, key: &str, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let r = app.get_json_as(&format!("/api/v1/reports/{id}"), key).await;
        match r["status"].as_str() {
            Some("done") => return r,
            Some("failed") => panic!("the report failed: {r}"),
            _ => {}
        }
        if started.elapsed() > Duration::from_secs(30) {
            panic!("the report never finished: {r}");
        }
        // Not downloadable until done.
        if r["status"] != "done" {
            let res = app
                .get_as(&format!("/api/v1/reports/{id}/download"), key)
                .await;
            if res.status() == 409 {
                assert_error(res, 409, "report_not_ready").await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn parse_csv(body: &str) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(body.as_bytes())
        .records()
        .map(|r| r.expect("a CSV record").iter().map(str::to_owned).collect())
        .collect()
}

/// Messages of the last minute are in the realtime figures at once, and the system's
/// business figures reach `/metrics` (refreshed every few seconds) without any SQL.
#[actix_web::test]
async fn the_last_minute_is_realtime_and_business_figures_reach_prometheus() {
    let app = spawn_app().await;
    let (tenant, key) = app.create_tenant("live", "standard").await;
    let session = app.new_session(&key, "live").await;
    for (dir, key_sql, status) in [
        ("in", "NULL", "received"),
        ("out", "'wagate:auto:1:0'", "delivered"),
        ("out", "NULL", "read"),
    ] {
        app.execute_sql(&format!(
            "INSERT INTO messages (id, tenant_id, session_id, wa_id, direction, chat, own_phone, kind, \
               body, status, idempotency_key) \
             VALUES (gen_random_uuid(), '{tenant}', '{session}', gen_random_uuid()::text, '{dir}', \
               '+4915100000001', '+4915100000000', 'text', '{{}}', '{status}', {key_sql})"
        ))
        .await;
    }
    let r = app.get_json_as("/api/v1/stats/realtime", &key).await;
    assert_eq!(
        (&r["in"], &r["out"], &r["active_chats"], &r["window_secs"]),
        (&json!(1), &json!(2), &json!(1), &json!(60)),
        "{r}"
    );
    let started = Instant::now();
    loop {
        let text = app.metrics_text().await;
        let sample = |s: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(s)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
        };
        let got = (
            sample("wagate_business_messages_today{kind=\"in\"}"),
            sample("wagate_business_messages_today{kind=\"out_bot\"}"),
            sample("wagate_business_messages_today{kind=\"delivered\"}"),
            sample("wagate_business_rate{rate=\"read\"}"),
            sample("wagate_business_tenants{tier=\"standard\"}"),
        );
        if got == (Some(1.0), Some(1.0), Some(2.0), Some(0.5), Some(1.0)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the business gauges never showed the messages: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Local days and hours follow daylight-saving changes: Berlin's 25 October 2026 lasts 25
/// hours, and its series has every local hour once.
#[actix_web::test]
async fn local_days_follow_daylight_saving_changes() {
    let app = spawn_app().await;
    let (_, key) = app.create_tenant("berlin", "standard").await;
    app.set_time_zone(&key, "Europe/Berlin").await;
    let days = app
        .get_json_as(
            "/api/v1/stats/messages?interval=day&from=2026-10-24&to=2026-10-26",
            &key,
        )
        .await;
    let at: Vec<&str> = days["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["at"].as_str().unwrap())
        .collect();
    assert_eq!(
        at,
        [
            "2026-10-23T22:00:00Z",
            "2026-10-24T22:00:00Z",
            "2026-10-25T23:00:00Z"
        ],
        "{days}"
    );
    let hours = app
        .get_json_as(
            "/api/v1/stats/messages?interval=hour&from=2026-10-25&to=2026-10-25",
            &key,
        )
        .await;
    let items = hours["items"].as_array().unwrap();
    assert_eq!(items.len(), 25, "{hours}");
    // 02:00 comes twice: once in summer time, once in winter time.
    let locals: Vec<&str> = items.iter().map(|i| i["local"].as_str().unwrap()).collect();
    assert!(locals.contains(&"2026-10-25T02:00:00+02:00"), "{locals:?}");
    assert!(locals.contains(&"2026-10-25T02:00:00+01:00"), "{locals:?}");
}
