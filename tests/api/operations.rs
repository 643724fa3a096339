use serde_json::Value;

use crate::helpers::{ADMIN_KEY, assert_error, spawn_app};

#[actix_web::test]
async fn health_answers_without_auth_and_names_the_version() {
    let app = spawn_app().await;
    let res = app.get("/health").send().await.expect("request");
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-request-id"));
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    let expected = if cfg!(feature = "sandbox") {
        "sandbox"
    } else {
        "live"
    };
    assert_eq!(body["mode"], expected, "the build decides the network");
}

/// A default build serves no sandbox route, even to the admin.
#[cfg(not(feature = "sandbox"))]
#[actix_web::test]
async fn a_default_build_has_no_sandbox_routes() {
    let app = spawn_app().await;
    for path in [
        "/api/v1/sandbox/inbound",
        "/api/v1/sandbox/sessions/s1/scan",
        "/api/v1/sandbox/contacts/15550001111/messages",
    ] {
        let res = app
            .get(path)
            .header("x-api-key", crate::helpers::ADMIN_KEY)
            .send()
            .await
            .expect("request");
        assert_error(res, 404, "route_not_found").await;
    }
}

#[actix_web::test]
async fn a_client_request_id_is_kept_and_a_bad_one_replaced() {
    let app = spawn_app().await;
    let res = app
        .get("/health")
        .header("x-request-id", "client-id-42")
        .send()
        .await
        .expect("req");
    assert_eq!(res.headers()["x-request-id"], "client-id-42");
    let res = app
        .get("/health")
        .header("x-request-id", "no spaces allowed")
        .send()
        .await
        .expect("req");
    assert_ne!(res.headers()["x-request-id"], "no spaces allowed");
    // Errors carry the same id in their body.
    let res = app
        .get("/nope")
        .header("x-request-id", "err-id-7")
        .send()
        .await
        .expect("req");
    let body = assert_error(res, 404, "route_not_found").await;
    assert_eq!(body["request_id"], "err-id-7");
}

#[actix_web::test]
async fn ready_reports_each_part() {
    let app = spawn_app().await;
    let res = app.get("/ready").send().await.expect("request");
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["database"], "ok");
    assert_eq!(body["checks"]["redis"], "not_configured");
    assert_eq!(body["checks"]["actors"], "ok");
}

#[actix_web::test]
async fn ready_is_503_when_the_database_is_gone_and_health_stays_200() {
    let app = spawn_app().await;
    let db = app
        .db_url
        .rsplit('/')
        .next()
        .and_then(|s| s.split('?').next())
        .expect("db name")
        .to_owned();
    let admin_url = app.db_url.replace(&format!("/{db}"), "/postgres");
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let mut conn = AsyncPgConnection::establish(&admin_url)
        .await
        .expect("admin connection");
    diesel::sql_query(format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS false"))
        .execute(&mut conn)
        .await
        .expect("block connections");
    diesel::sql_query(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
    ))
    .execute(&mut conn)
    .await
    .expect("terminate backends");

    let res = app.get("/ready").send().await.expect("request");
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["status"], "not_ready");
    assert!(
        body["checks"]["database"]
            .as_str()
            .is_some_and(|s| s.starts_with("error")),
        "{body}"
    );
    // Liveness does not depend on the database.
    assert_eq!(
        app.get("/health").send().await.expect("request").status(),
        200
    );
    // An authenticated request now fails cleanly: 503, never a 500.
    let res = app
        .get("/api/v1/tenants")
        .bearer_auth("wag_0123456789abcdef_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")
        .send()
        .await
        .expect("request");
    assert_error(res, 503, "unavailable").await;
}

/// Pooled connections the server closed (a restart, a failover, an idle timeout) are
/// replaced at checkout: the requests after it all succeed, none is a 503.
#[actix_web::test]
async fn closed_pooled_connections_are_replaced_not_reused() {
    let app = spawn_app().await;
    let (_tenant, key) = app.create_tenant("Acme", "standard").await;
    let path = "/api/v1/sessions";
    // Fill the pool: several requests at once each hold a connection.
    let burst = || futures::future::join_all((0..16).map(|_| app.get_as(path, &key)));
    for res in burst().await {
        assert_eq!(res.status(), 200);
    }
    let killed = app
        .execute_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await;
    assert!(killed >= 2, "the pool held {killed} connections");
    // The connections' driver tasks see the socket close (a kernel event, not a timer).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let statuses: Vec<u16> = burst().await.iter().map(|r| r.status().as_u16()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

#[actix_web::test]
async fn metrics_are_prometheus_text_with_http_counters() {
    let app = spawn_app().await;
    app.get("/health").send().await.expect("request");
    let res = app.get("/metrics").send().await.expect("request");
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/plain")
    );
    let text = res.text().await.expect("text");
    assert!(text.contains("wagate_http_requests_total{"), "{text}");
    assert!(text.contains(r#"route="/health""#), "{text}");
    assert!(
        text.contains("wagate_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("wagate_redis_fallback_active"), "{text}");

    // Made-up methods, unauthenticated, on known and unknown paths: they share one label,
    // so once the first has made its series, fifty more add none.
    let brew = async |from: usize, to: usize| {
        for n in from..to {
            let method = reqwest::Method::from_bytes(format!("BREW{n}").as_bytes()).expect("token");
            for path in ["/health", "/api/v1/sessions", "/no/such/route"] {
                app.client
                    .request(method.clone(), app.url(path))
                    .send()
                    .await
                    .expect("request");
            }
        }
    };
    brew(0, 2).await;
    let series = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    let before = series(&app.metrics_text().await);
    brew(2, 52).await;
    let text = app.metrics_text().await;
    assert!(!text.contains("BREW"), "a made-up method became a label");
    assert!(text.contains(r#"method="other""#), "{text}");
    // Only the scrapes themselves may add series (the /metrics route's own).
    let after = series(&text);
    assert!(
        after <= before + 20,
        "/metrics grew from {before} to {after} series"
    );
}

/// Every operation says what its success answers with: a schema for each content type
/// (only `204 No Content` and the WebSocket's `101` have no body), and the error body's
/// `code` is the one list of error codes.
#[actix_web::test]
async fn openapi_describes_every_success_body_and_every_error_code() {
    let app = spawn_app().await;
    let doc: Value = app.openapi().await;
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let responses = op["responses"].as_object().expect("responses");
            let success = responses
                .keys()
                .filter(|s| s.starts_with('1') || s.starts_with('2'))
                .min()
                .unwrap_or_else(|| panic!("{method} {path} documents a success"));
            operations += 1;
            if matches!(success.as_str(), "204" | "101") {
                continue;
            }
            let content = responses[success]["content"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path} {success} has a body"));
            assert!(!content.is_empty(), "{method} {path} {success} has a body");
            for (media_type, body) in content {
                let schema = body["schema"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{method} {path} {success} {media_type}: schema"));
                assert!(
                    !schema.is_empty(),
                    "{method} {path} {success} {media_type}: the schema says something"
                );
            }
        }
    }
    assert!(operations > 50, "{operations} operations");
    let codes: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode lists its values")
        .iter()
        .map(|c| c.as_str().expect("a code"))
        .collect();
    for code in [
        "validation_failed",
        "unauthorized",
        "rate_limited",
        "session_unhealthy",
        "phone_in_use",
        "media_gone",
        "internal_error",
    ] {
        assert!(codes.contains(&code), "{code} in {codes:?}");
    }
    assert_eq!(
        doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["$ref"],
        "#/components/schemas/ErrorCode"
    );
}

#[actix_web::test]
async fn openapi_documents_every_route_with_its_errors() {
    let app = spawn_app().await;
    let doc: Value = app.openapi().await;
    let paths = doc["paths"].as_object().expect("paths");
    let expected = [
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/docs", "get"),
        ("/api/v1/auth/token", "post"),
        ("/api/v1/tenants", "post"),
        ("/api/v1/tenants", "get"),
        ("/api/v1/tenants/{tenant_id}", "get"),
        ("/api/v1/tenants/{tenant_id}", "patch"),
        ("/api/v1/tenants/{tenant_id}", "delete"),
        ("/api/v1/tenants/{tenant_id}/api-keys", "post"),
        ("/api/v1/tenants/{tenant_id}/api-keys", "get"),
        ("/api/v1/tenants/{tenant_id}/api-keys/{key_id}", "delete"),
    ];
    for (path, method) in expected {
        let op = &paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} is documented"))[method];
        assert!(op.is_object(), "{method} {path} is documented");
        if path.starts_with("/api/") {
            for status in ["400", "401", "404", "429"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path} documents {status}"
                );
            }
        }
    }
    // And every documented /api path is routed: asked with the admin key (without it every
    // /api/v1 path answers 401 before routing, and this check could not fail), in each
    // method the document lists, it answers something other than 404 route_not_found.
    let mut checked = 0;
    for (path, item) in paths.iter().filter(|(p, _)| p.starts_with("/api/")) {
        let concrete = path
            .split('/')
            .map(|seg| {
                if seg.starts_with('{') {
                    uuid::Uuid::nil().to_string()
                } else {
                    seg.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let methods = item
            .as_object()
            .expect("path item")
            .keys()
            .filter(|m| matches!(m.as_str(), "get" | "post" | "put" | "patch" | "delete"));
        for method in methods {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes())
                .expect("an HTTP method");
            let res = app
                .client
                .request(method.clone(), app.url(&concrete))
                .bearer_auth(ADMIN_KEY)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .expect("request");
            let status = res.status();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            assert_ne!(status, 401, "{method} {path} authenticated: {body}");
            assert_ne!(
                body["error"]["code"], "route_not_found",
                "{method} {path} is served"
            );
            assert_ne!(
                body["error"]["code"], "method_not_allowed",
                "{method} {path} is served in its documented method"
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "{checked} operations checked");
    let docs = app.get("/docs").send().await.expect("request");
    assert_eq!(docs.status(), 200);
    assert!(
        docs.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/html")
    );
    let csp = docs.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let html = docs.text().await.expect("html");
    assert!(
        !html.contains("https://") && !html.contains("http://"),
        "{html}"
    );
    // The page's scripts come from this server, and render /openapi.json.
    let init = app
        .get("/docs/swagger-initializer.js")
        .send()
        .await
        .expect("request");
    assert_eq!(init.status(), 200);
    assert!(init.text().await.expect("js").contains("/openapi.json"));
    for asset in ["/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"] {
        assert!(html.contains(asset), "{asset} in {html}");
        let res = app.get(asset).send().await.expect("request");
        assert_eq!(res.status(), 200, "{asset}");
    }
    assert_error(
        app.get("/docs/..%2Fsecrets.json")
            .send()
            .await
            .expect("request"),
        404,
        "not_found",
    )
    .await;
}
