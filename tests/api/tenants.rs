use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{ADMIN_KEY, assert_error, spawn_app};

#[actix_web::test]
async fn tenant_crud_round_trip() {
    let app = spawn_app().await;
    let res = app
        .post("/api/v1/tenants")
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"name": "  Acme  ", "tier": "professional"}))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.expect("json");
    assert_eq!(created["name"], "Acme", "names are trimmed");
    assert_eq!(created["tier"], "professional");
    let key = created["api_key"].as_str().expect("key shown once");
    assert!(key.starts_with("wag_") && key.len() >= 60, "{key}");
    let id = created["id"].as_str().expect("id").to_owned();

    let got: Value = app
        .get(&format!("/api/v1/tenants/{id}"))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(got["name"], "Acme");
    assert!(got.get("api_key").is_none(), "the key is never shown again");

    let res = app
        .patch(&format!("/api/v1/tenants/{id}"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"name": "Acme Corp", "tier": "enterprise"}))
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 200);
    let patched: Value = res.json().await.expect("json");
    assert_eq!(patched["name"], "Acme Corp");
    assert_eq!(patched["tier"], "enterprise");

    // The tenant's own key reads itself.
    let own: Value = app.get_json_as(&format!("/api/v1/tenants/{id}"), key).await;
    assert_eq!(own["tier"], "enterprise");

    let res = app
        .delete(&format!("/api/v1/tenants/{id}"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 204);
    let res = app
        .get_as(&format!("/api/v1/tenants/{id}"), ADMIN_KEY)
        .await;
    assert_error(res, 404, "not_found").await;
    // Its keys died with it, at once.
    let res = app.get_as(&format!("/api/v1/tenants/{id}"), key).await;
    assert_error(res, 401, "unauthorized").await;
    let res = app
        .delete(&format!("/api/v1/tenants/{id}"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("req");
    assert_error(res, 404, "not_found").await;
}

#[actix_web::test]
async fn tenants_list_pages_with_a_cursor() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.create_tenant(&format!("t{i}"), "standard").await.0);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = "/api/v1/tenants?limit=2".to_owned();
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = app.get_json_as(&url, ADMIN_KEY).await;
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|t| Uuid::parse_str(t["id"].as_str().expect("id")).expect("uuid")),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every tenant once, in creation order");
    let res = app.get_as("/api/v1/tenants?limit=501", ADMIN_KEY).await;
    let body = assert_error(res, 400, "validation_failed").await;
    assert_eq!(body["error"]["details"]["field"], "limit");
    let res = app
        .get_as("/api/v1/tenants?cursor=garbage", ADMIN_KEY)
        .await;
    let body = assert_error(res, 400, "validation_failed").await;
    assert_eq!(body["error"]["details"]["field"], "cursor");
    let res = app.get_as("/api/v1/tenants?limit=abc", ADMIN_KEY).await;
    let body = assert_error(res, 400, "validation_failed").await;
    assert_eq!(body["error"]["details"]["field"], "limit");
}

#[actix_web::test]
async fn api_keys_are_created_listed_and_revoked() {
    let app = spawn_app().await;
    let (tenant, first_key) = app.create_tenant("keys", "standard").await;
    // The tenant's owner key makes a read-only key for itself.
    let res = app
        .post(&format!("/api/v1/tenants/{tenant}/api-keys"))
        .bearer_auth(&first_key)
        .json(&json!({"name": "dashboard", "role": "read_only"}))
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.expect("json");
    let ro_key = created["key"].as_str().expect("key").to_owned();
    let ro_id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["role"], "read_only");

    let list: Value = app
        .get_json_as(&format!("/api/v1/tenants/{tenant}/api-keys"), &ro_key)
        .await;
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    let listed = serde_json::to_string(&list).expect("json");
    assert!(
        !listed.contains(&ro_key) && !listed.contains(&first_key),
        "secrets never listed"
    );
    assert!(!listed.contains("secret_hash"));
    let ro_item = items
        .iter()
        .find(|k| k["id"] == ro_id.as_str())
        .expect("listed");
    assert!(
        ro_item["last_used_at"].is_string(),
        "use is recorded: {ro_item}"
    );

    // Read-only keys read, and nothing else: not POST, nor DELETE, nor PATCH, and what
    // they tried is unchanged afterwards.
    let res = app
        .post(&format!("/api/v1/tenants/{tenant}/api-keys"))
        .bearer_auth(&ro_key)
        .send()
        .await
        .expect("req");
    assert_error(res, 403, "forbidden").await;
    let session = app.new_session(&first_key, "kept").await;
    let refused = [
        (
            reqwest::Method::DELETE,
            format!("/api/v1/sessions/{session}"),
            None,
        ),
        (
            reqwest::Method::DELETE,
            format!("/api/v1/tenants/{tenant}/api-keys/{ro_id}"),
            None,
        ),
        (
            reqwest::Method::PATCH,
            format!("/api/v1/sessions/{session}/chats/+15550001234"),
            Some(json!({"bot_enabled": false})),
        ),
        (
            reqwest::Method::PATCH,
            format!("/api/v1/tenants/{tenant}"),
            Some(json!({"name": "renamed"})),
        ),
    ];
    for (method, path, body) in refused {
        let mut req = app
            .client
            .request(method, app.url(&path))
            .bearer_auth(&ro_key);
        if let Some(body) = body {
            req = req.json(&body);
        }
        assert_error(req.send().await.expect("req"), 403, "forbidden").await;
    }
    let kept = app
        .get_json_as(&format!("/api/v1/sessions/{session}"), &ro_key)
        .await;
    assert_eq!(kept["name"], "kept");
    let unchanged = app
        .get_json_as(&format!("/api/v1/tenants/{tenant}"), &ro_key)
        .await;
    assert_eq!(unchanged["name"], "keys");
    let chats = app
        .get_json_as(&format!("/api/v1/sessions/{session}/chats"), &ro_key)
        .await;
    assert_eq!(chats["items"].as_array().map(Vec::len), Some(0), "{chats}");

    // A key posted with no body gets the least privilege: read-only.
    let res = app
        .post(&format!("/api/v1/tenants/{tenant}/api-keys"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 201);
    let no_body: Value = res.json().await.expect("json");
    assert_eq!(no_body["role"], "read_only");
    // A body that is there but does not parse is refused, never read as the default: sent
    // as text/plain, with no content type, with a trailing comma, or a misspelt role.
    let post_key = |content_type: Option<&'static str>, body: &'static str| {
        let mut req = app
            .post(&format!("/api/v1/tenants/{tenant}/api-keys"))
            .bearer_auth(ADMIN_KEY)
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.send()
    };
    let cases = [
        (
            Some("text/plain"),
            r#"{"role":"read_only"}"#,
            415,
            "unsupported_media_type",
        ),
        (
            None,
            r#"{"role":"read_only"}"#,
            415,
            "unsupported_media_type",
        ),
        (
            Some("application/json"),
            r#"{"role":"owner",}"#,
            400,
            "malformed_json",
        ),
        (
            Some("application/json"),
            r#"{"role":"readonly"}"#,
            400,
            "validation_failed",
        ),
    ];
    let keys_before = app
        .get_json_as(&format!("/api/v1/tenants/{tenant}/api-keys"), ADMIN_KEY)
        .await["items"]
        .as_array()
        .map(Vec::len);
    for (content_type, body, status, code) in cases {
        let res = post_key(content_type, body).await.expect("req");
        assert_error(res, status, code).await;
    }
    let keys_after = app
        .get_json_as(&format!("/api/v1/tenants/{tenant}/api-keys"), ADMIN_KEY)
        .await["items"]
        .as_array()
        .map(Vec::len);
    assert_eq!(keys_before, keys_after, "no key was made");
    let res = post_key(Some("application/json"), r#"{"role":"owner"}"#)
        .await
        .expect("req");
    assert_eq!(res.status(), 201);
    assert_eq!(res.json::<Value>().await.expect("json")["role"], "owner");

    let res = app
        .delete(&format!("/api/v1/tenants/{tenant}/api-keys/{ro_id}"))
        .bearer_auth(&first_key)
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 204);
    let res = app
        .get_as(&format!("/api/v1/tenants/{tenant}"), &ro_key)
        .await;
    assert_error(res, 401, "unauthorized").await;
    let res = app
        .delete(&format!("/api/v1/tenants/{tenant}/api-keys/{ro_id}"))
        .bearer_auth(&first_key)
        .send()
        .await
        .expect("req");
    assert_error(res, 404, "not_found").await;
    let list: Value = app
        .get_json_as(&format!("/api/v1/tenants/{tenant}/api-keys"), &first_key)
        .await;
    let revoked = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|k| k["id"] == ro_id.as_str())
        .expect("still listed");
    assert!(revoked["revoked_at"].is_string());
}

/// The isolation pattern every tenant-owned route follows: another tenant's resource is a 404
/// indistinguishable from one that does not exist, and nothing of it changes.
#[actix_web::test]
async fn a_tenant_never_sees_another_tenants_resources() {
    let app = spawn_app().await;
    let (a, key_a) = app.create_tenant("tenant-a", "standard").await;
    let (b, key_b) = app.create_tenant("tenant-b", "standard").await;
    let b_keys: Value = app
        .get_json_as(&format!("/api/v1/tenants/{b}/api-keys"), &key_b)
        .await;
    let b_key_id = b_keys["items"][0]["id"].as_str().expect("id").to_owned();
    let missing = Uuid::now_v7();

    for (method, path) in [
        ("GET", format!("/api/v1/tenants/{b}")),
        ("PATCH", format!("/api/v1/tenants/{b}")),
        ("DELETE", format!("/api/v1/tenants/{b}")),
        ("GET", format!("/api/v1/tenants/{b}/api-keys")),
        ("POST", format!("/api/v1/tenants/{b}/api-keys")),
        ("DELETE", format!("/api/v1/tenants/{b}/api-keys/{b_key_id}")),
    ] {
        let foreign = path.clone();
        let nonexistent = path.replace(&b.to_string(), &missing.to_string());
        let mut bodies = Vec::new();
        for p in [foreign, nonexistent] {
            let req = match method {
                "GET" => app.get(&p),
                "PATCH" => app.patch(&p).json(&json!({"name": "pwned"})),
                "DELETE" => app.delete(&p),
                _ => app.post(&p).json(&json!({})),
            };
            let res = req.bearer_auth(&key_a).send().await.expect("req");
            let mut body = assert_error(res, 404, "not_found").await;
            body["request_id"] = Value::Null;
            bodies.push(body);
        }
        assert_eq!(
            bodies[0], bodies[1],
            "{method} {path}: foreign and missing look the same"
        );
    }
    // B is untouched and its key still works.
    let b_now: Value = app
        .get_json_as(&format!("/api/v1/tenants/{b}"), &key_b)
        .await;
    assert_eq!(b_now["name"], "tenant-b");
    let b_keys_after: Value = app
        .get_json_as(&format!("/api/v1/tenants/{b}/api-keys"), &key_b)
        .await;
    assert_eq!(b_keys_after["items"].as_array().map(Vec::len), Some(1));
    // Admin-only actions on its own tenant are 403 for a tenant; listing all tenants too.
    let res = app
        .patch(&format!("/api/v1/tenants/{a}"))
        .bearer_auth(&key_a)
        .json(&json!({"tier": "enterprise"}))
        .send()
        .await
        .expect("req");
    assert_error(res, 403, "forbidden").await;
    let res = app.get_as("/api/v1/tenants", &key_a).await;
    assert_error(res, 403, "forbidden").await;
    let res = app
        .post("/api/v1/tenants")
        .bearer_auth(&key_a)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .expect("req");
    assert_error(res, 403, "forbidden").await;
}
