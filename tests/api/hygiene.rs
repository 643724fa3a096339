use std::time::Duration;

use crate::helpers::{ADMIN_KEY, assert_error, spawn_app, spawn_app_with};

#[actix_web::test]
async fn security_headers_on_every_response() {
    let app = spawn_app().await;
    for res in [
        app.get("/health").send().await.expect("req"),
        app.get("/nope").send().await.expect("req"),
        app.get("/api/v1/tenants").send().await.expect("req"),
    ] {
        let h = res.headers();
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["x-frame-options"], "DENY");
        assert!(
            h["content-security-policy"]
                .to_str()
                .expect("csp")
                .contains("default-src 'none'")
        );
        assert!(
            !h.contains_key("strict-transport-security"),
            "no HSTS over plain HTTP"
        );
    }
}

#[actix_web::test]
async fn cors_allows_no_origin_by_default() {
    let app = spawn_app().await;
    let res = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/tenants"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .expect("req");
    assert!(!res.headers().contains_key("access-control-allow-origin"));
    let res = app
        .get("/health")
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("req");
    assert!(!res.headers().contains_key("access-control-allow-origin"));
}

#[actix_web::test]
async fn cors_allows_configured_origins_only() {
    let app =
        spawn_app_with(|s| s.application.cors_allowed_origins = vec!["https://app.example".into()])
            .await;
    let res = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/tenants"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let res = app
        .get("/api/v1/tenants")
        .bearer_auth(ADMIN_KEY)
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("req");
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let res = app
        .get("/health")
        .header("origin", "https://other.example")
        .send()
        .await
        .expect("req");
    assert!(!res.headers().contains_key("access-control-allow-origin"));
}

#[actix_web::test]
async fn tls_serves_https_with_hsts() {
    let dir = tempdir();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).expect("write key");
    let app = spawn_app_with(|s| {
        s.application.tls_cert_path = Some(cert_path.clone());
        s.application.tls_key_path = Some(key_path.clone());
    })
    .await;
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).expect("root"),
        )
        .resolve("localhost", ([127, 0, 0, 1], app.port).into())
        .build()
        .expect("client");
    let res = client
        .get(format!("https://localhost:{}/health", app.port))
        .send()
        .await
        .expect("https request");
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    // Plain HTTP on the TLS port does not get an answer.
    let plain = reqwest::get(format!("http://127.0.0.1:{}/health", app.port)).await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200));
}

#[actix_web::test]
async fn a_handler_past_the_request_timeout_gets_503() {
    let app = spawn_app_with(|s| s.application.request_timeout_secs = 1).await;
    let started = std::time::Instant::now();
    let res = app.get("/__test/slow?ms=5000").send().await.expect("req");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered at the timeout, not after the handler"
    );
    assert_error(res, 503, "request_timeout").await;
    let res = app.get("/__test/slow?ms=10").send().await.expect("req");
    assert_eq!(res.status(), 200);
}

pub fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wagate-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("tempdir");
    dir
}

/// Shared state lives in a leaf (`src/app/state.rs`) that imports no handler, and no module
/// but the binary's entry point reaches into start-up (issue 17: one home for state).
#[test]
fn no_module_imports_start_up_and_the_state_imports_no_handler() {
    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(files.len() > 30, "read {} files", files.len());
    for file in &files {
        let name = file
            .strip_prefix(&root)
            .expect("under src")
            .to_string_lossy()
            .into_owned();
        // The app's wiring: how it is built, run and routed.
        if matches!(
            name.as_str(),
            "app/mod.rs" | "app/server.rs" | "app/routes.rs" | "main.rs"
        ) {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read");
        for wiring in [
            "crate::startup",
            "app::server",
            "app::routes",
            "app::Application",
            "app::RunOptions",
            "build_openapi",
        ] {
            assert!(!text.contains(wiring), "{name} imports start-up ({wiring})");
        }
    }
    assert!(
        !root.join("startup.rs").exists(),
        "start-up lives in app/server.rs"
    );
    for leaf in ["app/state.rs", "app/jobs.rs"] {
        let text = std::fs::read_to_string(root.join(leaf)).expect("leaf");
        for handler in [
            "crate::sessions",
            "crate::messages",
            "crate::chats",
            "crate::compat",
            "crate::webhooks",
            "crate::tenants",
            "crate::admin",
            "crate::sandbox",
            "crate::media",
            "crate::ops",
        ] {
            assert!(!text.contains(handler), "{leaf} imports {handler}");
        }
    }
}
