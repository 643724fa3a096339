//! Notifications: made of system events by the NotificationActor, by the admin and by card
//! assignments; per-reader read state; pushed over the WebSocket to the right members only.

use std::time::Duration;

use serde_json::{Value, json};

use crate::events::{next_event, subscribed};
use crate::helpers::{ADMIN_KEY, TestApp, assert_error, spawn_app};

impl TestApp {
    async fn unread(&self, credential: &str) -> i64 {
        self.get_json_as("/api/v1/notifications/unread-count", credential)
            .await["count"]
            .as_i64()
            .unwrap()
    }

    pub(crate) async fn notifications(&self, credential: &str, query: &str) -> Vec<Value> {
        self.get_json_as(&format!("/api/v1/notifications{query}"), credential)
            .await["items"]
            .as_array()
            .unwrap()
            .clone()
    }

    async fn admin_notify(&self, body: Value) -> Value {
        let res = self
            .post_json(ADMIN_KEY, "/api/v1/admin/notifications", body)
            .await;
        assert_eq!(res.status(), 201);
        res.json().await.unwrap()
    }
}

#[actix_web::test]
async fn system_events_become_notifications_once_and_read_state_is_each_readers_own() {
    let app = spawn_app().await;
    let (tenant, key) = app.create_tenant("Acme", "standard").await;
    let (_, key_b) = app.create_tenant("Globex", "standard").await;
    let ana = app.member_token(&key, "ana@example.com", "agent").await;
    let bob = app.member_token(&key, "bob@example.com", "viewer").await;

    // A session logged out and a failed flow: each makes one notification.
    let logged_out = app.emit_event_of(tenant, "session.logged_out").await;
    app.emit_event_of(tenant, "message.received").await;
    let mut found = Vec::new();
    for _ in 0..100 {
        found = app.notifications(&ana, "").await;
        if !found.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["kind"], "session.logged_out");
    assert_eq!(found[0]["level"], "critical");
    assert_eq!(found[0]["data"]["event_id"], logged_out);
    assert_eq!(found[0]["read"], false);
    // Settled once: the work row is gone and nothing more is made of it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        app.count_sql("SELECT count(*) AS n FROM notifications")
            .await,
        1
    );
    assert_eq!(
        app.count_sql("SELECT count(*) AS n FROM notification_work")
            .await,
        0
    );

    // The admin's, to this tenant and then to every tenant.
    app.admin_notify(
        json!({"tenant_id": tenant, "title": "Maintenance", "body": "Tonight", "level": "info"}),
    )
    .await;
    app.admin_notify(json!({"title": "New feature", "body": "Boards", "level": "info"}))
        .await;
    assert_eq!(app.unread(&ana).await, 3);
    assert_eq!(app.unread(&bob).await, 3);
    assert_eq!(app.unread(&key_b).await, 1, "only the one to every tenant");
    // The one to every tenant is one event per tenant, each with its tenant's next event id.
    assert_eq!(
        app.count_sql(
            "SELECT count(*) AS n FROM events WHERE kind = 'notification.created' \
               AND data->>'title' = 'New feature'"
        )
        .await,
        app.count_sql("SELECT count(*) AS n FROM tenants").await
    );
    assert_eq!(
        app.count_sql(
            "SELECT count(*) AS n FROM tenants t \
             WHERE t.last_event_id <> (SELECT max(id) FROM events e WHERE e.tenant_id = t.id)"
        )
        .await,
        0
    );

    // Read and dismissed per reader.
    let first = found[0]["id"].as_str().unwrap().to_owned();
    let res = app
        .patch(&format!("/api/v1/notifications/{first}/read"))
        .bearer_auth(&ana)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(app.unread(&ana).await, 2);
    assert_eq!(app.unread(&bob).await, 3);
    assert_eq!(app.notifications(&ana, "?unread=true").await.len(), 2);
    let res = app
        .delete(&format!("/api/v1/notifications/{first}"))
        .bearer_auth(&ana)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(app.notifications(&ana, "").await.len(), 2);
    assert_eq!(app.notifications(&bob, "").await.len(), 3);
    // A viewer reads only: marking is work.
    let res = app
        .post("/api/v1/notifications/read-all")
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_error(res, 403, "forbidden").await;
    let res = app
        .post("/api/v1/notifications/read-all")
        .bearer_auth(&ana)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(app.unread(&ana).await, 0);

    // Another tenant cannot see this tenant's notification.
    assert_error(
        app.get_as(&format!("/api/v1/notifications/{first}"), &key_b)
            .await,
        404,
        "not_found",
    )
    .await;
    // Nor mark or dismiss it: the same 404 as for no notification at all.
    let res = app
        .patch(&format!("/api/v1/notifications/{first}/read"))
        .bearer_auth(&key_b)
        .send()
        .await
        .unwrap();
    assert_error(res, 404, "not_found").await;
    let res = app
        .delete(&format!("/api/v1/notifications/{first}"))
        .bearer_auth(&key_b)
        .send()
        .await
        .unwrap();
    assert_error(res, 404, "not_found").await;
    let res = app
        .delete(&format!("/api/v1/notifications/{}", uuid::Uuid::now_v7()))
        .bearer_auth(&key_b)
        .send()
        .await
        .unwrap();
    assert_error(res, 404, "not_found").await;
    // Only the admin notifies; bad input names its field; expired ones are gone.
    let res = app
        .post_json(
            &key,
            "/api/v1/admin/notifications",
            json!({"title": "x", "body": "y", "level": "info"}),
        )
        .await;
    assert_error(res, 403, "forbidden").await;
    let res = app
        .post_json(
            ADMIN_KEY,
            "/api/v1/admin/notifications",
            json!({"title": "x", "body": "y", "level": "loud"}),
        )
        .await;
    let body = assert_error(res, 400, "validation_failed").await;
    assert_eq!(body["error"]["details"]["field"], "level");
    let soon = chrono::Utc::now() + chrono::Duration::seconds(1);
    app.admin_notify(json!({"tenant_id": tenant, "title": "Brief", "body": "", "level": "warning", "expires_at": soon}))
        .await;
    assert_eq!(app.unread(&bob).await, 4);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.unread(&bob).await, 3);
}

#[actix_web::test]
async fn notifications_arrive_over_the_websocket_and_a_members_own_reach_only_them() {
    let app = spawn_app().await;
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let ana = app.member_token(&key, "ana@example.com", "agent").await;
    let bob_token = app.member_token(&key, "bob@example.com", "agent").await;
    let bob_id = app.get_json_as("/api/v1/members/me", &bob_token).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ana_ws = app
        .connect(&format!("?token={ana}&types=notification.created"), None)
        .await;
    let mut bob_ws = app
        .connect(
            &format!("?token={bob_token}&types=notification.created"),
            None,
        )
        .await;
    subscribed(&mut ana_ws).await;
    subscribed(&mut bob_ws).await;

    // A card assigned to Bob: his alone.
    let board = app.create_board(&key, json!({"name": "Sales"})).await;
    let board_id = board["id"].as_str().unwrap();
    let card = app
        .create_card(
            &key,
            board_id,
            json!({"column_id": board["columns"][0]["id"], "title": "Call Dora", "assignee_id": bob_id}),
        )
        .await;
    let event = next_event(&mut bob_ws).await;
    assert_eq!(event["type"], "notification.created");
    assert_eq!(event["data"]["kind"], "card.assigned");
    assert_eq!(event["data"]["data"]["card_id"], card["id"]);
    assert_eq!(event["data"]["member_id"], bob_id.as_str());
    assert_eq!(app.unread(&bob_token).await, 1);
    assert_eq!(app.unread(&ana).await, 0);

    // Then one for everyone: Ana's stream skipped Bob's, so this is the first she gets.
    app.admin_notify(json!({"title": "Hello", "body": "All", "level": "info"}))
        .await;
    let event = next_event(&mut ana_ws).await;
    assert_eq!(event["data"]["kind"], "admin");
    assert_eq!(event["data"]["title"], "Hello");
    let event = next_event(&mut bob_ws).await;
    assert_eq!(event["data"]["kind"], "admin");
}
