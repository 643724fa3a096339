//! Automation through HTTP against real Postgres: validation that names the step, the dry
//! run (priority, `continue`, regexes, time windows in the tenant's zone) sending nothing,
//! flows run by the TriggerActor (`http_request` to a local server and refused by the egress
//! policy, branches on variables, waits, cancel), bot control, and tenant isolation.

use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{header_exists, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{TestApp, assert_error, spawn_app, spawn_app_with};

const WAIT: Duration = Duration::from_secs(20);

impl TestApp {
    pub(crate) async fn create_flow(&self, key: &str, body: Value) -> Value {
        let res = self.post_json(key, "/api/v1/flows", body).await;
        let status = res.status();
        let v: Value = res.json().await.unwrap();
        assert_eq!(status, 201, "{v}");
        v
    }

    pub(crate) async fn create_trigger(&self, key: &str, body: Value) -> Value {
        let res = self.post_json(key, "/api/v1/triggers", body).await;
        let status = res.status();
        let v: Value = res.json().await.unwrap();
        assert_eq!(status, 201, "{v}");
        v
    }

    /// Waits until the execution's status is `status`; returns it with its steps.
    pub(crate) async fn wait_execution(&self, key: &str, id: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let e = self
                .get_json_as(&format!("/api/v1/executions/{id}"), key)
                .await;
            if e["status"] == status {
                return e;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the execution never became {status}: {e}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn error_of(res: reqwest::Response, status: u16) -> Value {
    assert_error(res, status, "validation_failed").await
}

#[actix_web::test]
async fn a_flow_that_cannot_run_is_refused_naming_the_step() {
    let app = spawn_app().await;
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let cases = [
        (
            json!([{"id": "hello", "type": "send_text", "text": "Hi {{nickname}}"}]),
            "steps[0]",
            "unknown variable \"nickname\"",
        ),
        (
            json!([{"id": "a", "type": "send_text", "text": "x", "next": "b"}, {"id": "c", "type": "end"}]),
            "steps[0]",
            "unknown step \"b\"",
        ),
        (
            json!([{"id": "a", "type": "end"}, {"id": "orphan", "type": "send_text", "text": "x"}]),
            "steps[1]",
            "no step leads to it",
        ),
        (
            json!([
                {"id": "ask", "type": "send_text", "text": "again?"},
                {"id": "loop", "type": "branch", "conditions": [{"field": "text", "op": "contains", "value": "x"}], "then": "ask", "else": "done"},
                {"id": "done", "type": "end"}
            ]),
            "steps[0]",
            "cycle",
        ),
        (
            json!([{"id": "check", "type": "branch", "conditions": [{"field": "answer", "op": "equals", "value": "yes"}], "then": "check2", "else": "check2"}, {"id": "check2", "type": "end"}]),
            "steps[0]",
            "unknown variable \"answer\"",
        ),
        (
            json!([{"id": "card", "type": "create_card"}]),
            "steps[0]",
            "board_id is required",
        ),
        (
            json!([{"id": "fn", "type": "run_function"}]),
            "steps[0]",
            "arrives with user functions",
        ),
        (
            json!([{"id": "x", "type": "branch", "conditions": [{"field": "text", "op": "regex", "value": "(unclosed"}], "then": "x"}]),
            "steps[0]",
            "conditions[0].value",
        ),
    ];
    for (steps, field, needle) in cases {
        let res = app
            .post_json(&key, "/api/v1/flows", json!({"name": "f", "steps": steps}))
            .await;
        let body = error_of(res, 400).await;
        assert_eq!(body["error"]["details"]["field"], field, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message} should say {needle}");
    }
    // Triggers too: the bad part of a condition, the event, a schedule without a target.
    let flow = app
        .create_flow(
            &key,
            json!({"name": "f", "steps": [{"id": "a", "type": "end"}]}),
        )
        .await;
    for (body, field) in [
        (
            json!({"name": "t", "event": "message.received", "reply_text": "x", "conditions": [{"field": "text", "op": "regex", "value": "(("}]}),
            "conditions[0].value",
        ),
        (
            json!({"name": "t", "event": "message.received", "reply_text": "x", "conditions": [{"field": "mood", "op": "equals", "value": "x"}]}),
            "conditions[0].field",
        ),
        (
            json!({"name": "t", "event": "message.typed", "reply_text": "x"}),
            "event",
        ),
        (json!({"name": "t", "event": "message.received"}), "flow_id"),
        (
            json!({"name": "t", "event": "message.received", "reply_text": "Hi {{boss}}"}),
            "reply_text",
        ),
        (
            json!({"name": "t", "event": "schedule", "schedule": "0 9 * * *", "flow_id": flow["id"]}),
            "chat",
        ),
        (
            json!({"name": "t", "event": "schedule", "schedule": "every day", "flow_id": flow["id"]}),
            "schedule",
        ),
    ] {
        let body = error_of(app.post_json(&key, "/api/v1/triggers", body).await, 400).await;
        assert_eq!(body["error"]["details"]["field"], field, "{body}");
    }
    assert_eq!(
        app.count_sql("SELECT count(*) AS n FROM triggers").await,
        0,
        "nothing bad was stored"
    );
}

#[actix_web::test]
async fn the_dry_run_explains_priority_continue_regex_and_time_and_sends_nothing() {
    let app = spawn_app().await;
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let session = app.new_session(&key, "front").await;
    // The tenant lives in Tokyo: 01:00 UTC is 10:00 there, inside office hours.
    let res = app
        .put("/api/v1/automation/settings")
        .bearer_auth(&key)
        .json(&json!({"time_zone": "Asia/Tokyo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let flow = app
        .create_flow(
            &key,
            json!({"name": "menu", "steps": [
                {"id": "hi", "type": "send_text", "text": "Hello {{contact_name}}! You said: {{text}}"},
                {"id": "wait", "type": "wait_for_reply", "timeout_secs": 600, "variable": "choice"},
                {"id": "end", "type": "end"}
            ]}),
        )
        .await;
    let office = app
        .create_trigger(
            &key,
            json!({"name": "office hours order", "event": "message.received", "priority": 10,
                   "conditions": [
                       {"field": "text", "op": "regex", "value": "^order\\s+#?\\d+$"},
                       {"field": "time_of_day", "op": "between", "value": ["09:00", "18:00"]}
                   ],
                   "flow_id": flow["id"], "continue": true}),
        )
        .await;
    let log = app
        .create_trigger(
            &key,
            json!({"name": "any order", "event": "message.received", "priority": 5,
                   "conditions": [{"field": "text", "op": "contains", "value": "ORDER"}],
                   "reply_text": "Noted, {{phone}}."}),
        )
        .await;
    let never = app
        .create_trigger(
            &key,
            json!({"name": "after the first", "event": "message.received", "priority": 1,
                   "conditions": [], "reply_text": "never"}),
        )
        .await;
    let test = |text: &str, at: &str| json!({"session_id": session, "chat": "+4915550001111", "text": text, "at": at});
    let res = app
        .post_json(
            &key,
            "/api/v1/triggers/test",
            test("Order #1234", "2026-12-03T01:00:00Z"),
        )
        .await;
    assert_eq!(res.status(), 200);
    let t: Value = res.json().await.unwrap();
    let verdicts = t["triggers"].as_array().unwrap();
    assert_eq!(verdicts.len(), 3, "{t}");
    assert_eq!(
        verdicts[0]["trigger_id"], office["id"],
        "highest priority first"
    );
    assert_eq!(verdicts[0]["fires"], true);
    assert_eq!(verdicts[1]["trigger_id"], log["id"]);
    assert_eq!(verdicts[1]["fires"], true, "the first said continue");
    assert_eq!(verdicts[2]["trigger_id"], never["id"]);
    assert_eq!(verdicts[2]["fires"], false);
    assert!(
        verdicts[2]["reason"]
            .as_str()
            .unwrap()
            .contains("any order"),
        "{t}"
    );
    assert_eq!(t["handled"], true);
    assert_eq!(t["first_message"], true);
    let would = t["would"].as_array().unwrap();
    assert_eq!(would[0]["sends"], json!(["Hello ! You said: Order #1234"]));
    assert!(would[0]["stops_at"].as_str().unwrap().contains("\"wait\""));
    assert_eq!(would[1]["sends"], json!(["Noted, +4915550001111."]));

    // 12:00 UTC is 21:00 in Tokyo: outside office hours, the regex still matches.
    let t: Value = app
        .post_json(
            &key,
            "/api/v1/triggers/test",
            test("order 77", "2026-12-03T12:00:00Z"),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(t["triggers"][0]["matched"], false);
    assert_eq!(t["triggers"][0]["conditions"], json!([true, false]));
    assert!(
        t["triggers"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("conditions[1]")
    );
    assert_eq!(t["triggers"][1]["fires"], true);
    assert_eq!(t["triggers"][2]["fires"], false);

    // Nothing was sent, stored or started.
    assert_eq!(app.count_sql("SELECT count(*) AS n FROM messages").await, 0);
    assert_eq!(
        app.count_sql("SELECT count(*) AS n FROM flow_executions")
            .await,
        0
    );
    assert_eq!(
        app.count_sql("SELECT COALESCE(sum(fired), 0)::bigint AS n FROM triggers")
            .await,
        0
    );
}

#[actix_web::test]
async fn a_flow_calls_a_local_server_and_branches_on_its_answer() {
    let shop = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/orders/+4915550002222"))
        .and(header_exists("idempotency-key"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"status": "shipped", "eta": "Friday"})),
        )
        .mount(&shop)
        .await;
    let app = spawn_app_with(|s| s.egress.allow_private_targets = true).await;
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let session = app.new_session(&key, "front").await;
    // The answer's fields become variables; the branch reads one.
    let flow2 = app
        .create_flow(
            &key,
            json!({"name": "order status 2", "steps": [
                {"id": "lookup", "type": "http_request", "url": format!("{}/orders/{{{{phone}}}}", shop.uri()), "variable": "order"},
                {"id": "keep", "type": "set_variable", "name": "state", "value": "{{order.body.status}}"},
                {"id": "shipped?", "type": "branch", "conditions": [{"field": "state", "op": "equals", "value": "SHIPPED"}], "then": "yes", "else": "no"},
                {"id": "yes", "type": "set_variable", "name": "verdict", "value": "arrives {{order.body.eta}}", "next": "done"},
                {"id": "no", "type": "set_variable", "name": "verdict", "value": "not yet"},
                {"id": "done", "type": "end"}
            ]}),
        )
        .await;
    let exec: Value = app
        .post_json(
            &key,
            &format!("/api/v1/flows/{}/execute", flow2["id"].as_str().unwrap()),
            json!({"session_id": session, "chat": "+4915550002222"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let done = app
        .wait_execution(&key, exec["id"].as_str().unwrap(), "completed")
        .await;
    assert_eq!(done["variables"]["verdict"], "arrives Friday", "{done}");
    assert_eq!(done["variables"]["order"]["status"], 200);
    let steps: Vec<&str> = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step_id"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["lookup", "keep", "shipped?", "yes", "done"]);
    assert_eq!(shop.received_requests().await.unwrap().len(), 1);
    let events = app
        .count_sql("SELECT count(*) AS n FROM events WHERE kind = 'flow.execution'")
        .await;
    assert!(events >= 2, "flow.execution events were written");
}

#[actix_web::test]
async fn http_requests_to_private_addresses_fail_the_step_when_the_policy_forbids_them() {
    let shop = MockServer::start().await;
    let app = spawn_app().await;
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let session = app.new_session(&key, "front").await;
    let flow = app
        .create_flow(
            &key,
            json!({"name": "f", "steps": [
                {"id": "call", "type": "http_request", "method": "POST", "url": format!("{}/hook", shop.uri()), "body": {"a": 1}},
                {"id": "after", "type": "end"}
            ]}),
        )
        .await;
    let exec: Value = app
        .post_json(
            &key,
            &format!("/api/v1/flows/{}/execute", flow["id"].as_str().unwrap()),
            json!({"session_id": session, "chat": "+4915550003333"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let failed = app
        .wait_execution(&key, exec["id"].as_str().unwrap(), "failed")
        .await;
    assert!(
        failed["error"].as_str().unwrap().contains("egress"),
        "{failed}"
    );
    assert_eq!(failed["steps"][0]["step_id"], "call");
    assert_eq!(failed["steps"][0]["outcome"], "failed");
    assert!(
        shop.received_requests().await.unwrap().is_empty(),
        "never called"
    );
    assert!(
        app.metric("wagate_flow_executions_total{outcome=\"failed\"}")
            .await
            >= 1.0
    );
}

#[actix_web::test]
async fn a_waiting_execution_is_cancelled_and_stop_cancels_a_sessions_executions() {
    let app = spawn_app().await;
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let session = app.new_session(&key, "front").await;
    let flow = app
        .create_flow(
            &key,
            json!({"name": "slow", "steps": [
                {"id": "nap", "type": "wait", "seconds": 3600},
                {"id": "after", "type": "end"}
            ]}),
        )
        .await;
    let start = || async {
        let e: Value = app
            .post_json(
                &key,
                &format!("/api/v1/flows/{}/execute", flow["id"].as_str().unwrap()),
                json!({"session_id": session, "chat": "+4915550004444"}),
            )
            .await
            .json()
            .await
            .unwrap();
        e["id"].as_str().unwrap().to_owned()
    };
    let one = start().await;
    let waiting = app.wait_execution(&key, &one, "waiting").await;
    assert!(waiting["resumes_at"].is_string());
    let res = app
        .post_json(
            &key,
            &format!("/api/v1/executions/{one}/cancel"),
            json!(null),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_error(
        app.post_json(
            &key,
            &format!("/api/v1/executions/{one}/cancel"),
            json!(null),
        )
        .await,
        409,
        "execution_finished",
    )
    .await;

    let two = start().await;
    app.wait_execution(&key, &two, "waiting").await;
    let bot: Value = app
        .post_json(
            &key,
            &format!("/api/v1/sessions/{session}/bot/stop"),
            json!(null),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(bot["state"], "stopped");
    assert_eq!(bot["running_executions"], 0);
    assert_eq!(
        app.get_json_as(&format!("/api/v1/executions/{two}"), &key)
            .await["status"],
        "cancelled"
    );
    // Pause until a time, then resume.
    let bot: Value = app
        .post_json(
            &key,
            &format!("/api/v1/sessions/{session}/bot/pause"),
            json!({"until": "2099-01-01T00:00:00Z", "reason": "holidays"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(bot["state"], "paused");
    assert_eq!(bot["reason"], "holidays");
    let bot: Value = app
        .post_json(
            &key,
            &format!("/api/v1/sessions/{session}/bot/resume"),
            json!(null),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(bot["state"], "active");
    let overview = app
        .get_json_as(
            "/api/v1/admin/bots?inactive_days=1",
            crate::helpers::ADMIN_KEY,
        )
        .await;
    assert!(
        overview["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["session_id"] == session.as_str()),
        "a bot that never sent is inactive: {overview}"
    );
    let stats = app.get_json_as("/api/v1/flows/stats", &key).await;
    assert_eq!(stats["executions"]["cancelled"], 2, "{stats}");
}

#[actix_web::test]
async fn another_tenant_gets_404_and_a_read_only_key_403_on_every_automation_route() {
    let app = spawn_app().await;
    let (tenant_a, key_a) = app.create_tenant("Acme", "standard").await;
    let (_, key_b) = app.create_tenant("Globex", "standard").await;
    let viewer = app.read_only_key(tenant_a, &key_a).await;
    let session = app.new_session(&key_a, "front").await;
    let flow = app
        .create_flow(
            &key_a,
            json!({"name": "f", "steps": [{"id": "nap", "type": "wait", "seconds": 3600}]}),
        )
        .await;
    let flow_id = flow["id"].as_str().unwrap().to_owned();
    let trigger = app
        .create_trigger(
            &key_a,
            json!({"name": "t", "event": "message.received", "flow_id": flow_id}),
        )
        .await;
    let trigger_id = trigger["id"].as_str().unwrap().to_owned();
    let exec: Value = app
        .post_json(
            &key_a,
            &format!("/api/v1/flows/{flow_id}/execute"),
            json!({"session_id": session, "chat": "+4915550005555"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let exec_id = exec["id"].as_str().unwrap().to_owned();

    for path in [
        format!("/api/v1/flows/{flow_id}"),
        format!("/api/v1/flows/{flow_id}/executions"),
        format!("/api/v1/triggers/{trigger_id}"),
        format!("/api/v1/executions/{exec_id}"),
        format!("/api/v1/sessions/{session}/bot"),
    ] {
        assert_error(app.get_as(&path, &key_b).await, 404, "not_found").await;
        assert_eq!(app.get_as(&path, &viewer).await.status(), 200, "{path}");
    }
    for list in ["/api/v1/flows", "/api/v1/triggers"] {
        assert!(
            app.get_json_as(list, &key_b).await["items"]
                .as_array()
                .unwrap()
                .is_empty()
        );
    }
    assert_eq!(
        app.get_json_as("/api/v1/triggers/stats", &key_b).await["triggers"],
        0
    );
    assert_eq!(
        app.get_json_as("/api/v1/flows/stats", &key_b).await["flows"],
        0
    );
    let mutations = [
        (
            "PATCH",
            format!("/api/v1/flows/{flow_id}"),
            json!({"name": "mine"}),
        ),
        (
            "PATCH",
            format!("/api/v1/flows/{flow_id}/toggle"),
            json!(null),
        ),
        (
            "POST",
            format!("/api/v1/flows/{flow_id}/duplicate"),
            json!(null),
        ),
        (
            "POST",
            format!("/api/v1/flows/{flow_id}/execute"),
            json!({"session_id": session, "chat": "+4915550005555"}),
        ),
        (
            "PATCH",
            format!("/api/v1/triggers/{trigger_id}"),
            json!({"name": "mine"}),
        ),
        (
            "PATCH",
            format!("/api/v1/triggers/{trigger_id}/toggle"),
            json!(null),
        ),
        (
            "POST",
            format!("/api/v1/triggers/{trigger_id}/duplicate"),
            json!(null),
        ),
        (
            "POST",
            format!("/api/v1/triggers/{trigger_id}/execute"),
            json!({"session_id": session, "chat": "+4915550005555"}),
        ),
        (
            "POST",
            format!("/api/v1/executions/{exec_id}/cancel"),
            json!(null),
        ),
        (
            "POST",
            format!("/api/v1/sessions/{session}/bot/pause"),
            json!({}),
        ),
        (
            "POST",
            format!("/api/v1/sessions/{session}/bot/resume"),
            json!(null),
        ),
        (
            "POST",
            format!("/api/v1/sessions/{session}/bot/stop"),
            json!(null),
        ),
        (
            "POST",
            "/api/v1/triggers/test".to_owned(),
            json!({"session_id": session, "chat": "+4915550005555", "text": "hi"}),
        ),
        (
            "DELETE",
            format!("/api/v1/triggers/{trigger_id}"),
            json!(null),
        ),
        ("DELETE", format!("/api/v1/flows/{flow_id}"), json!(null)),
    ];
    for (m, p, body) in &mutations {
        assert_error(app.call(m, p, &key_b, body).await, 404, "not_found").await;
    }
    // Bulk changes only the caller's own: none of A's.
    let bulk: Value = app
        .call(
            "POST",
            "/api/v1/triggers/bulk",
            &key_b,
            &json!({"ids": [trigger_id], "action": "delete"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(bulk["affected"], 0);
    // A read-only key of A reads and never mutates.
    for (m, p, body) in mutations.iter().chain(
        [
            (
                "POST",
                "/api/v1/flows".to_owned(),
                json!({"name": "x", "steps": [{"id": "a", "type": "end"}]}),
            ),
            (
                "POST",
                "/api/v1/triggers".to_owned(),
                json!({"name": "x", "event": "message.received", "reply_text": "x"}),
            ),
            (
                "POST",
                "/api/v1/triggers/bulk".to_owned(),
                json!({"ids": [trigger_id], "action": "delete"}),
            ),
            (
                "PUT",
                "/api/v1/automation/settings".to_owned(),
                json!({"time_zone": "UTC"}),
            ),
        ]
        .iter(),
    ) {
        assert_error(app.call(m, p, &viewer, body).await, 403, "forbidden").await;
    }
    assert_eq!(
        app.get_json_as(&format!("/api/v1/flows/{flow_id}"), &key_a)
            .await["name"],
        "f"
    );
    assert_eq!(
        app.get_json_as(&format!("/api/v1/executions/{exec_id}"), &key_a)
            .await["status"],
        "waiting"
    );
    assert_eq!(app.count_sql("SELECT count(*) AS n FROM triggers").await, 1);
    // The admin's overview is the admin's.
    assert_error(
        app.get_as("/api/v1/admin/bots", &key_a).await,
        403,
        "forbidden",
    )
    .await;
}
