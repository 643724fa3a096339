//! Tiers: the catalogue, usage against each quota, warnings (and their notifications),
//! quotas enforced and named where resources are created, recommendations and costs from
//! the last 30 days, and who may change a tier. Moving live sessions between pools is in
//! `sessions/linked.rs` (it needs linked sessions).

use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, TestApp, assert_error, spawn_app};

fn usage_of<'a>(tier: &'a Value, quota: &str) -> &'a Value {
    tier["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["quota"] == quota)
        .unwrap_or_else(|| panic!("no {quota} in {tier}"))
}

impl TestApp {
    /// `quota.warning` notifications of a tenant for one quota.
    async fn quota_notices(&self, tenant: uuid::Uuid, quota: &str) -> i64 {
        self.count_sql(&format!(
            "SELECT count(*) AS n FROM notifications WHERE tenant_id = '{tenant}' \
               AND kind = 'quota.warning' AND data->>'quota' = '{quota}'"
        ))
        .await
    }
}

#[actix_web::test]
async fn the_catalogue_usage_warnings_and_quotas_enforced_where_resources_are_made() {
    let app = spawn_app().await;
    let (tenant, key) = app.create_tenant("small", "standard").await;

    let tiers = app.get_json_as("/api/v1/tiers", &key).await;
    let items = tiers["items"].as_array().unwrap();
    let names: Vec<&str> = items.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["standard", "professional", "enterprise"]);
    // From config: sessions.quotas, ai.tokens_per_day, tiers.*, sessions.pools.
    assert_eq!(
        items[0]["quotas"],
        json!({"sessions": 1, "messages_per_minute": 30, "ai_tokens_per_day": 200000,
               "ai_calls_per_minute": 30, "boards": 3, "functions": 5})
    );
    assert_eq!(items[0]["price_usd_per_month"], 29.0);
    assert_eq!(
        items[0]["pool"],
        json!({"sessions_per_connection": 10, "dedicated": false})
    );
    assert_eq!(items[2]["pool"]["dedicated"], true);

    let tier = app.get_json_as("/api/v1/tier", &key).await;
    assert_eq!(tier["tier"]["name"], "standard");
    assert_eq!(
        usage_of(&tier, "sessions"),
        &json!({"quota": "sessions", "limit": 1, "used": 0, "percent": 0})
    );
    let warnings = app.get_json_as("/api/v1/tier/warnings", &key).await;
    assert_eq!(warnings["items"], json!([]));

    // The one session standard allows: 100 %, a critical warning, one notification.
    app.new_session(&key, "only").await;
    let tier = app.get_json_as("/api/v1/tier", &key).await;
    assert_eq!(usage_of(&tier, "sessions")["percent"], 100);
    let warnings = app.get_json_as("/api/v1/tier/warnings", &key).await;
    let items = warnings["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{warnings}");
    assert_eq!(
        (&items[0]["quota"], &items[0]["level"]),
        (&json!("sessions"), &json!("critical"))
    );
    assert_eq!(app.quota_notices(tenant, "sessions").await, 1);
    let err = assert_error(
        app.create_session(&key, "second").await,
        403,
        "quota_exceeded",
    )
    .await;
    assert_eq!(err["error"]["details"]["quota"], "sessions", "{err}");

    // Boards: 3 on standard. Two are under 80 % (no notice), the third reaches it.
    for (i, notices) in [(1, 0), (2, 0), (3, 1)] {
        app.create_board(&key, json!({"name": format!("board {i}")}))
            .await;
        assert_eq!(
            app.quota_notices(tenant, "boards").await,
            notices,
            "board {i}"
        );
    }
    let res = app
        .post_json(&key, "/api/v1/boards", json!({"name": "one too many"}))
        .await;
    let err = assert_error(res, 403, "quota_exceeded").await;
    assert_eq!(
        err["error"]["details"],
        json!({"quota": "boards", "limit": 3, "tier": "standard"})
    );
    // Warned once a day, however many times it is reached.
    assert_eq!(app.quota_notices(tenant, "boards").await, 1);

    // AI tokens used today count against the day's quota.
    app.execute_sql(&format!(
        "INSERT INTO ai_calls (id, tenant_id, kind, model, prompt_tokens, output_tokens, cached) \
         VALUES (gen_random_uuid(), '{tenant}', 'generate', 'gemini-2.0-flash', 150000, 20000, false)"
    ))
    .await;
    let tier = app.get_json_as("/api/v1/tier", &key).await;
    assert_eq!(
        usage_of(&tier, "ai_tokens_per_day"),
        &json!({"quota": "ai_tokens_per_day", "limit": 200000, "used": 170000, "percent": 85})
    );
    let warnings = app.get_json_as("/api/v1/tier/warnings", &key).await;
    let levels: Vec<(String, String)> = warnings["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["quota"].as_str().unwrap().to_owned(),
                w["level"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        levels,
        [
            ("sessions".to_owned(), "critical".to_owned()),
            ("ai_tokens_per_day".to_owned(), "warning".to_owned()),
            ("boards".to_owned(), "critical".to_owned()),
        ]
    );

    // The admin reads any tenant's; another tenant naming it gets 404.
    let tier = app
        .get_json_as(&format!("/api/v1/tier?tenant_id={tenant}"), ADMIN_KEY)
        .await;
    assert_eq!(usage_of(&tier, "boards")["used"], 3);
    let (_, other) = app.create_tenant("other", "enterprise").await;
    assert_error(
        app.get_as(&format!("/api/v1/tier?tenant_id={tenant}"), &other)
            .await,
        404,
        "not_found",
    )
    .await;
    let theirs = app.get_json_as("/api/v1/tier", &other).await;
    assert_eq!(usage_of(&theirs, "boards")["used"], 0);
}

#[actix_web::test]
async fn recommendations_and_costs_come_from_the_last_30_days() {
    let app = spawn_app().await;
    // Standard, but its agents used 500,000 tokens on one day last week: professional fits.
    let (busy, busy_key) = app.create_tenant("busy", "standard").await;
    app.execute_sql(&format!(
        "INSERT INTO ai_calls (id, tenant_id, kind, model, prompt_tokens, output_tokens, cached, created_at) \
         VALUES (gen_random_uuid(), '{busy}', 'generate', 'gemini-2.0-flash', 400000, 100000, false, \
           now() - interval '6 days')"
    ))
    .await;
    let r = app
        .get_json_as("/api/v1/tier/recommendations", &busy_key)
        .await;
    assert_eq!(
        (&r["current"], &r["recommended"], &r["action"]),
        (
            &json!("standard"),
            &json!("professional"),
            &json!("upgrade")
        ),
        "{r}"
    );
    assert_eq!(r["peaks"]["ai_tokens_per_day"], 500_000);
    assert_eq!(r["tiers"][0]["tight_quota"], "ai_tokens_per_day");
    assert!(
        r["reasons"][0]
            .as_str()
            .unwrap()
            .contains("500000 ai tokens per day"),
        "{r}"
    );
    let c = app
        .get_json_as("/api/v1/tier/cost-analysis", &busy_key)
        .await;
    // 400,000 × 0.10 + 100,000 × 0.40 per million = 0.08 USD, on a 29 USD tier.
    assert_eq!(c["ai_cost_usd"], 0.08, "{c}");
    assert_eq!(c["total_usd"], 29.08);
    assert_eq!(c["alternatives"]["standard"]["fits"], false);
    assert_eq!(c["alternatives"]["professional"]["fits"], true);
    assert_eq!(c["alternatives"]["professional"]["total_usd"], 99.08);

    // Enterprise with next to nothing used: standard would do.
    let (_, idle_key) = app.create_tenant("idle", "enterprise").await;
    let r = app
        .get_json_as("/api/v1/tier/recommendations", &idle_key)
        .await;
    assert_eq!(
        (&r["recommended"], &r["action"]),
        (&json!("standard"), &json!("downgrade")),
        "{r}"
    );
    let c = app
        .get_json_as("/api/v1/tier/cost-analysis", &idle_key)
        .await;
    assert_eq!(c["cost_per_message_usd"], Value::Null);
    assert_eq!(c["total_usd"], 499.0);
}

#[actix_web::test]
async fn only_an_owner_changes_the_tier_and_a_downgrade_that_does_not_fit_is_refused() {
    let app = spawn_app().await;
    let (tenant, key) = app.create_tenant("grower", "professional").await;
    for name in ["one", "two"] {
        app.new_session(&key, name).await;
    }
    let viewer = app.read_only_key(tenant, &key).await;
    let res = app
        .post_json(
            &viewer,
            "/api/v1/tier/upgrade",
            json!({"tier": "enterprise"}),
        )
        .await;
    assert_error(res, 403, "forbidden").await;

    for (path, body, field) in [
        ("/api/v1/tier/upgrade", json!({"tier": "gold"}), "tier"),
        ("/api/v1/tier/upgrade", json!({"tier": "standard"}), "tier"),
        (
            "/api/v1/tier/downgrade",
            json!({"tier": "enterprise"}),
            "tier",
        ),
    ] {
        let err = assert_error(
            app.post_json(&key, path, body).await,
            400,
            "validation_failed",
        )
        .await;
        assert_eq!(err["error"]["details"]["field"], field);
    }
    let err = assert_error(
        app.post_json(&key, "/api/v1/tier/downgrade", json!({"tier": "standard"}))
            .await,
        409,
        "tier_does_not_fit",
    )
    .await;
    assert_eq!(
        err["error"]["details"],
        json!({"quota": "sessions", "used": 2, "limit": 1, "tier": "standard"})
    );
    let t = app.get_json_as("/api/v1/tier", &key).await;
    assert_eq!(t["tier"]["name"], "professional", "nothing changed");

    let res = app
        .post_json(&key, "/api/v1/tier/upgrade", json!({"tier": "enterprise"}))
        .await;
    assert_eq!(res.status(), 200);
    let changed: Value = res.json().await.unwrap();
    assert_eq!(
        (&changed["from"], &changed["tier"]["name"]),
        (&json!("professional"), &json!("enterprise"))
    );
    assert_eq!(usage_of(&changed, "sessions")["limit"], 10);
    let t = app
        .get_json_as(&format!("/api/v1/tenants/{tenant}"), ADMIN_KEY)
        .await;
    assert_eq!(t["tier"], "enterprise");
    // The change is in the audit log (written in batches: soon, not at once).
    let started = std::time::Instant::now();
    loop {
        let audit = app
            .get_json_as("/api/v1/audit-log?action=POST%20/api/v1/tier/upgrade", &key)
            .await;
        let statuses: Vec<i64> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["status"].as_i64().unwrap())
            .collect();
        if statuses.contains(&200) {
            break;
        }
        assert!(started.elapsed().as_secs() < 10, "not audited: {audit}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Every new read names its tenant only for the admin: another tenant's id is a 404, and a
/// read-only key reads but changes nothing.
#[actix_web::test]
async fn another_tenant_gets_404_and_a_read_only_key_403_on_the_statistics_and_tier_routes() {
    let app = spawn_app().await;
    let (a, key_a) = app.create_tenant("a", "standard").await;
    let (b, key_b) = app.create_tenant("b", "standard").await;
    let viewer = app.read_only_key(b, &key_b).await;
    for path in [
        "/api/v1/stats/overview",
        "/api/v1/stats/messages",
        "/api/v1/stats/agents",
        "/api/v1/stats/realtime",
        "/api/v1/stats/export?kind=cards",
        "/api/v1/reports",
        "/api/v1/tier",
        "/api/v1/tier/warnings",
        "/api/v1/tier/recommendations",
        "/api/v1/tier/cost-analysis",
    ] {
        let sep = if path.contains('?') { '&' } else { '?' };
        assert_error(
            app.get_as(&format!("{path}{sep}tenant_id={a}"), &key_b)
                .await,
            404,
            "not_found",
        )
        .await;
        assert_eq!(app.get_as(path, &viewer).await.status(), 200, "{path}");
        assert_eq!(
            app.get_as(&format!("{path}{sep}tenant_id={a}"), ADMIN_KEY)
                .await
                .status(),
            200,
            "{path}"
        );
    }
    for (path, body) in [
        (
            "/api/v1/reports",
            json!({"kind": "cards", "from": "2026-11-01", "to": "2026-11-02"}),
        ),
        ("/api/v1/tier/upgrade", json!({"tier": "professional"})),
        ("/api/v1/tier/downgrade", json!({"tier": "standard"})),
    ] {
        assert_error(
            app.post_json(&viewer, path, body.clone()).await,
            403,
            "forbidden",
        )
        .await;
        // Another tenant named: 404, nothing changed.
        let res = app
            .post_json(&key_b, &format!("{path}?tenant_id={a}"), body)
            .await;
        assert_error(res, 404, "not_found").await;
    }
    let t = app.get_json_as("/api/v1/tier", &key_a).await;
    assert_eq!(t["tier"]["name"], "standard");
    assert_eq!(
        app.count_sql(&format!(
            "SELECT count(*) AS n FROM reports WHERE tenant_id = '{a}'"
        ))
        .await,
        0
    );
}
