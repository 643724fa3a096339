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
