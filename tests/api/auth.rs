use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, JWT_SECRET, TestApp, assert_error, spawn_app, spawn_app_with};

#[actix_web::test]
async fn every_way_to_fail_authentication_is_a_401() {
    let app = spawn_app().await;
    let (tenant, _) = app.create_tenant("auth", "standard").await;
    let path = format!("/api/v1/tenants/{tenant}");
    let cases: Vec<(&str, Option<(&str, String)>)> = vec![
        ("no credentials", None),
        ("empty bearer", Some(("authorization", "Bearer ".into()))),
        (
            "wrong scheme",
            Some(("authorization", format!("Basic {ADMIN_KEY}"))),
        ),
        ("garbage", Some(("authorization", "Bearer hello".into()))),
        (
            "admin key off by one",
            Some(("x-api-key", format!("{ADMIN_KEY}x"))),
        ),
        (
            "unknown well-formed key",
            Some((
                "x-api-key",
                "wag_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
            )),
        ),
        (
            "bad jwt",
            Some((
                "authorization",
                "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln".into(),
            )),
        ),
    ];
    for (what, header) in cases {
        let mut req = app.get(&path);
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        let res = req.send().await.expect("req");
        assert_eq!(res.status(), 401, "{what}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer", "{what}");
        assert_error(res, 401, "unauthorized").await;
    }
}

#[actix_web::test]
async fn a_key_with_a_wrong_secret_is_refused() {
    let app = spawn_app().await;
    let (tenant, key) = app.create_tenant("secret", "standard").await;
    // Same prefix, different secret: the prefix finds the row, the secret must still match.
    let (head, _) = key.rsplit_once('_').expect("shape");
    let forged = format!("{head}_{}", "B".repeat(43));
    let res = app
        .get_as(&format!("/api/v1/tenants/{tenant}"), &forged)
        .await;
    assert_error(res, 401, "unauthorized").await;
}

#[actix_web::test]
async fn an_api_key_is_traded_for_a_token_that_works_until_the_key_is_revoked() {
    let app = spawn_app().await;
    let (tenant, key) = app.create_tenant("tokens", "standard").await;
    let res = app
        .post("/api/v1/auth/token")
        .json(&json!({"api_key": key}))
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    let token = body["token"].as_str().expect("token").to_owned();
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().expect("exp"))
            .expect("rfc3339");
    let left = expires_at
        .signed_duration_since(chrono::Utc::now())
        .num_seconds();
    assert!(
        (3500..=3600).contains(&left),
        "expires within the hour: {left}"
    );

    // The claims say who it is for.
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&["wagate"]);
    let claims = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &validation,
    )
    .expect("valid HS256 token")
    .claims;
    assert_eq!(claims["tenant_id"], tenant.to_string());
    assert_eq!(claims["role"], "owner");

    let res = app
        .get_as(&format!("/api/v1/tenants/{tenant}"), &token)
        .await;
    assert_eq!(res.status(), 200);

    // Neither the admin key nor a token can be traded.
    let res = app
        .post("/api/v1/auth/token")
        .json(&json!({"api_key": ADMIN_KEY}))
        .send()
        .await
        .expect("req");
    assert_error(res, 401, "unauthorized").await;
    let res = app
        .post("/api/v1/auth/token")
        .json(&json!({"api_key": token}))
        .send()
        .await
        .expect("req");
    assert_error(res, 401, "unauthorized").await;
    let res = app
        .post("/api/v1/auth/token")
        .json(&json!({"key": "x"}))
        .send()
        .await
        .expect("req");
    let err = assert_error(res, 400, "validation_failed").await;
    assert_eq!(err["error"]["details"]["field"], "key");

    // Revoking the key ends the token at once.
    let keys: Value = app
        .get_json_as(&format!("/api/v1/tenants/{tenant}/api-keys"), ADMIN_KEY)
        .await;
    let key_id = keys["items"][0]["id"].as_str().expect("id").to_owned();
    let res = app
        .delete(&format!("/api/v1/tenants/{tenant}/api-keys/{key_id}"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 204);
    let res = app
        .get_as(&format!("/api/v1/tenants/{tenant}"), &token)
        .await;
    assert_error(res, 401, "unauthorized").await;
}

#[actix_web::test]
async fn expired_and_forged_tokens_are_refused() {
    let app = spawn_app_with(|s| s.auth.jwt_ttl_secs = 1).await;
    let (tenant, key) = app.create_tenant("expiry", "standard").await;
    let body: Value = app
        .post("/api/v1/auth/token")
        .json(&json!({"api_key": key}))
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    let token = body["token"].as_str().expect("token").to_owned();
    assert_eq!(
        app.get_as(&format!("/api/v1/tenants/{tenant}"), &token)
            .await
            .status(),
        200
    );

    // A token whose exp has passed (made with the real secret) is refused with the reason.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_exp = false;
    let mut claims = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &validation,
    )
    .expect("decode")
    .claims;
    claims["exp"] = json!(now - 10);
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("encode");
    let res = app
        .get_as(&format!("/api/v1/tenants/{tenant}"), &expired)
        .await;
    let err = assert_error(res, 401, "unauthorized").await;
    assert!(
        err["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("expired"),
        "{err}"
    );

    // The same claims signed with another secret, and with the role raised, are refused.
    claims["exp"] = json!(now + 600);
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-another"),
    )
    .expect("encode");
    let res = app
        .get_as(&format!("/api/v1/tenants/{tenant}"), &forged)
        .await;
    assert_error(res, 401, "unauthorized").await;
    let none_alg = format!(
        "{}.{}.",
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0",
        token.split('.').nth(1).expect("payload")
    );
    let res = app
        .get_as(&format!("/api/v1/tenants/{tenant}"), &none_alg)
        .await;
    assert_error(res, 401, "unauthorized").await;

    // And the issued 1 s token itself expires.
    actix_web::rt::time::sleep(std::time::Duration::from_millis(2100)).await;
    let res = app
        .get_as(&format!("/api/v1/tenants/{tenant}"), &token)
        .await;
    assert_error(res, 401, "unauthorized").await;
}

/// Every node caches verified keys; a key revoked through one node, a tenant deleted through
/// another, and a key revoked in the database by hand all fail on every node as soon as its
/// listener has read the notice Postgres sent at the commit (the node that made the change:
/// at the very next request), for API keys and for the tokens traded for them.
#[actix_web::test]
async fn a_revoked_key_fails_at_once_on_every_node_that_cached_it() {
    use wagate::auth::cache::CredentialKey;
    let a = spawn_app().await;
    let b = a.second_node(|_| {}).await;
    for node in [&a, &b] {
        let started = std::time::Instant::now();
        while !node.state.credentials.is_listening() {
            assert!(started.elapsed().as_secs() < 10, "a node never listened");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let (tenant, key) = a.create_tenant("fleet", "standard").await;
    let path = format!("/api/v1/tenants/{tenant}");
    let new_key = |name: &'static str| {
        let a = &a;
        async move {
            let res = a
                .post(&format!("/api/v1/tenants/{tenant}/api-keys"))
                .bearer_auth(ADMIN_KEY)
                .json(&json!({"name": name, "role": "owner"}))
                .send()
                .await
                .expect("req");
            assert_eq!(res.status(), 201);
            let body: Value = res.json().await.expect("json");
            (
                body["key"].as_str().expect("key").to_owned(),
                body["id"].as_str().expect("id").to_owned(),
            )
        }
    };
    let prefix =
        |key: &str| CredentialKey::Prefix(key.split('_').nth(1).expect("prefix").to_owned());
    let (revoked, revoked_id) = new_key("revoked through a").await;
    let res = a
        .post("/api/v1/auth/token")
        .json(&json!({"api_key": revoked}))
        .send()
        .await
        .expect("req");
    let token: Value = res.json().await.expect("json");
    let token = token["token"].as_str().expect("token").to_owned();
    // Both nodes have verified it, and keep it: the next request reads no key row.
    for node in [&a, &b] {
        for credential in [&revoked, &token, &key] {
            assert_eq!(node.get_as(&path, credential).await.status(), 200);
        }
        assert!(node.state.credentials.get(&prefix(&revoked)).is_some());
        assert!(node.state.credentials.get(&prefix(&key)).is_some());
    }

    let res = a
        .delete(&format!("/api/v1/tenants/{tenant}/api-keys/{revoked_id}"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 204);
    // The node that revoked it refuses it at once; the other one once its listener has read
    // the notice (a few milliseconds, more on a loaded machine).
    assert_error(a.get_as(&path, &revoked).await, 401, "unauthorized").await;
    forgotten(&b, &prefix(&revoked)).await;
    for node in [&b, &a] {
        assert_error(node.get_as(&path, &revoked).await, 401, "unauthorized").await;
        assert_error(node.get_as(&path, &token).await, 401, "unauthorized").await;
        // The tenant's other key still stands (read again, and cached again).
        assert_eq!(node.get_as(&path, &key).await.status(), 200);
    }

    // Revoked by hand in the database: the trigger tells every node.
    let (by_hand, by_hand_id) = new_key("revoked by hand").await;
    for node in [&a, &b] {
        assert_eq!(node.get_as(&path, &by_hand).await.status(), 200);
    }
    a.execute_sql(&format!(
        "UPDATE api_keys SET revoked_at = now() WHERE id = '{by_hand_id}'"
    ))
    .await;
    for node in [&a, &b] {
        forgotten(node, &prefix(&by_hand)).await;
        assert_error(node.get_as(&path, &by_hand).await, 401, "unauthorized").await;
    }

    // The tenant deleted through b: its key fails on b at once, and on a once it has heard.
    assert_eq!(a.get_as(&path, &key).await.status(), 200);
    assert!(a.state.credentials.get(&prefix(&key)).is_some());
    let res = b
        .delete(&format!("/api/v1/tenants/{tenant}"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 204);
    assert_error(
        b.get_as("/api/v1/sessions", &key).await,
        401,
        "unauthorized",
    )
    .await;
    forgotten(&a, &prefix(&key)).await;
    assert_error(
        a.get_as("/api/v1/sessions", &key).await,
        401,
        "unauthorized",
    )
    .await;
}

/// Waits (at most 5 s) until `node` has dropped a cached credential on hearing its change.
async fn forgotten(node: &TestApp, key: &wagate::auth::cache::CredentialKey) {
    let started = std::time::Instant::now();
    while node.state.credentials.get(key).is_some() {
        assert!(
            started.elapsed().as_secs() < 5,
            "a node kept a changed credential cached"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A node that cannot hear other nodes' changes (its listening connection is gone) caches
/// nothing until it hears again, and then starts from an empty cache.
#[actix_web::test]
async fn a_node_that_stops_hearing_changes_stops_caching() {
    use wagate::auth::cache::CredentialKey;
    let app = spawn_app().await;
    let started = std::time::Instant::now();
    while !app.state.credentials.is_listening() {
        assert!(started.elapsed().as_secs() < 10, "the node never listened");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (tenant, key) = app.create_tenant("deaf", "standard").await;
    let path = format!("/api/v1/tenants/{tenant}");
    let cached = CredentialKey::Prefix(key.split('_').nth(1).expect("prefix").to_owned());
    assert_eq!(app.get_as(&path, &key).await.status(), 200);
    assert!(app.state.credentials.get(&cached).is_some());
    app.execute_sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN wagate_credentials%'",
    )
    .await;
    let started = std::time::Instant::now();
    while app.state.credentials.is_listening() && app.state.credentials.get(&cached).is_some() {
        assert!(started.elapsed().as_secs() < 10, "the node did not notice");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Deaf or listening again: either way the entry is gone, and the key still works.
    assert!(app.state.credentials.get(&cached).is_none());
    assert_eq!(app.get_as(&path, &key).await.status(), 200);
    let started = std::time::Instant::now();
    while !app.state.credentials.is_listening() {
        assert!(
            started.elapsed().as_secs() < 10,
            "the node never listened again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(app.get_as(&path, &key).await.status(), 200);
    assert!(
        app.state.credentials.get(&cached).is_some(),
        "caching again"
    );
}
