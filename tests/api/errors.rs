use serde_json::json;

use crate::helpers::{ADMIN_KEY, assert_error, spawn_app, spawn_app_with};

#[actix_web::test]
async fn validation_errors_name_the_field() {
    let app = spawn_app().await;
    let cases = [
        (json!({"name": ""}), "name"),
        (json!({"name": "   "}), "name"),
        (json!({"name": "x".repeat(101)}), "name"),
        (json!({"name": "ok\u{0007}"}), "name"),
        (json!({"name": 5}), "name"),
        (json!({"tier": "standard"}), "name"),
        (json!({"name": "ok", "tier": "gold"}), "tier"),
        (json!({"name": "ok", "tier": 1}), "tier"),
        (json!({"name": "ok", "colour": "red"}), "colour"),
        (json!(["name"]), "body"),
    ];
    for (body, field) in cases {
        let res = app
            .post("/api/v1/tenants")
            .bearer_auth(ADMIN_KEY)
            .json(&body)
            .send()
            .await
            .expect("req");
        let err = assert_error(res, 400, "validation_failed").await;
        assert_eq!(err["error"]["details"]["field"], field, "{body}");
    }
    // Nothing was stored by any of them.
    let list: serde_json::Value = app.get_json_as("/api/v1/tenants", ADMIN_KEY).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0));
}

#[actix_web::test]
async fn malformed_bodies_and_wrong_content_types() {
    let app = spawn_app().await;
    for raw in ["{", "{\"name\": }", "", "null garbage"] {
        let res = app
            .post("/api/v1/tenants")
            .bearer_auth(ADMIN_KEY)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .expect("req");
        assert_error(res, 400, "malformed_json").await;
    }
    let res = app
        .post("/api/v1/tenants")
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "text/plain")
        .body("{\"name\":\"x\"}")
        .send()
        .await
        .expect("req");
    assert_error(res, 415, "unsupported_media_type").await;
    let res = app
        .post("/api/v1/tenants")
        .bearer_auth(ADMIN_KEY)
        .body("{\"name\":\"x\"}")
        .send()
        .await
        .expect("req");
    assert_error(res, 415, "unsupported_media_type").await;
}

#[actix_web::test]
async fn bodies_over_the_limit_are_413_and_the_limit_is_configurable() {
    let app = spawn_app_with(|s| s.application.body_limit_bytes = 1024).await;
    let big = json!({"name": "x".repeat(2000)});
    let res = app
        .post("/api/v1/tenants")
        .bearer_auth(ADMIN_KEY)
        .json(&big)
        .send()
        .await
        .expect("req");
    let err = assert_error(res, 413, "payload_too_large").await;
    assert_eq!(err["error"]["details"]["limit_bytes"], 1024);
    // Chunked (no content-length) is counted as it streams.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..4).map(|_| Ok(vec![b' '; 600])).collect();
    let res = app
        .post("/api/v1/tenants")
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("req");
    assert_error(res, 413, "payload_too_large").await;
    // Under the limit is fine.
    let res = app
        .post("/api/v1/tenants")
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"name": "small"}))
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 201);
}

#[actix_web::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = spawn_app().await;
    assert_error(
        app.get("/nothing/here").send().await.expect("req"),
        404,
        "route_not_found",
    )
    .await;
    assert_error(
        app.delete("/health").send().await.expect("req"),
        405,
        "method_not_allowed",
    )
    .await;
    assert_error(
        app.get("/api/v1/auth/token").send().await.expect("req"),
        405,
        "method_not_allowed",
    )
    .await;
    assert_error(
        app.client
            .put(app.url("/api/v1/tenants"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("req"),
        405,
        "method_not_allowed",
    )
    .await;
    assert_error(
        app.get_as("/api/v1/no-such-thing", ADMIN_KEY).await,
        404,
        "route_not_found",
    )
    .await;
    // An id that cannot exist is a plain 404, never a 500.
    assert_error(
        app.get_as("/api/v1/tenants/not-a-uuid", ADMIN_KEY).await,
        404,
        "not_found",
    )
    .await;
}

/// U+0000 cannot be stored by Postgres: wherever it comes in (a JSON string, a path segment,
/// a query parameter) it is a 400 naming where, never a 500, and nothing is stored.
#[actix_web::test]
async fn a_nul_anywhere_in_the_input_is_a_400_naming_the_field() {
    let app = spawn_app().await;
    let (_tenant, key) = app.create_tenant("Acme", "standard").await;
    let id = app.new_session(&key, "front desk").await;
    let to = "+4915112345678";
    let messages = format!("/api/v1/sessions/{id}/messages");
    let bodies = [
        (
            messages.clone(),
            json!({"to": to, "text": "a\u{0}b"}),
            "text",
        ),
        (
            messages.clone(),
            json!({"to": to, "type": "location",
                   "location": {"latitude": 1.0, "longitude": 2.0, "name": "x\u{0}"}}),
            "location.name",
        ),
        (
            messages.clone(),
            json!({"to": to, "type": "contact",
                   "contact": {"name": "Max", "vcard": "BEGIN:VCARD\u{0}"}}),
            "contact.vcard",
        ),
        (
            messages.clone(),
            json!({"to": to, "type": "reaction",
                   "reaction": {"message_id": "m1", "emoji": "\u{0}"}}),
            "reaction.emoji",
        ),
        (
            messages.clone(),
            json!({"to": format!("{to}\u{0}"), "text": "hi"}),
            "to",
        ),
        (
            format!("/api/whatsapp/sessions/{id}/send"),
            json!({"phone": to, "message": "hi\u{0}"}),
            "message",
        ),
        (
            "/api/v1/webhooks".to_owned(),
            json!({"url": "https://example.com/\u{0}"}),
            "url",
        ),
    ];
    for (path, body, field) in bodies {
        let res = app
            .post(&path)
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .expect("req");
        let err = assert_error(res, 400, "validation_failed").await;
        assert_eq!(err["error"]["details"]["field"], field, "{path} {body}");
    }
    let res = app
        .patch(&format!("/api/v1/sessions/{id}/chats/{to}"))
        .bearer_auth(&key)
        .json(&json!({"contact_name": "Erika\u{0}"}))
        .send()
        .await
        .expect("req");
    let err = assert_error(res, 400, "validation_failed").await;
    assert_eq!(err["error"]["details"]["field"], "contact_name");

    for (path, field) in [
        (format!("{messages}/%00"), "path"),
        (format!("{messages}/a%00b/media"), "path"),
        (format!("/api/v1/sessions/{id}/chats/%2B1555%00"), "path"),
        (format!("{messages}?cursor=1_%00"), "cursor"),
        (format!("/api/v1/sessions/{id}/chats?cursor=%00"), "cursor"),
        (format!("{messages}?chat=%2B1%00"), "chat"),
    ] {
        let res = app.get_as(&path, &key).await;
        let err = assert_error(res, 400, "validation_failed").await;
        assert_eq!(err["error"]["details"]["field"], field, "{path}");
    }
    // The same requests without the NUL get past validation (the check is not a blanket 400).
    let res = app.get_as(&format!("{messages}?cursor=1_2"), &key).await;
    assert_ne!(res.status(), 500);
    let res = app
        .post(&messages)
        .bearer_auth(&key)
        .json(&json!({"to": to, "text": "ab"}))
        .send()
        .await
        .expect("req");
    assert_ne!(
        res.status().as_u16(),
        400,
        "a clean send is not refused as input"
    );
    // Nothing with a NUL was stored: the history holds only the clean send (if any).
    let history = app.get_json_as(&messages, &key).await;
    for m in history["items"].as_array().expect("items") {
        assert_eq!(m["text"], "ab", "{m}");
    }
}

/// Every 405 names the methods its path is served with, for every documented path and the
/// compat ones.
#[actix_web::test]
async fn every_405_carries_an_allow_header_with_the_served_methods() {
    let app = spawn_app_with(|s| s.rate_limit.enabled = false).await;
    let doc: serde_json::Value = app.openapi().await;
    let id = uuid::Uuid::now_v7().to_string();
    let mut checked = 0;
    for (pattern, item) in doc["paths"].as_object().expect("paths") {
        let path: String = pattern
            .split('/')
            .map(|seg| {
                if seg.starts_with('{') {
                    id.as_str()
                } else {
                    seg
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        // The path's own pattern: a literal segment (`chats/bulk`) is served by its own
        // route, not as a value of `chats/{chat}`.
        let mut expected: Vec<String> = item
            .as_object()
            .expect("item")
            .keys()
            .filter(|m| ["get", "post", "put", "patch", "delete"].contains(&m.as_str()))
            .map(|m| m.to_uppercase())
            .collect();
        if expected.iter().any(|m| m == "GET") {
            expected.push("HEAD".into());
        }
        expected.sort();
        expected.dedup();
        // A method the path is not served with.
        let probe = ["PUT", "DELETE", "PATCH"]
            .into_iter()
            .find(|m| !expected.iter().any(|e| e == m))
            .expect("a method the path does not serve");
        let res = app
            .client
            .request(probe.parse().expect("method"), app.url(&path))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("req");
        assert_eq!(res.status(), 405, "{probe} {path}");
        let allow = res
            .headers()
            .get("allow")
            .unwrap_or_else(|| panic!("no Allow on {probe} {path}"))
            .to_str()
            .expect("ascii")
            .to_owned();
        let mut got: Vec<String> = allow.split(", ").map(str::to_owned).collect();
        got.sort();
        assert_eq!(got, expected, "{pattern}");
        assert_error(res, 405, "method_not_allowed").await;
        checked += 1;
    }
    assert!(checked > 40, "only {checked} documented paths");
    let res = app
        .delete(&format!("/api/whatsapp/sessions/{id}/send"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "POST");
}

/// The limits the OpenAPI document states for a session's events are the ones enforced.
#[actix_web::test]
async fn session_events_refuse_what_the_document_rules_out() {
    let app = spawn_app().await;
    let (_tenant, key) = app.create_tenant("Acme", "standard").await;
    let id = app.new_session(&key, "front desk").await;
    for (query, field) in [
        ("since=-1", "since"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
    ] {
        let res = app
            .get_as(&format!("/api/v1/sessions/{id}/events?{query}"), &key)
            .await;
        let err = assert_error(res, 400, "validation_failed").await;
        assert_eq!(err["error"]["details"]["field"], field, "{query}");
    }
    let res = app
        .get_as(
            &format!("/api/v1/sessions/{id}/events?since=0&limit=1000"),
            &key,
        )
        .await;
    assert_eq!(res.status(), 200);
    let doc: serde_json::Value = app.openapi().await;
    let params = doc["paths"]["/api/v1/sessions/{session_id}/events"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .clone();
    let since = params.iter().find(|p| p["name"] == "since").expect("since");
    assert_eq!(since["schema"]["minimum"], 0, "{since}");
}
