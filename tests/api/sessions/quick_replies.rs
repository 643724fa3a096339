//! A quick reply reaches the contact rendered, through the real whatsapp-rust client.

use std::time::Duration;

use serde_json::{Value, json};

use super::linked::{WAIT, spawn};
use crate::helpers::assert_error;

const OWN: &str = "+15550009201";
const CONTACT: &str = "+4915550009202";

#[actix_web::test]
async fn a_quick_reply_is_rendered_at_the_contact_and_counted() {
    let app = spawn(|_| {}).await;
    let sim = app.sim();
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let session = app.new_session(&key, "main").await;
    app.link(&key, &session, OWN).await;
    sim.add_contact(CONTACT, Some("Lia")).unwrap();
    let res = app
        .post_json(
            &key,
            "/api/v1/quick-replies",
            json!({"shortcut": "/price", "title": "Price", "text": "Hi {{ name }}, it is {{ price }} EUR (for {{ phone }})"}),
        )
        .await;
    let reply: Value = res.json().await.unwrap();

    // A missing variable names it, and nothing is sent.
    let res = app
        .post_json(
            &key,
            &format!("/api/v1/sessions/{session}/messages"),
            json!({"to": CONTACT, "type": "quick_reply", "shortcut": "/price", "variables": {"name": "Lia"}}),
        )
        .await;
    let err = assert_error(res, 400, "validation_failed").await;
    assert_eq!(err["error"]["details"]["field"], "variables.price");

    let res = app
        .post_json(
            &key,
            &format!("/api/v1/sessions/{session}/messages"),
            json!({"to": CONTACT, "type": "quick_reply", "quick_reply_id": reply["id"], "variables": {"name": "Lia", "price": 42}}),
        )
        .await;
    assert_eq!(res.status(), 202);
    let expected = format!("Hi Lia, it is 42 EUR (for {CONTACT})");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got: Vec<String> = sim
            .contact_inbox(CONTACT)
            .into_iter()
            .filter_map(|m| m.text)
            .collect();
        if got.contains(&expected) {
            assert_eq!(got.len(), 1, "{got:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the contact got {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counted = app
        .get_json_as(
            &format!("/api/v1/quick-replies/{}", reply["id"].as_str().unwrap()),
            &key,
        )
        .await;
    assert_eq!(counted["uses"], 1);
    let popular = app.get_json_as("/api/v1/quick-replies/popular", &key).await;
    assert_eq!(popular[0]["id"], reply["id"]);

    // A flow sends it too, its variables rendered from the flow's own.
    let res = app
        .post_json(
            &key,
            "/api/v1/flows",
            json!({"name": "price", "variables": {"amount": "7"}, "steps": [
                {"id": "q", "type": "send_quick_reply", "shortcut": "/price",
                 "variables": {"name": "Lia", "price": "{{ amount }}"}}
            ]}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let flow: Value = res.json().await.unwrap();
    let res = app
        .post_json(
            &key,
            &format!("/api/v1/flows/{}/execute", flow["id"].as_str().unwrap()),
            json!({"session_id": session, "chat": CONTACT}),
        )
        .await;
    assert_eq!(res.status(), 202);
    let expected = format!("Hi Lia, it is 7 EUR (for {CONTACT})");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got: Vec<String> = sim
            .contact_inbox(CONTACT)
            .into_iter()
            .filter_map(|m| m.text)
            .collect();
        if got.contains(&expected) {
            assert_eq!(got.len(), 2, "{got:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the contact got {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counted = app
        .get_json_as(
            &format!("/api/v1/quick-replies/{}", reply["id"].as_str().unwrap()),
            &key,
        )
        .await;
    assert_eq!(counted["uses"], 2);
}
