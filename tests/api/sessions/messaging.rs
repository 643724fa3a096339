//! Messaging end to end: the gateway's own whatsapp-rust clients send and receive through the
//! in-process simulator, driven only through HTTP (and the simulator's contacts).

use std::time::Duration;

use serde_json::{Value, json};
use wagate::configuration::{Settings, TierQuotas};
use wagate_actors::whatsapp_rust::buffa::MessageField;
use wagate_actors::whatsapp_rust::waproto::whatsapp as wa;

use super::linked::{WAIT, spawn};
use crate::helpers::{TestApp, assert_error};

const CONTACT: &str = "+4915112345678";

fn unpaced(s: &mut Settings) {
    s.messages.rate_per_minute = TierQuotas {
        standard: 0,
        professional: 0,
        enterprise: 0,
    };
}

impl TestApp {
    pub(crate) async fn send(&self, key: &str, id: &str, body: Value) -> reqwest::Response {
        self.post(&format!("/api/v1/sessions/{id}/messages"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn send_ok(&self, key: &str, id: &str, body: Value) -> Value {
        let res = self.send(key, id, body).await;
        assert_eq!(res.status(), 202, "send");
        let m: Value = res.json().await.unwrap();
        assert_eq!(m["status"], "queued");
        assert_eq!(m["direction"], "out");
        m
    }

    /// Polls a message until its status is `status`.
    pub(crate) async fn wait_message(
        &self,
        key: &str,
        session: &str,
        id: &str,
        status: &str,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let m = self
                .get_json_as(&format!("/api/v1/sessions/{session}/messages/{id}"), key)
                .await;
            if m["status"] == status {
                return m;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {status}: {m}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the simulated contact received from this tenant's sessions.
    pub(crate) async fn contact_inbox(&self, key: &str, contact: &str) -> Vec<Value> {
        self.get_json_as(&format!("/api/v1/sandbox/contacts/{contact}/messages"), key)
            .await["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) async fn wait_inbox(&self, key: &str, contact: &str, wa_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(m) = self
                .contact_inbox(key, contact)
                .await
                .into_iter()
                .find(|m| m["id"] == wa_id)
            {
                return m;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{wa_id} never reached {contact}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the `message.received` event of a given WhatsApp id.
    pub(crate) async fn wait_received(&self, key: &str, session: &str, wa_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(e) = self
                .events(key, session, 0)
                .await
                .into_iter()
                .find(|e| e["type"] == "message.received" && e["data"]["wa_id"] == wa_id)
            {
                return e["data"].clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{wa_id} never received"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn upload(
        &self,
        key: &str,
        session: &str,
        bytes: Vec<u8>,
        mime: &str,
        name: &str,
    ) -> reqwest::Response {
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(name.to_owned())
            .mime_str(mime)
            .unwrap();
        self.post(&format!("/api/v1/sessions/{session}/media"))
            .bearer_auth(key)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .unwrap()
    }

    /// The messages a session's history holds, by WhatsApp id.
    pub(crate) async fn history(&self, key: &str, id: &str) -> Vec<Value> {
        self.get_json_as(&format!("/api/v1/sessions/{id}/messages?limit=100"), key)
            .await["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) async fn wait_acked(&self, phone: &str) {
        let sim = self.sim();
        let since = tokio::time::Instant::now();
        while sim.pending_stanzas(phone) > 0 {
            assert!(
                since.elapsed() < WAIT,
                "WhatsApp still holds {:?}",
                sim.pending_message_ids(phone)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[actix_web::test]
async fn messages_go_out_and_come_in_with_statuses_history_and_chats() {
    let app = spawn(unpaced).await;
    let (_tenant, key) = app.create_tenant("Acme", "standard").await;
    let id = app.new_session(&key, "front desk").await;
    app.link(&key, &id, "+15550002001").await;

    // Out: queued before the 202, then sent, delivered and read by the contact.
    let hello = app
        .send_ok(&key, &id, json!({"to": CONTACT, "text": "hello Erika"}))
        .await;
    assert_eq!(hello["from"], "+15550002001");
    assert_eq!(hello["to"], CONTACT);
    let wa_id = hello["wa_id"].as_str().unwrap().to_owned();
    let got = app.wait_inbox(&key, CONTACT, &wa_id).await;
    assert_eq!(got["text"], "hello Erika");
    let read = app
        .wait_message(&key, &id, hello["id"].as_str().unwrap(), "read")
        .await;
    assert!(read["error"].is_null());
    let status_events: Vec<Value> = app
        .events(&key, &id, 0)
        .await
        .into_iter()
        .filter(|e| e["type"] == "message.status" && e["data"]["wa_id"] == wa_id.as_str())
        .collect();
    // The SQL that writes `message.status` builds exactly the typed payload's fields.
    for e in &status_events {
        let typed: wagate::events::StatusChange =
            serde_json::from_value(e["data"].clone()).unwrap_or_else(|err| panic!("{err}: {e}"));
        assert_eq!(serde_json::to_value(&typed).unwrap(), e["data"]);
    }
    let statuses: Vec<String> = status_events
        .iter()
        .map(|e| e["data"]["status"].as_str().unwrap().to_owned())
        .collect();
    // Forward only, ending at read (a receipt may overtake the send's own `sent`).
    let order = ["sent", "delivered", "read"];
    let ranks: Vec<usize> = statuses
        .iter()
        .map(|s| order.iter().position(|o| o == s).unwrap())
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{statuses:?}");
    assert_eq!(statuses.last().map(String::as_str), Some("read"));

    // In: a contact's text becomes one stored message and one event.
    let res = app.sandbox_inbound(&key, &id, CONTACT, "hi back").await;
    assert_eq!(res.status(), 202);
    let inbound_wa_id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let received = app.wait_received(&key, &id, &inbound_wa_id).await;
    assert_eq!(received["text"], "hi back");
    assert_eq!(received["chat"], CONTACT);
    assert_eq!(received["from"], CONTACT);
    assert_eq!(received["to"], "+15550002001");
    assert_eq!(received["direction"], "in");

    // Replies, locations, contact cards and reactions reach the contact as such.
    let reply = app
        .send_ok(
            &key,
            &id,
            json!({"to": CONTACT, "text": "a reply", "quoted_id": inbound_wa_id}),
        )
        .await;
    let location = app
        .send_ok(
            &key,
            &id,
            json!({"to": CONTACT, "type": "location",
               "location": {"latitude": 52.52, "longitude": 13.405, "name": "Berlin"}}),
        )
        .await;
    let card = app.send_ok(&key,
        &id,
        json!({"to": CONTACT, "type": "contact", "contact": {"name": "Max", "phone": "+4915100000001"}}),
    )
    .await;
    let reaction = app
        .send_ok(
            &key,
            &id,
            json!({"to": CONTACT, "type": "reaction",
               "reaction": {"message_id": received["id"], "emoji": "👍"}}),
        )
        .await;
    let got_reply = app
        .wait_inbox(&key, CONTACT, reply["wa_id"].as_str().unwrap())
        .await;
    assert_eq!(got_reply["text"], "a reply");
    assert_eq!(got_reply["reference_id"], inbound_wa_id.as_str());
    let got_location = app
        .wait_inbox(&key, CONTACT, location["wa_id"].as_str().unwrap())
        .await;
    assert_eq!(got_location["type"], "location");
    assert_eq!(got_location["media"]["latitude"], 52.52);
    let got_card = app
        .wait_inbox(&key, CONTACT, card["wa_id"].as_str().unwrap())
        .await;
    assert_eq!(got_card["type"], "contact");
    assert!(
        got_card["media"]["vcard"]
            .as_str()
            .unwrap()
            .contains("waid=4915100000001")
    );
    let got_reaction = app
        .wait_inbox(&key, CONTACT, reaction["wa_id"].as_str().unwrap())
        .await;
    for m in [&reply, &location, &card, &reaction] {
        app.wait_message(&key, &id, m["id"].as_str().unwrap(), "read")
            .await;
    }
    assert_eq!(got_reaction["type"], "reaction");
    assert_eq!(got_reaction["text"], "👍");
    assert_eq!(got_reaction["reference_id"], inbound_wa_id.as_str());

    // Every kind a contact can send is stored with its type.
    let sim = app.sim();
    let inbound_kinds = [
        (
            "location",
            wa::Message {
                location_message: MessageField::some(wa::message::LocationMessage {
                    degrees_latitude: Some(48.85),
                    degrees_longitude: Some(2.35),
                    name: Some("Paris".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            "contact",
            wa::Message {
                contact_message: MessageField::some(wa::message::ContactMessage {
                    display_name: Some("Erika".into()),
                    vcard: Some("BEGIN:VCARD\nFN:Erika\nEND:VCARD".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            "reaction",
            wa::Message {
                reaction_message: MessageField::some(wa::message::ReactionMessage {
                    key: MessageField::some(wa::MessageKey {
                        remote_jid: Some("15550002001@s.whatsapp.net".into()),
                        from_me: Some(false),
                        id: Some(wa_id.clone()),
                        ..Default::default()
                    }),
                    text: Some("❤️".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            "image",
            wa::Message {
                image_message: MessageField::some(wa::message::ImageMessage {
                    mimetype: Some("image/jpeg".into()),
                    direct_path: Some("/v/t62/abc".into()),
                    file_length: Some(12345),
                    caption: Some("a picture".into()),
                    media_key: Some(vec![1; 32]),
                    file_sha256: Some(vec![2; 32]),
                    file_enc_sha256: Some(vec![3; 32]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
    ];
    for (kind, message) in inbound_kinds {
        let wa_id_in = sim
            .inject_message(CONTACT, "+15550002001", message)
            .await
            .unwrap();
        let m = app.wait_received(&key, &id, &wa_id_in).await;
        assert_eq!(m["type"], kind, "{m}");
        match kind {
            "location" => assert_eq!(m["content"]["latitude"], 48.85),
            "contact" => assert_eq!(m["content"]["name"], "Erika"),
            "reaction" => {
                assert_eq!(m["content"]["emoji"], "❤️");
                assert_eq!(m["quoted_id"], wa_id.as_str());
            }
            "image" => {
                assert_eq!(m["media"]["mimetype"], "image/jpeg");
                assert_eq!(m["media"]["file_length"], 12345);
                assert_eq!(m["text"], "a picture");
            }
            _ => unreachable!(),
        }
    }

    // History: newest first, cursor paging, one message by id or WhatsApp id.
    let all = app
        .get_json_as(
            &format!(
                "/api/v1/sessions/{id}/messages?chat={}&limit=3",
                "%2B4915112345678"
            ),
            &key,
        )
        .await;
    assert_eq!(all["items"].as_array().unwrap().len(), 3);
    let mut seen = all["items"].as_array().unwrap().clone();
    let mut cursor = all["next_cursor"].as_str().map(str::to_owned);
    while let Some(c) = cursor {
        let page = app
            .get_json_as(
                &format!("/api/v1/sessions/{id}/messages?limit=3&cursor={c}"),
                &key,
            )
            .await;
        seen.extend(page["items"].as_array().unwrap().iter().cloned());
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen.len(), 10, "5 out, 5 in");
    let times: Vec<&str> = seen
        .iter()
        .map(|m| m["created_at"].as_str().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    let by_wa_id = app
        .get_json_as(&format!("/api/v1/sessions/{id}/messages/{wa_id}"), &key)
        .await;
    assert_eq!(by_wa_id["id"], hello["id"]);

    // Chats: last message and unread count; reading, naming and the bot switch.
    let chats = app
        .get_json_as(&format!("/api/v1/sessions/{id}/chats"), &key)
        .await;
    let chat = &chats["items"][0];
    assert_eq!(chat["chat"], CONTACT);
    assert_eq!(chat["unread_count"], 5);
    assert_eq!(chat["messages_in"], 5);
    assert_eq!(chat["messages_out"], 5);
    assert_eq!(chat["last_message"]["type"], "image");
    assert_eq!(chat["bot_enabled"], true);
    let res = app
        .patch(&format!("/api/v1/sessions/{id}/chats/{CONTACT}"))
        .bearer_auth(&key)
        .json(&json!({"read": true, "bot_enabled": false, "contact_name": "Erika M."}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let chat: Value = res.json().await.unwrap();
    assert_eq!(chat["unread_count"], 0);
    assert_eq!(chat["bot_enabled"], false);
    assert_eq!(chat["contact_name"], "Erika M.");
    let reset = app
        .post_as(
            &format!("/api/v1/sessions/{id}/chats/reset-activations"),
            &key,
        )
        .await;
    assert_eq!(reset.json::<Value>().await.unwrap()["changed"], 1);
    // Bulk: one change to many chats; a chat that does not exist changes nothing.
    let bulk = |body: Value| {
        app.post(&format!("/api/v1/sessions/{id}/chats/bulk"))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let res = bulk(json!({"chats": [CONTACT, "+4915100000999"], "bot_enabled": false}))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["changed"], 1);
    let chat = app
        .get_json_as(&format!("/api/v1/sessions/{id}/chats/{CONTACT}"), &key)
        .await;
    assert_eq!(chat["bot_enabled"], false, "{chat}");
    let res = bulk(json!({"chats": [CONTACT], "bot_enabled": true, "read": true}))
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["changed"], 1);
    let chat = app
        .get_json_as(&format!("/api/v1/sessions/{id}/chats/{CONTACT}"), &key)
        .await;
    assert_eq!(
        (chat["bot_enabled"].as_bool(), chat["unread_count"].as_i64()),
        (Some(true), Some(0))
    );
    for (body, field) in [
        (json!({"chats": [], "read": true}), "chats"),
        (json!({"chats": [CONTACT]}), "bot_enabled"),
        (
            json!({"chats": [CONTACT, "not a phone"], "read": true}),
            "chats[1]",
        ),
    ] {
        let err = assert_error(bulk(body).await.unwrap(), 400, "validation_failed").await;
        assert_eq!(err["error"]["details"]["field"], field, "{err}");
    }
    let stats = app
        .get_json_as(&format!("/api/v1/sessions/{id}/stats"), &key)
        .await;
    assert_eq!(stats["total"], 10);
    assert_eq!(stats["out"]["read"], 5, "{stats}");
    assert_eq!(stats["in"]["received"], 5);

    // Clearing the history empties the chat.
    let res = app
        .delete(&format!("/api/v1/sessions/{id}/chats/{CONTACT}/messages"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["deleted"], 10);
    let left = app
        .get_json_as(&format!("/api/v1/sessions/{id}/messages"), &key)
        .await;
    assert_eq!(left["items"].as_array().unwrap().len(), 0);
}

#[actix_web::test]
async fn sends_are_idempotent_validated_and_survive_a_lost_connection() {
    let app = spawn(unpaced).await;
    let (_tenant, key) = app.create_tenant("Acme", "standard").await;
    let id = app.new_session(&key, "front desk").await;
    app.link(&key, &id, "+15550002002").await;
    let path = format!("/api/v1/sessions/{id}/messages");

    // The same Idempotency-Key: the same message, sent once.
    let with_key = |text: &str| {
        app.post(&path)
            .bearer_auth(&key)
            .header("Idempotency-Key", "order-42")
            .json(&json!({"to": CONTACT, "text": text}))
    };
    let first = with_key("your order shipped").send().await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again = with_key("your order shipped").send().await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_error(
        with_key("something else").send().await.unwrap(),
        409,
        "idempotency_key_reused",
    )
    .await;
    app.wait_message(&key, &id, first["id"].as_str().unwrap(), "read")
        .await;
    let copies = app
        .contact_inbox(&key, CONTACT)
        .await
        .into_iter()
        .filter(|m| m["text"] == "your order shipped")
        .count();
    assert_eq!(copies, 1);

    // Bad input: a clear 400 naming the field, nothing stored.
    for (body, field) in [
        (json!({"to": "not a number", "text": "x"}), "to"),
        (json!({"to": "+12", "text": "x"}), "to"),
        (json!({"to": "12a@g.us", "text": "x"}), "to"),
        (json!({"to": CONTACT}), "text"),
        (json!({"to": CONTACT, "text": "   "}), "text"),
        (json!({"to": CONTACT, "text": "x".repeat(4097)}), "text"),
        (json!({"to": CONTACT, "type": "sticker"}), "type"),
        (
            json!({"to": CONTACT, "type": "location", "location": {"latitude": 91.0, "longitude": 0.0}}),
            "location.latitude",
        ),
        (
            json!({"to": CONTACT, "text": "x", "quoted_id": "3EB0NOPE"}),
            "quoted_id",
        ),
        (
            json!({"to": CONTACT, "type": "reaction", "reaction": {"message_id": "nope", "emoji": "👍"}}),
            "reaction.message_id",
        ),
    ] {
        let body = assert_error(
            app.send(&key, &id, body.clone()).await,
            400,
            "validation_failed",
        )
        .await;
        assert_eq!(body["error"]["details"]["field"], field, "{body}");
    }
    // A media URL on a loopback address is never fetched (media.allow_private_urls is off).
    assert_error(
        app.send(
            &key,
            &id,
            json!({"to": CONTACT, "type": "image", "media_url": "http://127.0.0.1:9/a.jpg"}),
        )
        .await,
        400,
        "media_url_not_allowed",
    )
    .await;
    let res = app
        .post(&path)
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "malformed_json").await;
    // Text exactly at the limit is fine.
    app.send_ok(&key, &id, json!({"to": CONTACT, "text": "é".repeat(4096)}))
        .await;

    // A number that is not on WhatsApp fails with that reason.
    app.sim().mark_not_on_whatsapp("+4915100000999").unwrap();
    let nobody = app
        .send_ok(
            &key,
            &id,
            json!({"to": "+4915100000999", "text": "anyone?"}),
        )
        .await;
    let failed = app
        .wait_message(&key, &id, nobody["id"].as_str().unwrap(), "failed")
        .await;
    assert_eq!(failed["error"], "recipient_not_on_whatsapp");

    // The connection drops and reconnects are refused for a while: a message accepted
    // meanwhile stays queued and goes out once the session is back.
    let since = app.events(&key, &id, 0).await.last().unwrap()["id"]
        .as_i64()
        .unwrap();
    app.sim().refuse_connections_for(Duration::from_secs(2));
    let res = app
        .post_as(&format!("/api/v1/sandbox/sessions/{id}/drop"), &key)
        .await;
    assert_eq!(res.status(), 200);
    app.wait_event(&key, &id, since, "session.reconnecting")
        .await;
    let offline = app
        .send_ok(&key, &id, json!({"to": CONTACT, "text": "sent while away"}))
        .await;
    let stored = app
        .get_json_as(
            &format!(
                "/api/v1/sessions/{id}/messages/{}",
                offline["id"].as_str().unwrap()
            ),
            &key,
        )
        .await;
    assert_eq!(stored["status"], "queued");
    app.wait_status(&key, &id, "connected").await;
    app.wait_message(&key, &id, offline["id"].as_str().unwrap(), "read")
        .await;
    app.wait_inbox(&key, CONTACT, offline["wa_id"].as_str().unwrap())
        .await;
}

#[actix_web::test]
async fn two_tenants_sessions_message_each_other_and_see_only_their_own() {
    let app = spawn(unpaced).await;
    let (_a, key_a) = app.create_tenant("Acme", "standard").await;
    let (_b, key_b) = app.create_tenant("Globex", "standard").await;
    let a = app.new_session(&key_a, "a").await;
    let b = app.new_session(&key_b, "b").await;
    app.link(&key_a, &a, "+15550003001").await;
    app.link(&key_b, &b, "+15550003002").await;

    let m = app
        .send_ok(
            &key_a,
            &a,
            json!({"to": "+15550003002", "text": "hi Globex"}),
        )
        .await;
    let got = app
        .wait_received(&key_b, &b, m["wa_id"].as_str().unwrap())
        .await;
    assert_eq!(got["from"], "+15550003001");
    app.wait_message(&key_a, &a, m["id"].as_str().unwrap(), "delivered")
        .await;
    let back = app
        .send_ok(
            &key_b,
            &b,
            json!({"to": "15550003001@s.whatsapp.net", "text": "hi Acme"}),
        )
        .await;
    app.wait_received(&key_a, &a, back["wa_id"].as_str().unwrap())
        .await;

    // Neither tenant reaches the other's messages, chats, stats or sends.
    for path in [
        format!("/api/v1/sessions/{b}/messages"),
        format!(
            "/api/v1/sessions/{b}/messages/{}",
            got["id"].as_str().unwrap()
        ),
        format!("/api/v1/sessions/{b}/chats"),
        format!("/api/v1/sessions/{b}/chats/+15550003001"),
        format!("/api/v1/sessions/{b}/stats"),
    ] {
        assert_error(app.get_as(&path, &key_a).await, 404, "not_found").await;
    }
    assert_error(
        app.send(&key_a, &b, json!({"to": CONTACT, "text": "x"}))
            .await,
        404,
        "not_found",
    )
    .await;
}

#[actix_web::test]
async fn a_session_sends_at_its_tenants_pace() {
    // Unpaced by tier; the tenant's own rate (600/min: one every 100 ms ± 10 %) applies.
    let app = spawn(unpaced).await;
    let (tenant, key) = app.create_tenant("Acme", "standard").await;
    let res = app
        .patch(&format!("/api/v1/tenants/{tenant}"))
        .bearer_auth(crate::helpers::ADMIN_KEY)
        .json(&json!({"send_rate_per_minute": 600}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap()["send_rate_per_minute"],
        600
    );
    let bad = app
        .patch(&format!("/api/v1/tenants/{tenant}"))
        .bearer_auth(crate::helpers::ADMIN_KEY)
        .json(&json!({"send_rate_per_minute": 6001}))
        .send()
        .await
        .unwrap();
    assert_error(bad, 400, "validation_failed").await;
    let id = app.new_session(&key, "desk").await;
    app.link(&key, &id, "+15550004001").await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(
            app.send_ok(
                &key,
                &id,
                json!({"to": CONTACT, "text": format!("paced {i}")}),
            )
            .await,
        );
    }
    for m in &sent {
        app.wait_message(&key, &id, m["id"].as_str().unwrap(), "read")
            .await;
    }
    // The time each was sent, from its `sent` event (or, if a receipt overtook it, its
    // first status event).
    let evs = app.events(&key, &id, 0).await;
    let mut times: Vec<chrono::DateTime<chrono::Utc>> = sent
        .iter()
        .map(|m| {
            let e = evs
                .iter()
                .find(|e| e["type"] == "message.status" && e["data"]["id"] == m["id"])
                .unwrap();
            e["at"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    times.sort();
    for w in times.windows(2) {
        let gap = (w[1] - w[0]).num_milliseconds();
        assert!(gap >= 80, "sends {gap} ms apart: {times:?}");
    }
}

/// A file that reads as a PNG (signature and header) with `len` bytes in all.
fn png_bytes(len: usize) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0".to_vec();
    b.extend((0..len.saturating_sub(b.len())).map(|i| (i % 251) as u8));
    b
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[actix_web::test]
async fn media_goes_out_through_whatsapps_upload_path_and_comes_in_downloadable() {
    const LIMIT: usize = 1024 * 1024;
    let app = spawn(|s| {
        unpaced(s);
        s.media.allow_private_urls = true;
        s.media.max_bytes = LIMIT;
    })
    .await;
    let (_tenant, key) = app.create_tenant("Acme", "standard").await;
    let id = app.new_session(&key, "front desk").await;
    app.link(&key, &id, "+15550002001").await;

    // Upload once (multipart), send as an image and as a document: the contact downloads
    // each from the simulator's CDN and decrypts exactly the uploaded bytes.
    let picture = png_bytes(300_000);
    let res = app
        .upload(
            &key,
            &id,
            picture.clone(),
            "image/png",
            "../../etc/photo.png",
        )
        .await;
    assert_eq!(res.status(), 201);
    let media: Value = res.json().await.unwrap();
    assert_eq!(media["type"], "image");
    assert_eq!(media["mime_type"], "image/png");
    assert_eq!(media["size"], 300_000);
    assert_eq!(media["file_name"], "photo.png", "no path survives");
    assert_eq!(media["sha256"], sha256_hex(&picture));
    let got = app
        .get_json_as(
            &format!(
                "/api/v1/sessions/{id}/media/{}",
                media["id"].as_str().unwrap()
            ),
            &key,
        )
        .await;
    assert_eq!(got["sha256"], media["sha256"]);

    let image = app
        .send_ok(
            &key,
            &id,
            json!({"to": CONTACT, "type": "image", "media_id": media["id"], "caption": "our shop"}),
        )
        .await;
    assert_eq!(image["type"], "image");
    assert_eq!(image["media"]["mimetype"], "image/png");
    assert!(image["media"].get("media_key").is_none());
    let as_doc = app.send_ok(&key,
        &id,
        json!({"to": CONTACT, "type": "document", "media_id": media["id"], "file_name": "shop.png"}),
    )
    .await;
    let seen = app
        .wait_inbox(&key, CONTACT, image["wa_id"].as_str().unwrap())
        .await;
    assert_eq!(seen["type"], "image");
    assert_eq!(seen["text"], "our shop");
    assert_eq!(
        seen["media"]["downloaded"]["sha256"],
        sha256_hex(&picture),
        "{seen}"
    );
    let seen_doc = app
        .wait_inbox(&key, CONTACT, as_doc["wa_id"].as_str().unwrap())
        .await;
    assert_eq!(seen_doc["type"], "document");
    assert_eq!(seen_doc["media"]["file_name"], "shop.png");
    assert_eq!(
        seen_doc["media"]["downloaded"]["sha256"],
        sha256_hex(&picture)
    );
    app.wait_message(&key, &id, image["id"].as_str().unwrap(), "read")
        .await;
    // What was sent can be fetched back.
    let back = app
        .get_as(
            &format!(
                "/api/v1/sessions/{id}/messages/{}/media",
                image["id"].as_str().unwrap()
            ),
            &key,
        )
        .await;
    assert_eq!(back.status(), 200);
    assert_eq!(back.headers()["content-type"], "image/png");
    assert_eq!(back.bytes().await.unwrap().to_vec(), picture);

    // By URL: fetched, checked by content, and sent under the URL's file name.
    let server = wiremock::MockServer::start().await;
    let pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\nterms and conditions\n%%EOF\n".to_vec();
    wiremock::Mock::given(wiremock::matchers::path("/files/terms.pdf"))
        .respond_with(
            wiremock::ResponseTemplate::new(200)
                .insert_header("content-type", "application/pdf")
                .set_body_bytes(pdf.clone()),
        )
        .mount(&server)
        .await;
    wiremock::Mock::given(wiremock::matchers::path("/files/big.png"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_bytes(png_bytes(LIMIT + 1)))
        .mount(&server)
        .await;
    wiremock::Mock::given(wiremock::matchers::path("/files/fake.png"))
        .respond_with(
            wiremock::ResponseTemplate::new(200)
                .insert_header("content-type", "image/png")
                .set_body_bytes(pdf.clone()),
        )
        .mount(&server)
        .await;
    let doc = app.send_ok(&key,
        &id,
        json!({"to": CONTACT, "type": "document", "media_url": format!("{}/files/terms.pdf", server.uri())}),
    )
    .await;
    assert_eq!(doc["media"]["mimetype"], "application/pdf");
    assert_eq!(doc["media"]["file_name"], "terms.pdf");
    let seen = app
        .wait_inbox(&key, CONTACT, doc["wa_id"].as_str().unwrap())
        .await;
    assert_eq!(seen["media"]["file_name"], "terms.pdf");
    assert_eq!(seen["media"]["downloaded"]["sha256"], sha256_hex(&pdf));

    // Refusals, each with its code; nothing is queued for them.
    let before = app
        .get_json_as(&format!("/api/v1/sessions/{id}/messages?limit=100"), &key)
        .await["items"]
        .as_array()
        .unwrap()
        .len();
    let too_big = app
        .upload(&key, &id, png_bytes(LIMIT + 1), "image/png", "a.png")
        .await;
    assert_error(too_big, 413, "media_too_large").await;
    let liar = app
        .upload(&key, &id, pdf.clone(), "image/png", "a.png")
        .await;
    assert_error(liar, 415, "media_type_mismatch").await;
    let elf = app
        .upload(
            &key,
            &id,
            b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec(),
            "application/octet-stream",
            "a",
        )
        .await;
    assert_error(elf, 415, "media_type_not_allowed").await;
    let not_multipart = app
        .post(&format!("/api/v1/sessions/{id}/media"))
        .bearer_auth(&key)
        .json(&json!({"file": "x"}))
        .send()
        .await
        .unwrap();
    assert_error(not_multipart, 415, "unsupported_media_type").await;
    let pdf_upload: Value = app
        .upload(&key, &id, pdf.clone(), "application/pdf", "t.pdf")
        .await
        .json()
        .await
        .unwrap();
    let url = |p: &str| format!("{}{p}", server.uri());
    for (body, status, code) in [
        (
            json!({"to": CONTACT, "type": "image", "media_id": pdf_upload["id"]}),
            415,
            "media_type_not_allowed",
        ),
        (
            json!({"to": CONTACT, "type": "image", "media_url": url("/files/big.png")}),
            413,
            "media_too_large",
        ),
        (
            json!({"to": CONTACT, "type": "image", "media_url": url("/files/fake.png")}),
            415,
            "media_type_mismatch",
        ),
        (
            json!({"to": CONTACT, "type": "image", "media_url": url("/files/missing.png")}),
            422,
            "media_fetch_failed",
        ),
        (
            json!({"to": CONTACT, "type": "image", "media_url": "ftp://example.com/a.png"}),
            400,
            "validation_failed",
        ),
        (
            json!({"to": CONTACT, "type": "image"}),
            400,
            "validation_failed",
        ),
        (
            json!({"to": CONTACT, "type": "image", "media_id": media["id"], "media_url": url("/files/terms.pdf")}),
            400,
            "validation_failed",
        ),
        (
            json!({"to": CONTACT, "type": "audio", "media_id": media["id"], "caption": "x"}),
            400,
            "validation_failed",
        ),
        (
            json!({"to": CONTACT, "type": "image", "media_id": uuid::Uuid::new_v4()}),
            400,
            "validation_failed",
        ),
        (
            json!({"to": CONTACT, "text": "x", "caption": "y"}),
            400,
            "validation_failed",
        ),
    ] {
        let res = app.send(&key, &id, body.clone()).await;
        let err = assert_error(res, status, code).await;
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}: {err}"
        );
    }
    let after = app
        .get_json_as(&format!("/api/v1/sessions/{id}/messages?limit=100"), &key)
        .await["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after, "a refused send stores nothing");

    // In: a contact's photo is stored as metadata and fetched, decrypted, on demand.
    let photo = png_bytes(50_000);
    let wa_id = app
        .sim()
        .inject_media(
            CONTACT,
            "+15550002001",
            wagate_sim::MediaFile {
                kind: "image",
                bytes: &photo,
                mimetype: "image/png",
                caption: Some("look"),
                file_name: None,
            },
        )
        .await
        .unwrap();
    let received = app.wait_received(&key, &id, &wa_id).await;
    assert_eq!(received["type"], "image");
    assert_eq!(received["media"]["sha256"], sha256_hex(&photo));
    assert!(
        received["media"].get("media_key").is_none(),
        "keys stay private: {received}"
    );
    let download = received["media"]["download_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app.get_as(&download, &key).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/png");
    assert_eq!(res.bytes().await.unwrap().to_vec(), photo);
    // The media servers need the message's keys, not the session: a stopped session's
    // received media still downloads.
    let res = app
        .post(&format!("/api/v1/sessions/{id}/stop"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app.get_as(&download, &key).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().to_vec(), photo);

    // The media path is the sender's to choose: one that would move the host is refused
    // before any request (whatsapp-rust builds https://{host}{direct_path}).
    for forged in [
        ".evil.tld/v/x",
        "@evil.tld/v/x",
        "//evil.tld/v/x",
        "/v/x\\..\\y",
    ] {
        let changed = app
            .execute_sql(&format!(
                "UPDATE messages SET body = jsonb_set(body, '{{direct_path}}', to_jsonb('{forged}'::text)) \
                 WHERE wa_id = '{wa_id}'"
            ))
            .await;
        assert_eq!(changed, 1);
        let res = app.get_as(&download, &key).await;
        let err = assert_error(res, 502, "media_download_failed").await;
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not a WhatsApp media path"),
            "{forged}: {err}"
        );
    }

    // Another tenant sees none of it.
    let (_other, other_key) = app.create_tenant("Other", "standard").await;
    let other_session = app.new_session(&other_key, "theirs").await;
    assert_eq!(app.get_as(&download, &other_key).await.status(), 404);
    assert_eq!(
        app.get_as(
            &format!(
                "/api/v1/sessions/{id}/media/{}",
                media["id"].as_str().unwrap()
            ),
            &other_key
        )
        .await
        .status(),
        404
    );
    let stolen = app
        .upload(&other_key, &id, png_bytes(1000), "image/png", "x.png")
        .await;
    assert_eq!(stolen.status(), 404);
    // Their own linked session cannot send this tenant's upload either.
    app.link(&other_key, &other_session, "+15550002002").await;
    let res = app
        .send(
            &other_key,
            &other_session,
            json!({"to": CONTACT, "type": "image", "media_id": media["id"]}),
        )
        .await;
    let err = assert_error(res, 400, "validation_failed").await;
    assert_eq!(err["error"]["details"]["field"], "media_id");

    // An upload deleted after its retention: what was sent with it is 410 media_gone.
    app.execute_sql(&format!(
        "DELETE FROM media WHERE id = '{}'",
        media["id"].as_str().unwrap()
    ))
    .await;
    let res = app
        .get_as(
            &format!(
                "/api/v1/sessions/{id}/messages/{}/media",
                image["id"].as_str().unwrap()
            ),
            &key,
        )
        .await;
    assert_error(res, 410, "media_gone").await;

    // Received media the media servers do not have: 502 media_download_failed.
    let missing = app
        .sim()
        .inject_message(
            CONTACT,
            "+15550002001",
            wa::Message {
                image_message: MessageField::some(wa::message::ImageMessage {
                    url: Some(format!(
                        "https://{}/v/t62.sim/never-uploaded",
                        wagate_sim::MEDIA_HOST
                    )),
                    direct_path: Some("/v/t62.sim/never-uploaded".into()),
                    media_key: Some(vec![7; 32]),
                    file_sha256: Some(vec![1; 32]),
                    file_enc_sha256: Some(vec![2; 32]),
                    file_length: Some(1000),
                    mimetype: Some("image/png".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let res = app
        .post_as(&format!("/api/v1/sessions/{id}/start"), &key)
        .await;
    assert_eq!(res.status(), 202);
    let received = app.wait_received(&key, &id, &missing).await;
    let res = app
        .get_as(received["media"]["download_url"].as_str().unwrap(), &key)
        .await;
    assert_error(res, 502, "media_download_failed").await;
}

/// A message queued in the database without a wake-up for this node's actor (as when another
/// node accepted it) is found by the node's send-queue sweep and sent, exactly once. Sessions do
/// not poll the queue themselves.
#[actix_web::test]
async fn a_message_queued_without_a_wake_up_is_found_and_sent() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

    let app = spawn(unpaced).await;
    let (_tenant, key) = app.create_tenant("Acme", "standard").await;
    let id = app.new_session(&key, "front desk").await;
    app.link(&key, &id, "+15550002003").await;
    let first = app
        .send_ok(&key, &id, json!({"to": CONTACT, "text": "first"}))
        .await;
    let first_id = first["id"].as_str().unwrap();
    app.wait_message(&key, &id, first_id, "read").await;

    // As another node would store it: a queued row, and nobody tells this node's actor.
    let wa_id = "3EB0AA00BB11CC22DD33EE44";
    let mut conn = AsyncPgConnection::establish(&app.db_url).await.unwrap();
    let copied = diesel::sql_query(format!(
        "INSERT INTO messages (id, tenant_id, session_id, wa_id, direction, chat, own_phone, kind, \
           body, text, status, created_at, updated_at) \
         SELECT gen_random_uuid(), tenant_id, session_id, '{wa_id}', direction, chat, own_phone, \
           kind, body || '{{\"text\": \"queued elsewhere\"}}'::jsonb, 'queued elsewhere', 'queued', \
           now(), now() \
         FROM messages WHERE id = '{first_id}'"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(copied, 1);

    let received = app.wait_inbox(&key, CONTACT, wa_id).await;
    assert_eq!(received["text"], "queued elsewhere");
    let copies = app
        .contact_inbox(&key, CONTACT)
        .await
        .into_iter()
        .filter(|m| m["id"] == wa_id)
        .count();
    assert_eq!(copies, 1);
}

/// Sends and receipts of two tenants at once go through the group writers (no group falls
/// back to single writes), and what they store adds up: every message once, chat counters
/// that count them all, each tenant's event ids consecutive from 1 with no gap, and one
/// webhook row per event its webhook asked for.
#[actix_web::test]
async fn grouped_writes_store_every_message_once_with_consecutive_event_ids() {
    const EACH: usize = 24;
    let app = spawn(unpaced).await;
    let sample = |kind: &str, what: &str| format!("wagate_group_{what}_total{{kind=\"{kind}\"}}");
    let kinds = [
        "accepted_messages",
        "send_outcomes",
        "received_messages",
        "keystore_entries",
    ];
    let mut jobs_before = Vec::new();
    for kind in kinds {
        jobs_before.push(app.metric(&sample(kind, "jobs")).await);
    }
    let mut sessions = Vec::new();
    for (i, name) in ["Acme", "Globex"].into_iter().enumerate() {
        let (tenant, key) = app.create_tenant(name, "standard").await;
        let id = app.new_session(&key, name).await;
        app.link(&key, &id, &format!("+1555000410{i}")).await;
        let res = app
            .post("/api/v1/webhooks")
            .bearer_auth(&key)
            .json(&json!({"url": "https://hooks.example.com/in", "events": ["message.received"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        sessions.push((tenant, key, id));
    }
    let app = &app;
    let sends = sessions.iter().flat_map(|(_, key, id)| {
        (0..EACH).map(move |n| async move {
            app.send_ok(key, id, json!({"to": CONTACT, "text": format!("out {n}")}))
                .await
        })
    });
    let inbound = sessions.iter().flat_map(|(_, key, id)| {
        (0..EACH).map(move |n| async move {
            let res = app
                .sandbox_inbound(key, id, CONTACT, &format!("in {n}"))
                .await;
            assert!(res.status().is_success(), "{}", res.status());
        })
    });
    let (sent, _) = futures::join!(
        futures::future::join_all(sends),
        futures::future::join_all(inbound)
    );
    for m in &sent {
        let (_, key, id) = sessions
            .iter()
            .find(|(_, _, id)| m["session_id"] == id.as_str())
            .unwrap();
        app.wait_message(key, id, m["id"].as_str().unwrap(), "read")
            .await;
    }
    for (tenant, _, _) in &sessions {
        let started = std::time::Instant::now();
        let stored_in =
            format!("SELECT 1 FROM messages WHERE tenant_id = '{tenant}' AND direction = 'in'");
        while app.execute_sql(&stored_in).await < EACH {
            assert!(started.elapsed() < WAIT, "received messages not stored");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for (kind, before) in kinds.iter().zip(jobs_before) {
        let jobs = app.metric(&sample(kind, "jobs")).await;
        assert!(
            jobs - before >= (2 * EACH) as f64,
            "{kind}: {jobs} jobs, {before} before"
        );
        assert_eq!(
            app.metric(&sample(kind, "fallbacks")).await,
            0.0,
            "{kind} fell back"
        );
    }
    for (tenant, _, _) in &sessions {
        let one = |sql: String| async move {
            let n = app.execute_sql(&sql).await;
            assert_eq!(n, 1, "{sql}");
        };
        let each = EACH as i64;
        // Every message once; the chat row counted them all.
        one(format!(
            "SELECT 1 FROM chats WHERE tenant_id = '{tenant}' AND chat = '{CONTACT}' \
             AND messages_in = {each} AND messages_out = {each} AND unread_count = {each}"
        ))
        .await;
        one(format!(
            "SELECT 1 FROM (SELECT count(*) AS n, count(DISTINCT wa_id) AS d FROM messages \
             WHERE tenant_id = '{tenant}') m WHERE n = 2 * {each} AND d = n"
        ))
        .await;
        // Event ids: 1..n with no gap, matching the tenant's counter.
        one(format!(
            "SELECT 1 FROM (SELECT count(*) AS n, min(id) AS lo, max(id) AS hi FROM events \
             WHERE tenant_id = '{tenant}') e JOIN tenants t ON t.id = '{tenant}' \
             WHERE e.lo = 1 AND e.hi = e.n AND t.last_event_id = e.n"
        ))
        .await;
        // One received event per message, each with its webhook row.
        one(format!(
            "SELECT 1 FROM (SELECT count(*) AS n FROM events WHERE tenant_id = '{tenant}' \
             AND kind = 'message.received') e, (SELECT count(*) AS n FROM webhook_deliveries \
             WHERE tenant_id = '{tenant}' AND event_type = 'message.received') d \
             WHERE e.n = {each} AND d.n = {each}"
        ))
        .await;
    }
}

/// The node's session directory names each running session's actor (so an accepted message
/// reaches it without asking the supervisor), and forgets it when the session stops.
#[actix_web::test]
async fn the_session_directory_follows_the_sessions_actors() {
    let app = spawn(unpaced).await;
    let (_tenant, key) = app.create_tenant("Acme", "standard").await;
    let id = app.new_session(&key, "front desk").await;
    let session: uuid::Uuid = id.parse().unwrap();
    assert!(
        app.state.directory.get(session).is_none(),
        "not started yet"
    );
    app.link(&key, &id, "+15550002004").await;
    let handle = app
        .state
        .directory
        .get(session)
        .expect("a started session is entered");
    let sent = app
        .send_ok(
            &key,
            &id,
            json!({"to": CONTACT, "text": "through the directory"}),
        )
        .await;
    app.wait_message(&key, &id, sent["id"].as_str().unwrap(), "read")
        .await;
    let res = app
        .post(&format!("/api/v1/sessions/{id}/restart"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let started = std::time::Instant::now();
    while app
        .state
        .directory
        .get(session)
        .is_none_or(|h| h.addr == handle.addr)
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new actor was not entered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let res = app
        .post(&format!("/api/v1/sessions/{id}/stop"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let started = std::time::Instant::now();
    while app.state.directory.get(session).is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a stopped session stayed entered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The time a message's `sent` event was stored.
fn sent_at(evs: &[Value], message_id: &Value) -> chrono::DateTime<chrono::Utc> {
    evs.iter()
        .find(|e| {
            e["type"] == "message.status"
                && e["data"]["id"] == *message_id
                && e["data"]["status"] == "sent"
        })
        .unwrap_or_else(|| panic!("no sent event for {message_id}"))["at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[actix_web::test]
async fn a_saturated_tier_waits_for_its_own_send_slots_and_never_holds_back_another() {
    // One standard slot on this node. WhatsApp answers every frame 250 ms late, and each
    // message goes to a new number (a lookup and a prekey fetch first): every send takes
    // about half a second.
    let app = spawn(|s| {
        unpaced(s);
        s.messages.send_slots.standard = 1;
    })
    .await;
    let mut standard = Vec::new();
    for (i, name) in ["A", "B"].into_iter().enumerate() {
        let (_, key) = app.create_tenant(name, "standard").await;
        let id = app.new_session(&key, "desk").await;
        app.link(&key, &id, &format!("+1555000710{i}")).await;
        standard.push((key, id));
    }
    let (_, ekey) = app.create_tenant("E", "enterprise").await;
    let eid = app.new_session(&ekey, "desk").await;
    app.link(&ekey, &eid, "+15550007109").await;
    app.sim().set_latency(Duration::from_millis(250));

    let mut accepted = Vec::new();
    for n in 0..3 {
        for (s, (key, id)) in standard.iter().enumerate() {
            let to = format!("+49151700{s}{n}000");
            let m = app
                .send_ok(key, id, json!({"to": to, "text": "standard"}))
                .await;
            accepted.push((key.clone(), id.clone(), m["id"].clone()));
        }
    }
    let to = "+491517009000";
    let e = app
        .send_ok(&ekey, &eid, json!({"to": to, "text": "enterprise"}))
        .await;

    // Sent at least: the contacts' receipts may already have moved them on.
    let gone_out = async |key: &str, id: &str, m: &Value| {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = app
                .get_json_as(
                    &format!("/api/v1/sessions/{id}/messages/{}", m.as_str().unwrap()),
                    key,
                )
                .await;
            if matches!(got["status"].as_str(), Some("sent" | "delivered" | "read")) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "never sent: {got}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    for (key, id, m) in &accepted {
        gone_out(key, id, m).await;
    }
    gone_out(&ekey, &eid, &e["id"]).await;
    app.sim().set_latency(Duration::ZERO);

    let mut standard_sent = Vec::new();
    for (key, id) in &standard {
        let evs = app.events(key, id, 0).await;
        for (k, i, m) in &accepted {
            if k == key && i == id {
                standard_sent.push(sent_at(&evs, m));
            }
        }
    }
    standard_sent.sort();
    let enterprise_sent = sent_at(&app.events(&ekey, &eid, 0).await, &e["id"]);

    // The six standard sends took turns on the one slot: each ended at least a reply's
    // delay after the one before (two sessions side by side end in pairs, ms apart).
    for pair in standard_sent.windows(2) {
        let gap = (pair[1] - pair[0]).num_milliseconds();
        assert!(
            gap >= 250,
            "standard sends overlapped ({gap} ms apart): {standard_sent:?}"
        );
    }
    // The enterprise message, accepted after all of them, did not queue behind them: it went
    // out while the standard queue was still at its middle (behind it, it would go out after
    // the sixth). Its own send is a first one to a new number, with the LID lookup WhatsApp
    // makes of it, so it is compared with the queue, not with one steady send.
    let accepted_at: chrono::DateTime<chrono::Utc> =
        e["created_at"].as_str().unwrap().parse().unwrap();
    let took = enterprise_sent - accepted_at;
    assert!(
        enterprise_sent < standard_sent[3],
        "the enterprise send waited for standard slots: {took:?} from accept to sent \
         (standard sent {standard_sent:?})"
    );
}

/// A contact's message is acked to WhatsApp only once it is stored. While Postgres refuses
/// to store it, WhatsApp keeps it queued; when the connection comes back, WhatsApp replays
/// it and the client (whose Signal ratchet already moved past it) recommits it from its
/// pending-inbound buffer in the key store: stored once, one `message.received` event.
#[actix_web::test]
async fn a_received_message_is_acked_only_once_it_is_stored() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

    const PHONE: &str = "+15550002004";
    let app = spawn(unpaced).await;
    let (_tenant, key) = app.create_tenant("Acme", "standard").await;
    let id = app.new_session(&key, "front desk").await;
    app.link(&key, &id, PHONE).await;
    let sim = app.sim();
    let first = sim.inject_text(CONTACT, PHONE, "before").await.unwrap();
    app.wait_received(&key, &id, &first).await;

    // Postgres now refuses every received message, and the dead letters too, as a full
    // disk or a failover would.
    let mut db = AsyncPgConnection::establish(&app.db_url).await.unwrap();
    diesel::sql_query(
        "ALTER TABLE messages ADD CONSTRAINT refuse_received CHECK (direction <> 'in') NOT VALID",
    )
    .execute(&mut db)
    .await
    .unwrap();
    diesel::sql_query(
        "ALTER TABLE inbound_dead_letters ADD CONSTRAINT refuse_all CHECK (false) NOT VALID",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let failures = app.metric("wagate_inbound_store_failures_total").await;
    let wa_id = sim
        .inject_text(CONTACT, PHONE, "while the store is down")
        .await
        .unwrap();
    // The client decrypted it (the phone's copy is gone) and the store refused it; it was
    // never acked.
    let refused = tokio::time::Instant::now();
    while app.metric("wagate_inbound_store_failures_total").await <= failures {
        assert!(refused.elapsed() < WAIT, "the store was never asked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        sim.pending_message_ids(PHONE).contains(&wa_id),
        "WhatsApp still holds the unstored message"
    );
    let stored = || {
        let (app, key, id, wa_id) = (&app, &key, &id, &wa_id);
        async move {
            app.get_json_as(&format!("/api/v1/sessions/{id}/messages?limit=100"), key)
                .await["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["wa_id"] == wa_id.as_str())
                .count()
        }
    };
    assert_eq!(stored().await, 0);

    // The store is back; the connection drops and comes back; WhatsApp replays the message.
    diesel::sql_query("ALTER TABLE messages DROP CONSTRAINT refuse_received")
        .execute(&mut db)
        .await
        .unwrap();
    diesel::sql_query("ALTER TABLE inbound_dead_letters DROP CONSTRAINT refuse_all")
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(sim.drop_connections(PHONE), 1);
    let received = app.wait_received(&key, &id, &wa_id).await;
    assert_eq!(received["text"], "while the store is down");
    let drained = tokio::time::Instant::now();
    while sim.pending_stanzas(PHONE) > 0 {
        assert!(
            drained.elapsed() < WAIT,
            "the replayed message was never acked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored().await, 1, "stored once");
    let events = app.events(&key, &id, 0).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "message.received" && e["data"]["wa_id"] == wa_id.as_str())
            .count(),
        1,
        "one event"
    );
}

/// A contact's text holding U+0000 (which Postgres keeps in neither text nor jsonb) is
/// stored with the NUL replaced and says so; it is acked and holds up nothing after it, in
/// one offline batch with it.
#[actix_web::test]
async fn a_received_text_with_nul_is_stored_replaced_and_acked() {
    const PHONE: &str = "+15550002005";
    let app = spawn(unpaced).await;
    let (_tenant, key) = app.create_tenant("Acme", "standard").await;
    let id = app.new_session(&key, "front desk").await;
    app.link(&key, &id, PHONE).await;
    // Both arrive in one batch at the next login.
    assert_eq!(
        app.post_as(&format!("/api/v1/sessions/{id}/stop"), &key)
            .await
            .status(),
        200
    );
    app.wait_status(&key, &id, "stopped").await;
    let res = app
        .sandbox_inbound(&key, &id, CONTACT, "nul\u{0}inside")
        .await;
    assert_eq!(res.status(), 202, "the sandbox contact may send a NUL");
    let poison: Value = res.json().await.unwrap();
    let after = app
        .sim()
        .inject_text(CONTACT, PHONE, "after it")
        .await
        .unwrap();
    assert_eq!(
        app.post_as(&format!("/api/v1/sessions/{id}/start"), &key)
            .await
            .status(),
        202
    );

    let stored = app
        .wait_received(&key, &id, poison["id"].as_str().unwrap())
        .await;
    assert_eq!(stored["text"], "nul\u{FFFD}inside", "{stored}");
    assert_eq!(stored["content"]["nul_replaced"], true, "{stored}");
    let next = app.wait_received(&key, &id, &after).await;
    assert_eq!(next["text"], "after it");
    assert!(next["content"].get("nul_replaced").is_none(), "{next}");
    app.wait_acked(PHONE).await;
    let history = app.history(&key, &id).await;
    assert_eq!(history.len(), 2, "{history:?}");
}

/// A received message that fails to store every time is kept as a dead letter, reported
/// (event and metric) and acked: it is not redelivered at every login, and the message after
/// it in the same batch is stored.
#[actix_web::test]
async fn a_received_message_that_never_stores_is_dead_lettered_and_acked() {
    const PHONE: &str = "+15550002006";
    let app = spawn(unpaced).await;
    let (_tenant, key) = app.create_tenant("Acme", "standard").await;
    let id = app.new_session(&key, "front desk").await;
    app.link(&key, &id, PHONE).await;
    // This one text can never be stored (as a bug in our own code would make it).
    app.execute_sql(
        "ALTER TABLE messages ADD CONSTRAINT refuse_poison \
         CHECK (text IS DISTINCT FROM 'poison') NOT VALID",
    )
    .await;
    assert_eq!(
        app.post_as(&format!("/api/v1/sessions/{id}/stop"), &key)
            .await
            .status(),
        200
    );
    app.wait_status(&key, &id, "stopped").await;
    let sim = app.sim();
    let poison = sim.inject_text(CONTACT, PHONE, "poison").await.unwrap();
    let after = sim.inject_text(CONTACT, PHONE, "after it").await.unwrap();
    let dead_before = app.metric("wagate_inbound_dead_letters_total").await;
    let failed_before = app.metric("wagate_inbound_store_failures_total").await;
    let since = app.last_event_id(&key, &id).await;
    assert_eq!(
        app.post_as(&format!("/api/v1/sessions/{id}/start"), &key)
            .await
            .status(),
        202
    );

    let next = app.wait_received(&key, &id, &after).await;
    assert_eq!(next["text"], "after it");
    let dead = app
        .wait_event(&key, &id, since, "message.dead_lettered")
        .await;
    assert_eq!(dead["data"]["wa_id"], poison.as_str(), "{dead}");
    assert_eq!(dead["data"]["from"], CONTACT);
    assert_eq!(dead["data"]["attempts"], 3);
    assert!(
        dead["data"]["error"]
            .as_str()
            .unwrap()
            .contains("refuse_poison"),
        "{dead}"
    );
    app.wait_acked(PHONE).await;
    assert_eq!(
        app.metric("wagate_inbound_dead_letters_total").await - dead_before,
        1.0
    );
    assert_eq!(
        app.metric("wagate_inbound_store_failures_total").await - failed_before,
        3.0
    );
    // Kept as received.
    let kept = app
        .execute_sql(&format!(
            "SELECT 1 FROM inbound_dead_letters WHERE wa_id = '{poison}' \
             AND convert_from(payload, 'UTF8')::jsonb #>> '{{content,text}}' = 'poison' \
             AND attempts = 3"
        ))
        .await;
    assert_eq!(kept, 1, "the dead letter keeps the message");
    assert!(
        app.history(&key, &id)
            .await
            .iter()
            .all(|m| m["wa_id"] != poison.as_str())
    );

    // A reconnect brings nothing back: it was acked.
    assert_eq!(sim.drop_connections(PHONE), 1);
    app.wait_status(&key, &id, "connected").await;
    let marker = sim.inject_text(CONTACT, PHONE, "marker").await.unwrap();
    app.wait_received(&key, &id, &marker).await;
    assert_eq!(
        app.metric("wagate_inbound_store_failures_total").await - failed_before,
        3.0
    );
}

/// Idempotency keys and message ids belong to their session; a status never moves back.
#[actix_web::test]
async fn keys_and_ids_stay_with_their_session_and_statuses_only_move_forward() {
    let mut app = spawn(unpaced).await;
    let (_t, key) = app.create_tenant("Acme", "professional").await;
    let s1 = app.new_session(&key, "one").await;
    app.link(&key, &s1, "+15550009101").await;
    let s2 = app.new_session(&key, "two").await;
    app.link(&key, &s2, "+15550009102").await;
    let keyed = |session: &str| {
        app.post(&format!("/api/v1/sessions/{session}/messages"))
            .bearer_auth(&key)
            .header("Idempotency-Key", "order-1")
            .json(&json!({"to": CONTACT, "text": "your order shipped"}))
            .send()
    };

    // The same key on another session is another message, sent from that session.
    let first = keyed(&s1).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let second = keyed(&s2).await.unwrap();
    assert_eq!(second.status(), 202);
    assert!(second.headers().get("idempotent-replayed").is_none());
    let second: Value = second.json().await.unwrap();
    assert_ne!(first["id"], second["id"]);
    assert_eq!(second["session_id"], s2.as_str());
    let a = app
        .wait_inbox(&key, CONTACT, first["wa_id"].as_str().unwrap())
        .await;
    let b = app
        .wait_inbox(&key, CONTACT, second["wa_id"].as_str().unwrap())
        .await;
    assert_eq!(
        (a["from"].as_str(), b["from"].as_str()),
        (Some("+15550009101"), Some("+15550009102"))
    );
    // On its own session the key replays the first message.
    let again = keyed(&s1).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);

    // Another session's message, by id or WhatsApp id, is not found through this one.
    for id in [&first["id"], &first["wa_id"]] {
        let id = id.as_str().unwrap();
        let res = app
            .get_as(&format!("/api/v1/sessions/{s2}/messages/{id}"), &key)
            .await;
        assert_error(res, 404, "not_found").await;
    }
    let own = app
        .get_json_as(
            &format!(
                "/api/v1/sessions/{s1}/messages/{}",
                first["wa_id"].as_str().unwrap()
            ),
            &key,
        )
        .await;
    assert_eq!(own["id"], first["id"], "found through its own session");

    // Read, then a late `sent` (WhatsApp's server ack can arrive after the receipts): the
    // message stays read and no event says otherwise.
    let id = first["id"].as_str().unwrap();
    app.wait_message(&key, &s1, id, "read").await;
    let before = app.events(&key, &s1, 0).await.len();
    let session_id: uuid::Uuid = s1.parse().unwrap();
    // What the session actor does with a receipt: move the message with this WhatsApp id.
    let receipt = async |message: &Value, status| {
        wagate::messages::adapters::move_status(
            &app.state.db,
            &app.state.events,
            wagate::messages::store::Move::ByWaIds(
                session_id,
                vec![message["wa_id"].as_str().unwrap().to_owned()],
            ),
            status,
            None,
        )
        .await
        .unwrap()
    };
    use wagate_actors::messaging::DeliveryStatus;
    let moved = receipt(&first, DeliveryStatus::Sent).await;
    assert_eq!(moved, 0, "a move backwards moves nothing");
    let m = app
        .get_json_as(&format!("/api/v1/sessions/{s1}/messages/{id}"), &key)
        .await;
    assert_eq!(m["status"], "read");
    assert_eq!(app.events(&key, &s1, 0).await.len(), before);
    // The same call moving forward does move (the check above is not vacuous): a contact
    // that never sends receipts leaves its message `sent`, and a `delivered` moves it.
    const SILENT: &str = "+4915100000555";
    app.sim()
        .set_contact_behaviour(
            SILENT,
            wagate_sim::ContactBehaviour {
                deliver_after_ms: None,
                read_after_ms: None,
            },
        )
        .unwrap();
    let quiet = app
        .send_ok(&key, &s1, json!({"to": SILENT, "text": "hello?"}))
        .await;
    let quiet_id = quiet["id"].as_str().unwrap();
    app.wait_message(&key, &s1, quiet_id, "sent").await;
    assert_eq!(receipt(&quiet, DeliveryStatus::Delivered).await, 1);
    app.wait_message(&key, &s1, quiet_id, "delivered").await;
    app.stop().await;
}

/// A contact's phone that lost its Signal session cannot decrypt our next message: it asks
/// again with a retry receipt (and fresh keys), whatsapp-rust re-encrypts and re-sends under
/// the same id, and the network lets that one re-send through. The contact gets it once.
#[actix_web::test]
async fn a_contact_that_cannot_decrypt_asks_again_and_gets_the_message_once() {
    let app = spawn(unpaced).await;
    let sim = app.sim();
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let id = app.new_session(&key, "desk").await;
    let own = "+15550008101";
    app.link(&key, &id, own).await;
    let contact = "+4915550008102";
    let first = app
        .send_ok(&key, &id, json!({"to": contact, "text": "first"}))
        .await;
    app.wait_message(&key, &id, first["id"].as_str().unwrap(), "read")
        .await;

    sim.lose_sessions(contact, own).await.unwrap();
    let before = sim.counters().retry_receipts;
    let second = app
        .send_ok(&key, &id, json!({"to": contact, "text": "second"}))
        .await;
    let wa_id = second["wa_id"].as_str().unwrap().to_owned();
    let got = sim
        .wait_for_contact_message(contact, WAIT, |m| m.id == wa_id)
        .await
        .unwrap();
    assert_eq!(got.text.as_deref(), Some("second"));
    app.wait_message(&key, &id, second["id"].as_str().unwrap(), "read")
        .await;
    assert_eq!(sim.counters().retry_receipts, before + 1);
    let copies = sim
        .contact_inbox(contact)
        .into_iter()
        .filter(|m| m.id == wa_id)
        .count();
    assert_eq!(copies, 1, "the re-sent message arrived more than once");
}

/// A contact's message the session's client cannot decrypt (it arrives garbled): the client
/// asks the contact's phone again with a retry receipt, the phone re-sends it under a fresh
/// session, and it is stored once.
#[actix_web::test]
async fn a_message_the_session_cannot_decrypt_is_asked_for_again_and_stored_once() {
    let app = spawn(unpaced).await;
    let sim = app.sim();
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let id = app.new_session(&key, "desk").await;
    let own = "+15550008201";
    app.link(&key, &id, own).await;
    let contact = "+4915550008202";
    let first = sim.inject_text(contact, own, "first").await.unwrap();
    app.wait_received(&key, &id, &first).await;
    // A reply settles the session the contact's phone started: its next message is a plain
    // Signal message, whose MAC the garbling breaks.
    let reply = app
        .send_ok(&key, &id, json!({"to": contact, "text": "hi"}))
        .await;
    app.wait_message(&key, &id, reply["id"].as_str().unwrap(), "read")
        .await;

    let before = sim.counters().retries_answered;
    sim.garble_next_from(contact).unwrap();
    let second = sim.inject_text(contact, own, "second").await.unwrap();
    let got = app.wait_received(&key, &id, &second).await;
    assert_eq!(got["text"], "second");
    assert_eq!(sim.counters().retries_answered, before + 1);
    app.wait_acked(own).await;
    let stored = app
        .history(&key, &id)
        .await
        .into_iter()
        .filter(|m| m["wa_id"] == second.as_str())
        .count();
    assert_eq!(stored, 1);
}
