//! Messages through the HTTP API without a linked account: what is refused, and that no
//! tenant reaches another's messages. (Sending for real: `sessions::messaging`.)

use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app_with};

#[actix_web::test]
async fn sends_are_refused_clearly_until_the_session_is_linked() {
    let app = spawn_app_with(|s| s.rate_limit.enabled = false).await;
    let (_a, key_a) = app.create_tenant("Acme", "standard").await;
    let (_b, key_b) = app.create_tenant("Globex", "standard").await;
    let id = app.new_session(&key_a, "desk").await;
    let send = |key: &str, session: &str, body: Value| {
        app.post(&format!("/api/v1/sessions/{session}/messages"))
            .bearer_auth(key.to_owned())
            .json(&body)
            .send()
    };

    // Bad input is 400 before anything else; a good message to an unlinked session is 409.
    let body = assert_error(
        send(&key_a, &id, json!({"to": "garbage", "text": "x"}))
            .await
            .unwrap(),
        400,
        "validation_failed",
    )
    .await;
    assert_eq!(body["error"]["details"]["field"], "to");
    let body = assert_error(
        send(
            &key_a,
            &id,
            json!({"to": "+15551234567", "text": "x", "extra": 1}),
        )
        .await
        .unwrap(),
        400,
        "validation_failed",
    )
    .await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("extra"),
        "{body}"
    );
    assert_error(
        send(&key_a, &id, json!({"to": "+15551234567", "text": "hi"}))
            .await
            .unwrap(),
        409,
        "session_not_connected",
    )
    .await;
    let res = app
        .post(&format!("/api/whatsapp/sessions/{id}/send"))
        .bearer_auth(&key_a)
        .json(&json!({"phone": "+15551234567", "message": "hi"}))
        .send()
        .await
        .unwrap();
    assert_error(res, 409, "session_not_connected").await;
    let listed = app
        .get_json_as(&format!("/api/v1/sessions/{id}/messages"), &key_a)
        .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 0);
    assert!(listed["next_cursor"].is_null());
    assert_error(
        app.get_as(
            &format!("/api/v1/sessions/{id}/messages?cursor=zzz"),
            &key_a,
        )
        .await,
        400,
        "validation_failed",
    )
    .await;
    assert_error(
        app.get_as(&format!("/api/v1/sessions/{id}/messages?limit=0"), &key_a)
            .await,
        400,
        "validation_failed",
    )
    .await;
    assert_error(
        app.get_as(&format!("/api/v1/sessions/{id}/messages/3EB0NOPE"), &key_a)
            .await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        app.get_as(&format!("/api/v1/sessions/{id}/chats/+15551234567"), &key_a)
            .await,
        404,
        "not_found",
    )
    .await;

    // Another tenant: every message route is 404, as if the session did not exist.
    assert_error(
        send(&key_b, &id, json!({"to": "+15551234567", "text": "x"}))
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    for path in [
        "messages",
        "chats",
        "stats",
        "messages/3EB0X",
        "chats/+15551234567",
    ] {
        assert_error(
            app.get_as(&format!("/api/v1/sessions/{id}/{path}"), &key_b)
                .await,
            404,
            "not_found",
        )
        .await;
    }
    let res = app
        .post(&format!("/api/v1/sessions/{id}/chats/reset-activations"))
        .bearer_auth(&key_b)
        .send()
        .await
        .unwrap();
    assert_error(res, 404, "not_found").await;
}
