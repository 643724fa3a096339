//! The dashboard at `/dashboard`: its files come from the binary under a strict CSP, its login
//! is a cookie the page cannot read, and a change made with that cookie needs the CSRF
//! token. The pages themselves are driven in a real Chromium below (sandbox build).

use reqwest::header::{HeaderMap, SET_COOKIE};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, TestApp, assert_error, spawn_app};

const PASSWORD: &str = "correct horse battery";

/// The cookies a dashboard login set: (`wagate_token` cookie line, `wagate_csrf` value,
/// `wagate_csrf` cookie line).
struct Login {
    token_line: String,
    csrf: String,
    csrf_line: String,
    body: Value,
}

impl Login {
    fn token(&self) -> &str {
        cookie_value(&self.token_line)
    }

    /// The `Cookie` header a browser would send.
    fn cookie(&self) -> String {
        format!("wagate_token={}; wagate_csrf={}", self.token(), self.csrf)
    }

    /// `body` sent to `path` as the dashboard's page sends a change: the cookies and the
    /// CSRF token.
    async fn post_change(&self, app: &TestApp, path: &str, body: Value) -> reqwest::Response {
        app.post(path)
            .header("cookie", self.cookie())
            .header("x-csrf-token", &self.csrf)
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

fn cookie_value(line: &str) -> &str {
    line.split(';')
        .next()
        .and_then(|kv| kv.split_once('='))
        .map_or("", |(_, v)| v)
}

fn set_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|l| l.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

impl TestApp {
    /// Logs in to the dashboard with `body`; panics unless it is a 200.
    async fn dashboard_login(&self, body: Value) -> Login {
        let res = self
            .post("/dashboard/login")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "dashboard login");
        let headers = res.headers().clone();
        let body: Value = res.json().await.unwrap();
        let token_line = set_cookie(&headers, "wagate_token").expect("the login cookie");
        let csrf_line = set_cookie(&headers, "wagate_csrf").expect("the CSRF cookie");
        Login {
            csrf: cookie_value(&csrf_line).to_owned(),
            token_line,
            csrf_line,
            body,
        }
    }

    async fn owner_login(&self, name: &str) -> (String, Login) {
        let (_, key) = self.create_tenant(name, "standard").await;
        let email = format!("owner@{}.example", name.to_lowercase());
        self.create_member(&key, &email, "owner").await;
        let login = self
            .dashboard_login(json!({"email": email, "password": PASSWORD}))
            .await;
        (key, login)
    }
}

#[actix_web::test]
async fn the_page_and_its_files_come_from_the_binary_under_a_strict_csp() {
    let app = spawn_app().await;
    let res = app.get("/dashboard").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    for needed in [
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(needed), "{csp}");
    }
    for forbidden in ["unsafe-inline", "unsafe-eval", "http:", "https:", "*"] {
        assert!(!csp.contains(forbidden), "{csp}");
    }
    let html = res.text().await.unwrap();
    // No inline script or style: everything the page uses is a file of ours.
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "{html}"
    );
    let files: Vec<&str> = html
        .split('"')
        .filter(|s| s.starts_with("/dashboard/assets/"))
        .collect();
    assert!(files.len() >= 4, "{files:?}");
    let mut modules = Vec::new();
    for file in &files {
        let res = app.get(file).send().await.unwrap();
        assert_eq!(res.status(), 200, "{file}");
        let etag = res.headers()["etag"].to_str().unwrap().to_owned();
        let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
        if file.ends_with(".js") {
            assert!(kind.starts_with("text/javascript"), "{file}: {kind}");
            modules.push(res.text().await.unwrap());
        }
        // Unchanged: 304, no body.
        let again = app
            .get(file)
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{file}");
    }
    // Every page module the app imports is served too.
    let app_js = &modules[modules.len() - 1];
    for page in app_js
        .split('\'')
        .filter(|s| s.starts_with("./pages/"))
        .map(|s| s.trim_start_matches("./"))
    {
        let res = app
            .get(&format!("/dashboard/assets/{page}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{page}");
    }
    for missing in [
        "/dashboard/assets/nope.js",
        "/dashboard/assets/index.html",
        "/dashboard/assets/..%2FCargo.toml",
        "/dashboard/assets/../../Cargo.toml",
    ] {
        let res = app.get(missing).send().await.unwrap();
        assert_eq!(res.status(), 404, "{missing}");
    }
    // The docs page loads nothing from elsewhere either.
    let docs = app.get("/docs").send().await.unwrap();
    let docs_csp = docs.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(docs_csp.contains("script-src 'self'") && !docs_csp.contains("http"));
    assert!(!docs.text().await.unwrap().contains("://"));
}

#[actix_web::test]
async fn a_member_logs_in_with_a_cookie_the_page_cannot_read_and_changes_need_the_csrf_token() {
    let app = spawn_app().await;
    let (_key, login) = app.owner_login("Acme").await;
    let token_line = login.token_line.to_ascii_lowercase();
    for attribute in ["httponly", "samesite=strict", "path=/", "max-age="] {
        assert!(token_line.contains(attribute), "{token_line}");
    }
    let csrf_line = login.csrf_line.to_ascii_lowercase();
    assert!(csrf_line.contains("samesite=strict") && !csrf_line.contains("httponly"));
    // The JWT is only in the cookie, never in what the page's script reads.
    assert!(login.body.get("token").is_none(), "{}", login.body);
    assert_eq!(login.body["kind"], "member");
    assert_eq!(login.body["role"], "owner");
    assert_eq!(login.body["csrf_token"], login.csrf.as_str());
    assert!(login.body["expires_at"].is_string());

    let me: Value = app
        .get("/dashboard/me")
        .header("cookie", login.cookie())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["kind"], "member");
    assert_eq!(me["tenant_id"], login.body["tenant_id"]);

    // Reads with the cookie alone.
    let res = app
        .get("/api/v1/sessions")
        .header("cookie", login.cookie())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // A change without the header, with a wrong one, or from another origin: refused, and
    // nothing is made.
    let create = || {
        app.post("/api/v1/sessions")
            .header("cookie", login.cookie())
            .json(&json!({"name": "front desk"}))
    };
    assert_error(create().send().await.unwrap(), 403, "csrf_token_invalid").await;
    assert_error(
        create()
            .header("x-csrf-token", "0".repeat(64))
            .send()
            .await
            .unwrap(),
        403,
        "csrf_token_invalid",
    )
    .await;
    assert_error(
        create()
            .header("x-csrf-token", &login.csrf)
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap(),
        403,
        "csrf_token_invalid",
    )
    .await;
    assert_eq!(app.count_sql("SELECT count(*) AS n FROM sessions").await, 0);
    let res = create()
        .header("x-csrf-token", &login.csrf)
        .header("origin", &app.address)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    // Logging out removes both cookies.
    let res = app
        .post("/dashboard/logout")
        .header("cookie", login.cookie())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    for name in ["wagate_token", "wagate_csrf"] {
        let line = set_cookie(res.headers(), name).expect("a removal");
        assert!(line.to_ascii_lowercase().contains("max-age=0"), "{line}");
    }
    let res = app.get("/dashboard/me").send().await.unwrap();
    assert_error(res, 401, "unauthorized").await;
}

#[actix_web::test]
async fn bad_logins_are_clear_json_errors() {
    let app = spawn_app().await;
    let (_key, _login) = app.owner_login("Acme").await;
    let post = |body: Value| app.post("/dashboard/login").json(&body).send();
    let res = post(json!({"email": "owner@acme.example", "password": "wrong"}))
        .await
        .unwrap();
    assert_error(res, 401, "invalid_credentials").await;
    assert!(
        set_cookie(
            &app.post("/dashboard/login")
                .json(&json!({"api_key": "wg_nope_nope"}))
                .send()
                .await
                .unwrap()
                .headers()
                .clone(),
            "wagate_token"
        )
        .is_none()
    );
    let res = post(json!({"api_key": "not a key"})).await.unwrap();
    assert_error(res, 401, "invalid_credentials").await;
    let res = post(json!({"email": "owner@acme.example"})).await.unwrap();
    let body = assert_error(res, 400, "validation_failed").await;
    assert_eq!(body["error"]["details"]["field"], "email");
    let res = post(json!({"api_key": ADMIN_KEY, "email": "a@b.c", "password": "x"}))
        .await
        .unwrap();
    assert_error(res, 400, "validation_failed").await;
    let res = post(json!({"api_key": ADMIN_KEY, "extra": 1}))
        .await
        .unwrap();
    assert_error(res, 400, "validation_failed").await;
    let res = app
        .post("/dashboard/login")
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "malformed_json").await;
    let res = app.get("/dashboard/login").send().await.unwrap();
    assert_error(res, 405, "method_not_allowed").await;
}

#[actix_web::test]
async fn the_admin_logs_in_with_the_admin_key_and_a_new_admin_key_ends_that_login() {
    let app = spawn_app().await;
    let admin = app.dashboard_login(json!({"api_key": ADMIN_KEY})).await;
    assert_eq!(admin.body["kind"], "admin");
    // The admin key itself is not in the cookie: a token naming it by a hash.
    assert!(!admin.token_line.contains(ADMIN_KEY));
    let res = app
        .get("/api/v1/admin/actors")
        .header("cookie", admin.cookie())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (_, member) = app.owner_login("Acme").await;

    // Another node of the fleet with the same JWT secret but a new admin key: the member's
    // login still works there, the admin's old one does not.
    let other = app
        .second_node(|s| {
            s.auth.admin_key = Some(secrecy::SecretString::from(
                "wg_admin_rotated_key_0123456789abcdef",
            ))
        })
        .await;
    let res = other
        .get("/api/v1/sessions")
        .header("cookie", member.cookie())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = other
        .get("/api/v1/admin/actors")
        .header("cookie", admin.cookie())
        .send()
        .await
        .unwrap();
    let body = assert_error(res, 401, "unauthorized").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("admin key"),
        "{body}"
    );
}

#[actix_web::test]
async fn a_key_login_keeps_its_role_and_its_tenant() {
    let app = spawn_app().await;
    let (tenant_a, key_a) = app.create_tenant("Acme", "standard").await;
    let (_, key_b) = app.create_tenant("Bolt", "standard").await;
    let session_b = app.new_session(&key_b, "theirs").await;
    let read_only = app.read_only_key(tenant_a, &key_a).await;

    let login = app.dashboard_login(json!({"api_key": key_a})).await;
    assert_eq!(login.body["kind"], "key");
    assert_eq!(login.body["role"], "owner");
    // Another tenant's session is not there for this login.
    let res = app
        .get(&format!("/api/v1/sessions/{session_b}"))
        .header("cookie", login.cookie())
        .send()
        .await
        .unwrap();
    assert_error(res, 404, "not_found").await;

    // A read-only key reads and never changes, CSRF token or not.
    let ro = app.dashboard_login(json!({"api_key": read_only})).await;
    assert_eq!(ro.body["role"], "read_only");
    let res = ro
        .post_change(&app, "/api/v1/sessions", json!({"name": "nope"}))
        .await;
    assert_error(res, 403, "forbidden").await;
    // A viewer member likewise.
    app.create_member(&key_a, "viewer@acme.example", "viewer")
        .await;
    let viewer = app
        .dashboard_login(json!({"email": "viewer@acme.example", "password": PASSWORD}))
        .await;
    assert_eq!(viewer.body["role"], "viewer");
    let res = viewer
        .post_change(&app, "/api/v1/boards", json!({"name": "nope"}))
        .await;
    assert_error(res, 403, "forbidden").await;
    assert_eq!(app.count_sql("SELECT count(*) AS n FROM sessions").await, 1);
    assert_eq!(app.count_sql("SELECT count(*) AS n FROM boards").await, 0);
    // A JWT is not a key: the dashboard asks for the key.
    let res = app
        .post("/dashboard/login")
        .json(&json!({"api_key": login.token()}))
        .send()
        .await
        .unwrap();
    assert_error(res, 401, "invalid_credentials").await;
}

#[cfg(feature = "sandbox")]
mod in_a_browser;
