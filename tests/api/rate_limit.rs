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
