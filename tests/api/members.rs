//! Members, their login, what each role may do, and the audit log.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{ADMIN_KEY, TestApp, assert_error, spawn_app, spawn_app_with};

const PASSWORD: &str = "correct horse battery";

impl TestApp {
    /// Adds a member with `PASSWORD`; returns the member as the API shows them.
    pub(crate) async fn create_member(&self, owner_key: &str, email: &str, role: &str) -> Value {
        let res = self
            .post_json(
                owner_key,
                "/api/v1/members",
                json!({"email": email, "name": email, "role": role, "password": PASSWORD}),
            )
            .await;
        assert_eq!(res.status(), 201, "member creation");
        res.json().await.unwrap()
    }

    /// Logs in; returns the whole answer (status, body).
    pub(crate) async fn login(&self, email: &str, password: &str) -> (u16, Value) {
        let res = self
            .post("/api/v1/auth/login")
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// A member's token (a member of `role` created for it).
    pub(crate) async fn member_token(&self, owner_key: &str, email: &str, role: &str) -> String {
        self.create_member(owner_key, email, role).await;
        let (status, body) = self.login(email, PASSWORD).await;
        assert_eq!(status, 200, "login: {body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// Waits until the audit log (as `key` reads it, with `query`) has at least `n` entries.
    pub(crate) async fn audit_entries(&self, key: &str, query: &str, n: usize) -> Vec<Value> {
        for _ in 0..100 {
            let page = self
                .get_json_as(&format!("/api/v1/audit-log?{query}"), key)
                .await;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            if items.len() >= n {
                return items;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("fewer than {n} audit entries for {query}");
    }
}

#[actix_web::test]
async fn a_member_logs_in_and_wrong_or_unknown_credentials_get_the_same_401() {
    let app = spawn_app().await;
    let (tenant, key) = app.create_tenant("Acme", "standard").await;
    let member = app.create_member(&key, " Ana@Example.COM ", "agent").await;
    assert_eq!(member["email"], "ana@example.com");
    assert_eq!(member["role"], "agent");
    let text = member.to_string();
    assert!(
        !text.contains("password") && !text.contains("argon2"),
        "{text}"
    );

    let (status, body) = app.login("ANA@example.com", PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["member"]["id"], member["id"]);
    assert!(body["expires_at"].is_string());
    let token = body["token"].as_str().unwrap().to_owned();
    let me = app.get_json_as("/api/v1/members/me", &token).await;
    assert_eq!(me["id"], member["id"]);
    assert_eq!(me["tenant_id"], tenant.to_string());
    assert!(me["last_login_at"].is_string());
    // The password is stored as Argon2id with OWASP's parameters.
    let stored = app
        .get_json_as(
            &format!("/api/v1/members/{}", member["id"].as_str().unwrap()),
            &key,
        )
        .await;
    assert_eq!(stored["id"], member["id"]);
    let hashes = app
        .execute_sql(
            "SELECT 1 FROM members WHERE password_hash LIKE '$argon2id$v=19$m=19456,t=2,p=1$%'",
        )
        .await;
    assert_eq!(hashes, 1);

    for (email, password) in [
        ("ana@example.com", "wrong horse battery"),
        ("nobody@example.com", PASSWORD),
        ("not an email", PASSWORD),
    ] {
        let res = app
            .post("/api/v1/auth/login")
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        let body = assert_error(res, 401, "invalid_credentials").await;
        assert_eq!(
            body["error"]["message"],
            "the email or the password is wrong"
        );
    }
    // An API key is not a member.
    assert_error(
        app.get_as("/api/v1/members/me", &key).await,
        403,
        "forbidden",
    )
    .await;
    // Bad input names its field.
    let res = app
        .post_json(
            &key,
            "/api/v1/members",
            json!({"email": "b@example.com", "name": "B", "role": "agent", "password": "short"}),
        )
        .await;
    let body = assert_error(res, 400, "validation_failed").await;
    assert_eq!(body["error"]["details"]["field"], "password");
    let res = app
        .post_json(
            &key,
            "/api/v1/members",
            json!({"email": "ana@example.com", "name": "A", "role": "agent", "password": PASSWORD}),
        )
        .await;
    assert_error(res, 409, "member_exists").await;
    let res = app
        .post_json(
            &key,
            "/api/v1/members",
            json!({"email": "c@example.com", "name": "C", "role": "boss", "password": PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), 400);
}

#[actix_web::test]
async fn failed_logins_lock_the_address_and_the_email_out_until_the_window_ends() {
    let app = spawn_app_with(|s| {
        s.rate_limit.failed_auth.limit = 3;
        s.rate_limit.failed_auth.window_secs = 60;
    })
    .await;
    let (_, key) = app.create_tenant("Acme", "standard").await;
    app.create_member(&key, "ana@example.com", "agent").await;
    for _ in 0..3 {
        assert_eq!(
            app.login("ana@example.com", "wrong wrong wrong").await.0,
            401
        );
    }
    // The failure that crosses the limit is itself refused, and so is the right password now.
    assert_eq!(
        app.login("ana@example.com", "wrong wrong wrong").await.0,
        429
    );
    let (status, body) = app.login("ana@example.com", PASSWORD).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
}

#[actix_web::test]
async fn a_deleted_disabled_or_reset_members_token_stops_working_at_once_on_every_node() {
    let app = spawn_app().await;
    let other = app.second_node(|_| {}).await;
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let ana = app.create_member(&key, "ana@example.com", "owner").await;
    let ana_id = ana["id"].as_str().unwrap().to_owned();
    let bob = app.create_member(&key, "bob@example.com", "agent").await;
    let bob_id = bob["id"].as_str().unwrap().to_owned();
    let carl = app.create_member(&key, "carl@example.com", "viewer").await;
    let carl_id = carl["id"].as_str().unwrap().to_owned();
    let token_of = async |email: &str| {
        let (status, body) = app.login(email, PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_owned()
    };
    let (ana_t, bob_t, carl_t) = (
        token_of("ana@example.com").await,
        token_of("bob@example.com").await,
        token_of("carl@example.com").await,
    );
    // Each token is cached on the other node first.
    for t in [&ana_t, &bob_t, &carl_t] {
        assert_eq!(other.get_as("/api/v1/members/me", t).await.status(), 200);
    }

    // Deleted (by the owner member, on the first node): refused on both at the next request.
    let res = app
        .delete(&format!("/api/v1/members/{bob_id}"))
        .bearer_auth(&ana_t)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_error(
        other.get_as("/api/v1/members", &bob_t).await,
        401,
        "unauthorized",
    )
    .await;
    assert_error(
        app.get_as("/api/v1/members", &bob_t).await,
        401,
        "unauthorized",
    )
    .await;

    // Disabled: refused, and cannot log in; enabled again: logs in.
    let res = app
        .patch(&format!("/api/v1/members/{carl_id}"))
        .bearer_auth(&key)
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_error(
        other.get_as("/api/v1/members", &carl_t).await,
        401,
        "unauthorized",
    )
    .await;
    assert_eq!(app.login("carl@example.com", PASSWORD).await.0, 401);

    // An owner resets a password: the old token ends, the new password logs in.
    let res = app
        .patch(&format!("/api/v1/members/{carl_id}"))
        .bearer_auth(&key)
        .json(&json!({"disabled": false, "password": "a brand new password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(app.login("carl@example.com", PASSWORD).await.0, 401);
    assert_eq!(
        app.login("carl@example.com", "a brand new password")
            .await
            .0,
        200
    );

    // Changing one's own password ends one's own tokens too.
    let res = app
        .post("/api/v1/members/me/password")
        .bearer_auth(&ana_t)
        .json(&json!({"current_password": "not it at all", "new_password": "ana's new password"}))
        .send()
        .await
        .unwrap();
    let body = assert_error(res, 400, "validation_failed").await;
    assert_eq!(body["error"]["details"]["field"], "current_password");
    let res = app
        .post("/api/v1/members/me/password")
        .bearer_auth(&ana_t)
        .json(&json!({"current_password": PASSWORD, "new_password": "ana's new password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_error(
        other.get_as("/api/v1/members/me", &ana_t).await,
        401,
        "unauthorized",
    )
    .await;
    let ana_t = {
        let (status, body) = app.login("ana@example.com", "ana's new password").await;
        assert_eq!(status, 200);
        body["token"].as_str().unwrap().to_owned()
    };

    // The last enabled owner cannot be demoted, disabled or deleted.
    for (method, body) in [
        ("PATCH", json!({"role": "admin"})),
        ("PATCH", json!({"disabled": true})),
        ("DELETE", Value::Null),
    ] {
        let req = app
            .client
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                app.url(&format!("/api/v1/members/{ana_id}")),
            )
            .bearer_auth(&ana_t);
        let req = if body.is_null() { req } else { req.json(&body) };
        assert_error(req.send().await.unwrap(), 409, "last_owner").await;
    }
    // With a second owner, the first may step down.
    let res = app
        .patch(&format!("/api/v1/members/{carl_id}"))
        .bearer_auth(&ana_t)
        .json(&json!({"role": "owner"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .patch(&format!("/api/v1/members/{ana_id}"))
        .bearer_auth(&ana_t)
        .json(&json!({"role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // The new role holds at once: an admin may not manage members.
    let res = app
        .post("/api/v1/members")
        .bearer_auth(&ana_t)
        .json(
            &json!({"email": "d@example.com", "name": "D", "role": "agent", "password": PASSWORD}),
        )
        .send()
        .await
        .unwrap();
    assert_error(res, 403, "forbidden").await;
}

/// Whether a response is the refusal of a member's role (not a 403 for another reason).
async fn refused_for_role(res: reqwest::Response) -> bool {
    if res.status() != 403 {
        return false;
    }
    let body: Value = res.json().await.unwrap_or(Value::Null);
    let message = body["error"]["message"].as_str().unwrap_or("");
    body["error"]["code"] == "forbidden"
        && (message.contains(" role") || message == "a viewer reads only")
}

/// What the contract says each role may do, written out here independently of the server's
/// table: `owner` everything; `admin` all but members, keys, the tenant and its tier; `agent`
/// conversations (messages, chats, contacts, presence, media, cards, notifications, quick
/// replies) and reads; `viewer` reads. Anyone changes their own password; the audit log is
/// read by admins and owners.
fn role_may(role: &str, method: &Method, path: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches("/api/v1/").split('/').collect();
    let is_read = *method == Method::GET;
    let manage = !is_read && segments[0] == "members" && segments.get(1) != Some(&"me")
        || segments[0] == "tenants" && (!is_read || segments.get(2) == Some(&"api-keys"))
        // Changing the tier changes what the tenant pays.
        || !is_read && segments[0] == "tier";
    if role == "owner" {
        return true;
    }
    if manage {
        return false;
    }
    if segments[0] == "audit-log" {
        return matches!(role, "admin");
    }
    if is_read || segments.starts_with(&["members", "me"]) {
        return true;
    }
    let conversation = matches!(segments[0], "notifications" | "quick-replies")
        || segments[0] == "boards" && segments.get(2) == Some(&"cards")
        || segments[0] == "sessions"
            && segments.get(2).is_some_and(|s| {
                matches!(
                    *s,
                    "messages" | "send" | "chats" | "contacts" | "presence" | "media"
                )
            });
    match role {
        "admin" => true,
        "agent" => conversation,
        _ => false,
    }
}

#[actix_web::test]
async fn every_documented_route_refuses_exactly_what_each_role_may_not_do() {
    let app = spawn_app_with(|s| s.rate_limit.enabled = false).await;
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let mut tokens = Vec::new();
    for role in ["owner", "admin", "agent", "viewer"] {
        tokens.push((
            role,
            app.member_token(&key, &format!("{role}@example.com"), role)
                .await,
        ));
    }
    let doc = app.openapi().await;
    let mut checked = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        if !template.starts_with("/api/v1/") || template.starts_with("/api/v1/auth/") {
            continue;
        }
        // Every id is one nobody has: a permitted request finds nothing, changes nothing.
        let path = template
            .split('/')
            .map(|s| {
                if s.starts_with('{') {
                    if s.contains("chat") || s.contains("phone") {
                        "4915550000000".to_owned()
                    } else {
                        Uuid::new_v4().to_string()
                    }
                } else {
                    s.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            // The members' own routes are exercised elsewhere: deleting "a member" here
            // cannot hit one, but `members/me/password` with `{}` is harmless too.
            for (role, token) in &tokens {
                let res = app
                    .client
                    .request(method.clone(), app.url(&path))
                    .bearer_auth(token)
                    .json(&json!({}))
                    .send()
                    .await
                    .unwrap();
                let status = res.status().as_u16();
                let refused = refused_for_role(res).await;
                let may = role_may(role, &method, template);
                assert_eq!(
                    refused, !may,
                    "{role} {method} {template}: status {status}, refused for the role: {refused}"
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked > 400,
        "only {checked} requests: the walk missed the routes"
    );
}

#[actix_web::test]
async fn the_audit_log_records_who_did_what_and_never_a_secret() {
    let app = spawn_app().await;
    let (tenant, key) = app.create_tenant("Acme", "standard").await;
    let (_, key_b) = app.create_tenant("Globex", "standard").await;
    let key_id: String = app
        .get_json_as(&format!("/api/v1/tenants/{tenant}/api-keys"), &key)
        .await["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin = app.create_member(&key, "ana@example.com", "admin").await;
    let admin_id = admin["id"].as_str().unwrap().to_owned();
    let token = {
        let (_, body) = app.login("ana@example.com", PASSWORD).await;
        body["token"].as_str().unwrap().to_owned()
    };
    let agent = app.member_token(&key, "bob@example.com", "agent").await;
    // A member's change, and a refused one: both are recorded with their status.
    let res = app
        .put("/api/v1/automation/settings")
        .bearer_auth(&token)
        .json(&json!({"time_zone": "Europe/Berlin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .patch(&format!("/api/v1/members/{admin_id}"))
        .bearer_auth(&key)
        .json(&json!({"password": "the secret new one"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Reads are not audited.
    app.get_json_as("/api/v1/members", &key).await;

    let entries = app.audit_entries(&key, "", 6).await;
    let routes: Vec<String> = entries
        .iter()
        .map(|e| format!("{} {} {}", e["actor_kind"], e["method"], e["route"]))
        .collect();
    for expected in [
        r#""key" "POST" "/api/v1/members""#,
        r#""member" "POST" "/api/v1/auth/login""#,
        r#""member" "PUT" "/api/v1/automation/settings""#,
        r#""key" "PATCH" "/api/v1/members/{member_id}""#,
    ] {
        assert!(
            routes.iter().any(|r| r == expected),
            "{expected} in {routes:?}"
        );
    }
    assert!(!routes.iter().any(|r| r.contains("GET")), "{routes:?}");
    let patch = entries.iter().find(|e| e["method"] == "PATCH").unwrap();
    assert_eq!(patch["object_id"], admin_id.as_str());
    assert_eq!(patch["actor_id"], key_id.as_str());
    assert_eq!(patch["status"], 200);
    assert_eq!(patch["tenant_id"], tenant.to_string());
    assert!(patch["request_id"].is_string());

    // Filters: by actor, by action, by time.
    let mine = app
        .audit_entries(&key, &format!("actor=member:{admin_id}"), 2)
        .await;
    assert!(mine.iter().all(|e| e["actor_id"] == admin_id.as_str()));
    let patches = app.audit_entries(&key, "action=PATCH", 1).await;
    assert!(patches.iter().all(|e| e["method"] == "PATCH"));
    let by_route = app
        .audit_entries(&key, "action=PUT%20/api/v1/automation/settings", 1)
        .await;
    assert_eq!(by_route.len(), 1);
    let later = app
        .get_json_as("/api/v1/audit-log?since=2999-01-01T00:00:00Z", &key)
        .await;
    assert_eq!(later["items"], json!([]));
    let res = app.get_as("/api/v1/audit-log?since=yesterday", &key).await;
    let body = assert_error(res, 400, "validation_failed").await;
    assert_eq!(body["error"]["details"]["field"], "since");
    let res = app.get_as("/api/v1/audit-log?actor=robot:1", &key).await;
    assert_error(res, 400, "validation_failed").await;

    // Nothing stored holds a password, a hash or a key.
    let mut conn =
        <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(&app.db_url)
            .await
            .unwrap();
    #[derive(diesel::QueryableByName)]
    struct Dump {
        #[diesel(sql_type = diesel::sql_types::Text)]
        dump: String,
    }
    let dump: Vec<Dump> = diesel_async::RunQueryDsl::load(
        diesel::sql_query("SELECT row_to_json(a)::text AS dump FROM audit_log a"),
        &mut conn,
    )
    .await
    .unwrap();
    let all: String = dump.into_iter().map(|d| d.dump).collect();
    for secret in [
        PASSWORD,
        "the secret new one",
        key.as_str(),
        token.as_str(),
        "argon2",
    ] {
        assert!(!all.contains(secret), "the audit log holds {secret}");
    }

    // Another tenant sees none of it; an agent may not read it; the admin may.
    let theirs = app.get_json_as("/api/v1/audit-log", &key_b).await;
    assert_eq!(theirs["items"], json!([]));
    let res = app
        .get_as(&format!("/api/v1/audit-log?tenant_id={tenant}"), &key_b)
        .await;
    assert_error(res, 404, "not_found").await;
    assert_error(
        app.get_as("/api/v1/audit-log", &agent).await,
        403,
        "forbidden",
    )
    .await;
    let admins = app
        .get_json_as(&format!("/api/v1/audit-log?tenant_id={tenant}"), ADMIN_KEY)
        .await;
    assert!(admins["items"].as_array().unwrap().len() >= 6);
}

#[actix_web::test]
async fn another_tenant_gets_404_and_a_read_only_key_403_on_every_member_route() {
    let app = spawn_app().await;
    let (tenant_a, key_a) = app.create_tenant("Acme", "standard").await;
    let (_, key_b) = app.create_tenant("Globex", "standard").await;
    let viewer = app.read_only_key(tenant_a, &key_a).await;
    let ana = app.create_member(&key_a, "ana@example.com", "agent").await;
    let path = format!("/api/v1/members/{}", ana["id"].as_str().unwrap());
    assert_error(app.get_as(&path, &key_b).await, 404, "not_found").await;
    assert_eq!(app.get_as(&path, &viewer).await.status(), 200);
    let list = app.get_json_as("/api/v1/members", &key_b).await;
    assert_eq!(list["items"], json!([]));
    for (method, body) in [
        (Method::PATCH, json!({"name": "mine"})),
        (Method::DELETE, Value::Null),
    ] {
        let send = |credential: &str| {
            let req = app
                .client
                .request(method.clone(), app.url(&path))
                .bearer_auth(credential);
            if body.is_null() { req } else { req.json(&body) }
        };
        assert_error(send(&key_b).send().await.unwrap(), 404, "not_found").await;
        assert_error(send(&viewer).send().await.unwrap(), 403, "forbidden").await;
    }
    let res = app
        .post_json(
            &viewer,
            "/api/v1/members",
            json!({"email": "x@example.com", "name": "X", "role": "agent", "password": PASSWORD}),
        )
        .await;
    assert_error(res, 403, "forbidden").await;
    // The admin key must name the tenant; another tenant's key cannot name this one.
    let res = app
        .post_json(
            &key_b,
            "/api/v1/members",
            json!({"tenant_id": tenant_a, "email": "x@example.com", "name": "X", "role": "agent", "password": PASSWORD}),
        )
        .await;
    assert_error(res, 404, "not_found").await;
    let res = app
        .post_json(
            ADMIN_KEY,
            "/api/v1/members",
            json!({"tenant_id": tenant_a, "email": "x@example.com", "name": "X", "role": "agent", "password": PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), 201);
    // Nothing changed for the tenant.
    let still = app.get_json_as(&path, &key_a).await;
    assert_eq!(still["name"], "ana@example.com");
}
