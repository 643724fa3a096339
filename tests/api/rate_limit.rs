use serde_json::json;

use crate::helpers::{ADMIN_KEY, assert_error, spawn_app_with};
use wagate::configuration::LimitSettings;

#[actix_web::test]
async fn each_tenant_has_its_own_budget_per_route_class() {
    let app = spawn_app_with(|s| {
        s.rate_limit.standard = LimitSettings {
            limit: 3,
            window_secs: 60,
        };
        s.rate_limit.sensitive = LimitSettings {
            limit: 1,
            window_secs: 60,
        };
    })
    .await;
    let (a, key_a) = app.create_tenant("a", "standard").await;
    let (b, key_b) = app.create_tenant("b", "standard").await;
    for i in 0..3 {
        let res = app.get_as(&format!("/api/v1/tenants/{a}"), &key_a).await;
        assert_eq!(res.status(), 200, "request {i}");
        assert_eq!(res.headers()["x-ratelimit-limit"], "3");
        assert_eq!(
            res.headers()["x-ratelimit-remaining"],
            (2 - i).to_string().as_str()
        );
    }
    let res = app.get_as(&format!("/api/v1/tenants/{a}"), &key_a).await;
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .expect("str")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    let err = assert_error(res, 429, "rate_limited").await;
    assert_eq!(err["error"]["details"]["class"], "standard");
    // Another tenant is not affected.
    let res = app.get_as(&format!("/api/v1/tenants/{b}"), &key_b).await;
    assert_eq!(res.status(), 200);
    // The destructive class is separate and stricter: B creates one key, the second is refused.
    let res = app
        .post(&format!("/api/v1/tenants/{b}/api-keys"))
        .bearer_auth(&key_b)
        .json(&json!({}))
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 201);
    let res = app
        .post(&format!("/api/v1/tenants/{b}/api-keys"))
        .bearer_auth(&key_b)
        .json(&json!({}))
        .send()
        .await
        .expect("req");
    let err = assert_error(res, 429, "rate_limited").await;
    assert_eq!(err["error"]["details"]["class"], "sensitive");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"wagate_rate_limited_total{class="standard"}"#),
        "{metrics}"
    );
}

#[actix_web::test]
async fn token_exchange_is_limited_per_client_address() {
    let app = spawn_app_with(|s| {
        s.rate_limit.auth = LimitSettings {
            limit: 2,
            window_secs: 60,
        }
    })
    .await;
    for _ in 0..2 {
        let res = app.post("/api/v1/auth/token").json(&json!({"api_key": "wag_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"})).send().await.expect("req");
        assert_error(res, 401, "unauthorized").await;
    }
    let res = app
        .post("/api/v1/auth/token")
        .json(&json!({"api_key": "guess"}))
        .send()
        .await
        .expect("req");
    let err = assert_error(res, 429, "rate_limited").await;
    assert_eq!(err["error"]["details"]["class"], "auth");
    // The admin has its own class and is not blocked by it.
    let res = app.get_as("/api/v1/tenants", ADMIN_KEY).await;
    assert_eq!(res.status(), 200);
}

/// A client sending from `ip` (any 127/8 address reaches the test server on loopback).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().expect("ip"))
        .build()
        .expect("client")
}

/// Failed authentications are limited per client address and per key prefix: past the limit
/// every attempt from there, even with a right key, is 429 with retry-after; other addresses
/// and other keys are not affected.
#[actix_web::test]
async fn failed_authentication_is_limited_per_address_and_per_key_prefix() {
    let app = spawn_app_with(|s| {
        s.rate_limit.failed_auth = LimitSettings {
            limit: 5,
            window_secs: 60,
        };
    })
    .await;
    let (tenant, key) = app.create_tenant("a", "standard").await;
    let (_other, other_key) = app.create_tenant("b", "standard").await;
    let url = app.url(&format!("/api/v1/tenants/{tenant}"));
    let get = |client: &reqwest::Client, credential: &str| {
        client.get(&url).bearer_auth(credential.to_owned()).send()
    };
    let wrong_key = |i: usize| format!("wag_{:016x}_{}", 0xabc0 + i, "x".repeat(43));

    // One address guessing: five 401s, then 429 for wrong and right keys alike.
    let guesser = client_from("127.0.0.2");
    for i in 0..5 {
        let res = get(&guesser, &wrong_key(i)).await.expect("req");
        assert_error(res, 401, "unauthorized").await;
    }
    let res = get(&guesser, &wrong_key(9)).await.expect("req");
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .expect("str")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    let err = assert_error(res, 429, "rate_limited").await;
    assert_eq!(err["error"]["details"]["class"], "failed_auth");
    let res = get(&guesser, &key).await.expect("req");
    assert_error(res, 429, "rate_limited").await;
    // Token exchange from there is refused too.
    let res = guesser
        .post(app.url("/api/v1/auth/token"))
        .json(&json!({"api_key": key}))
        .send()
        .await
        .expect("req");
    assert_error(res, 429, "rate_limited").await;
    // Another address is not affected.
    let res = get(&client_from("127.0.0.3"), &key).await.expect("req");
    assert_eq!(res.status(), 200);

    // Guesses at one key's secret from many addresses: its prefix is locked.
    // `wag_<prefix>_<secret>`; the secret is base64url and may hold '_' itself.
    let prefix = key.splitn(3, '_').take(2).collect::<Vec<_>>().join("_");
    assert_eq!(prefix.len(), 4 + 16, "{key}");
    for i in 0..6 {
        let guess = format!("{prefix}_{}", format!("{i}").repeat(43));
        let res = get(&client_from(&format!("127.0.1.{}", i + 1)), &guess)
            .await
            .expect("req");
        let expected = if i < 5 { 401 } else { 429 };
        assert_eq!(res.status(), expected, "guess {i}");
    }
    let fresh = client_from("127.0.2.1");
    let res = get(&fresh, &key).await.expect("req");
    assert_error(res, 429, "rate_limited").await;
    // Another tenant's key from that fresh address still works.
    let res = fresh
        .get(app.url("/api/v1/tenants"))
        .bearer_auth(&other_key)
        .send()
        .await
        .expect("req");
    assert_ne!(res.status(), 429);
    assert_ne!(res.status(), 401);
}
