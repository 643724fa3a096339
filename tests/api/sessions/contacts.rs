//! Contacts, presence and LID addressing end to end: the gateway's whatsapp-rust clients
//! against the in-process simulator, driven through HTTP and the simulator's contacts.

use std::time::Duration;

use serde_json::{Value, json};
use wagate::whatsapp_network::Simulator;
use wagate_sim::{ProfileUpdate, Visibility};

use super::linked::{WAIT, spawn};
use crate::helpers::{TestApp, assert_error};

impl TestApp {
    /// Waits for an event of `kind` whose data `pick` accepts, after event `since`.
    pub(crate) async fn wait_event_where(
        &self,
        key: &str,
        session: &str,
        since: i64,
        kind: &str,
        pick: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(e) = self
                .events(key, session, since)
                .await
                .into_iter()
                .find(|e| e["type"] == kind && pick(&e["data"]))
            {
                return e["data"].clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {kind}: {:?}",
                self.events(key, session, since).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn wait_until(what: &str, ok: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn lid_of(sim: &Simulator, phone: &str) -> String {
    sim.profile(phone).expect("a simulated account").1
}

#[actix_web::test]
async fn presence_and_typing_go_both_ways_and_a_stale_typing_expires() {
    let app = spawn(|s| s.sessions.chat_state_expiry_ms = 1500).await;
    let sim = app.sim();
    // Professional: room for a second session that is never connected.
    let (tenant, key) = app.create_tenant("Acme", "professional").await;
    let (_, other_key) = app.create_tenant("Globex", "standard").await;
    let viewer = app.read_only_key(tenant, &key).await;
    let s = app.new_session(&key, "main").await;
    app.link(&key, &s, "+15550005001").await;
    let contact = "+4915550005002";
    sim.add_contact(contact, Some("Carla")).unwrap();

    // Our presence: the network sees the account online, then offline with a last seen.
    let res = app
        .put(&format!("/api/v1/sessions/{s}/presence"))
        .bearer_auth(&key)
        .json(&json!({"state": "available"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    wait_until("online", || {
        sim.presence_of_account("+15550005001") == Some((true, None))
    })
    .await;
    let res = app
        .put(&format!("/api/v1/sessions/{s}/presence"))
        .bearer_auth(&key)
        .json(&json!({"state": "unavailable"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    wait_until("offline with last seen", || {
        matches!(
            sim.presence_of_account("+15550005001"),
            Some((false, Some(_)))
        )
    })
    .await;

    // Typing: the contact's phone sees "typing…", then not.
    let typing = format!("/api/v1/sessions/{s}/chats/{contact}/typing");
    let res = app
        .post_json(&key, &typing, json!({"state": "composing"}))
        .await;
    assert_eq!(res.status(), 200);
    wait_until("the contact sees typing", || {
        sim.contact_chat_state(contact, "+15550005001").as_deref() == Some("composing")
    })
    .await;
    let res = app
        .post_json(&key, &typing, json!({"state": "paused"}))
        .await;
    assert_eq!(res.status(), 200);
    wait_until("the contact sees it stop", || {
        sim.contact_chat_state(contact, "+15550005001").as_deref() == Some("paused")
    })
    .await;
    let res = app
        .post_json(&key, &typing, json!({"state": "recording"}))
        .await;
    assert_eq!(res.status(), 200);
    wait_until("the contact sees recording", || {
        sim.contact_chat_state(contact, "+15550005001").as_deref() == Some("recording")
    })
    .await;

    // The contact's presence, once subscribed to, and their typing, as events.
    let since = app.last_event_id(&key, &s).await;
    let res = app
        .post_json(
            &key,
            &format!("/api/v1/sessions/{s}/contacts/{contact}/presence/subscribe"),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
    // A subscription is answered with the contact's presence now (offline, never seen).
    app.wait_event_where(&key, &s, since, "presence.update", |d| {
        d["phone"] == contact && d["state"] == "unavailable"
    })
    .await;
    sim.set_contact_presence(contact, true).unwrap();
    app.wait_event_where(&key, &s, since, "presence.update", |d| {
        d["phone"] == contact && d["state"] == "available"
    })
    .await;
    sim.set_contact_presence(contact, false).unwrap();
    let off = app
        .wait_event_where(&key, &s, since, "presence.update", |d| {
            d["phone"] == contact && d["state"] == "unavailable" && d["last_seen"].is_string()
        })
        .await;
    assert!(off.get("chat").is_none(), "{off}");
    sim.contact_types(contact, "+15550005001", "composing")
        .unwrap();
    let typing_event = app
        .wait_event_where(&key, &s, since, "presence.update", |d| {
            d["state"] == "composing"
        })
        .await;
    assert_eq!(typing_event["phone"], contact);
    assert_eq!(typing_event["chat"], contact);
    // Never repeated: after the expiry the gateway tells it stopped.
    let expired = app
        .wait_event_where(&key, &s, since, "presence.update", |d| {
            d["state"] == "paused" && d["expired"] == true
        })
        .await;
    assert_eq!(expired["chat"], contact);
    // A `paused` from the contact is told as is, and cancels the expiry.
    sim.contact_types(contact, "+15550005001", "recording")
        .unwrap();
    sim.contact_types(contact, "+15550005001", "paused")
        .unwrap();
    let last = app.last_event_id(&key, &s).await;
    app.wait_event_where(&key, &s, since, "presence.update", |d| {
        d["state"] == "paused" && d.get("expired").is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let late: Vec<Value> = app
        .events(&key, &s, last)
        .await
        .into_iter()
        .filter(|e| e["data"]["expired"] == true)
        .collect();
    assert!(late.is_empty(), "an answered typing expired: {late:?}");

    // Bad input, other tenants, read-only keys, sessions that are not connected.
    let res = app
        .post_json(&key, &typing, json!({"state": "dancing"}))
        .await;
    assert_error(res, 400, "validation_failed").await;
    let res = app
        .post_json(
            &key,
            &format!("/api/v1/sessions/{s}/chats/not-a-number/typing"),
            json!({"state": "composing"}),
        )
        .await;
    assert_error(res, 400, "validation_failed").await;
    let res = app
        .put(&format!("/api/v1/sessions/{s}/presence"))
        .bearer_auth(&key)
        .json(&json!({"state": "busy"}))
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "validation_failed").await;
    for (path, body) in [
        (typing.clone(), json!({"state": "composing"})),
        (
            format!("/api/v1/sessions/{s}/contacts/{contact}/presence/subscribe"),
            json!({}),
        ),
    ] {
        assert_error(
            app.post_json(&other_key, &path, body.clone()).await,
            404,
            "not_found",
        )
        .await;
        assert_error(app.post_json(&viewer, &path, body).await, 403, "forbidden").await;
    }
    for (k, status, code) in [(&other_key, 404, "not_found"), (&viewer, 403, "forbidden")] {
        let res = app
            .put(&format!("/api/v1/sessions/{s}/presence"))
            .bearer_auth(k)
            .json(&json!({"state": "available"}))
            .send()
            .await
            .unwrap();
        assert_error(res, status, code).await;
    }
    let idle = app.new_session(&key, "idle").await;
    let res = app
        .post_json(
            &key,
            &format!("/api/v1/sessions/{idle}/chats/{contact}/typing"),
            json!({"state": "composing"}),
        )
        .await;
    assert_error(res, 409, "session_not_connected").await;
}

#[actix_web::test]
async fn a_contact_known_only_by_lid_is_one_chat_that_is_answered_and_joins_its_number() {
    let app = spawn(|_| {}).await;
    let sim = app.sim();
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let s = app.new_session(&key, "main").await;
    let own = "+15550006001";
    app.link(&key, &s, own).await;
    let contact = "+4915550006002";
    sim.update_profile(
        contact,
        ProfileUpdate {
            name: Some("Lia".into()),
            lid_addressing: Some(true),
            hide_phone: Some(true),
            ..Default::default()
        },
    )
    .unwrap();
    let lid = lid_of(&sim, contact);
    let lid_chat = format!("{lid}@lid");

    // The contact writes from its LID and hides its number: the gateway knows it by LID.
    let first = sim
        .inject_text(contact, own, "hello from my LID")
        .await
        .unwrap();
    let got = app.wait_received(&key, &s, &first).await;
    assert_eq!(got["from"], lid_chat, "{got}");
    assert_eq!(got["chat"], lid_chat, "{got}");
    let chat = app
        .get_json_as(&format!("/api/v1/sessions/{s}/chats/{lid_chat}"), &key)
        .await;
    assert_eq!(chat["messages_in"], 1, "{chat}");
    assert_eq!(chat["contact_name"], "Lia");

    // Answered at its LID: the contact's phone decrypts it (the Signal session is the LID's).
    let reply = app
        .send_ok(&key, &s, json!({"to": lid_chat, "text": "hi Lia"}))
        .await;
    let seen = sim
        .wait_for_contact_message(contact, WAIT, |m| m.id == reply["wa_id"])
        .await
        .unwrap();
    assert_eq!(seen.text.as_deref(), Some("hi Lia"));
    app.wait_message(&key, &s, reply["id"].as_str().unwrap(), "read")
        .await;

    // The contact's LID-only entry is listed, with its push name.
    let contacts = app
        .get_json_as(&format!("/api/v1/sessions/{s}/contacts"), &key)
        .await;
    let entry = contacts["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["chat"] == lid_chat)
        .cloned()
        .unwrap_or_else(|| panic!("no LID contact in {contacts}"));
    assert_eq!(entry["lid"], lid);
    assert!(entry["phone"].is_null());
    assert_eq!(entry["push_name"], "Lia");

    // The contact shows its number again: the next message carries it, and the LID's chat
    // becomes the number's — one chat, history not split.
    sim.update_profile(
        contact,
        ProfileUpdate {
            hide_phone: Some(false),
            ..Default::default()
        },
    )
    .unwrap();
    let second = sim
        .inject_text(contact, own, "now with my number")
        .await
        .unwrap();
    let got = app.wait_received(&key, &s, &second).await;
    assert_eq!(got["from"], contact);
    let deadline = tokio::time::Instant::now() + WAIT;
    let merged = loop {
        let res = app
            .get_as(&format!("/api/v1/sessions/{s}/chats/{contact}"), &key)
            .await;
        if res.status() == 200 {
            let c: Value = res.json().await.unwrap();
            if c["messages_in"] == 2 {
                break c;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "never merged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(merged["messages_out"], 1, "{merged}");
    assert_eq!(merged["contact_name"], "Lia");
    assert_error(
        app.get_as(&format!("/api/v1/sessions/{s}/chats/{lid_chat}"), &key)
            .await,
        404,
        "not_found",
    )
    .await;
    let history = app
        .get_json_as(
            &format!("/api/v1/sessions/{s}/messages?chat={contact}&limit=10"),
            &key,
        )
        .await;
    let ids: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["wa_id"].as_str())
        .collect();
    for id in [
        first.as_str(),
        reply["wa_id"].as_str().unwrap(),
        second.as_str(),
    ] {
        assert!(
            ids.contains(&id),
            "{id} missing from the number's chat: {history}"
        );
    }
    let entry = app
        .get_json_as(&format!("/api/v1/sessions/{s}/contacts"), &key)
        .await;
    let items = entry["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{entry}");
    assert_eq!(items[0]["chat"], contact);
    assert_eq!(items[0]["lid"], lid);

    // A LID the contact writes from later lands in the number's chat too.
    sim.update_profile(
        contact,
        ProfileUpdate {
            hide_phone: Some(true),
            ..Default::default()
        },
    )
    .unwrap();
    let third = sim.inject_text(contact, own, "hidden again").await.unwrap();
    let got = app.wait_received(&key, &s, &third).await;
    assert_eq!(got["chat"], contact, "{got}");

    // A bad LID is refused.
    let res = app
        .send(&key, &s, json!({"to": "12x@lid", "text": "x"}))
        .await;
    assert_error(res, 400, "validation_failed").await;
}

#[actix_web::test]
async fn numbers_are_checked_cached_and_limited_profiles_respect_privacy_and_blocks_hold() {
    let app = spawn(|s| s.contacts.checks_per_minute = 4).await;
    let sim = app.sim();
    // Professional: room for a second session that is never connected.
    let (tenant, key) = app.create_tenant("Acme", "professional").await;
    let (_, other_key) = app.create_tenant("Globex", "standard").await;
    let viewer = app.read_only_key(tenant, &key).await;
    let s = app.new_session(&key, "main").await;
    let own = "+15550007001";
    app.link(&key, &s, own).await;
    let open = "+4915550007002";
    let private = "+4915550007003";
    let nobody = "+4915550007004";
    sim.update_profile(
        open,
        ProfileUpdate {
            about: Some("Available".into()),
            picture: Some(true),
            ..Default::default()
        },
    )
    .unwrap();
    sim.update_profile(
        private,
        ProfileUpdate {
            about: Some("secret".into()),
            picture: Some(true),
            about_visible_to: Some(Visibility::Contacts),
            picture_visible_to: Some(Visibility::Nobody),
            ..Default::default()
        },
    )
    .unwrap();
    sim.mark_not_on_whatsapp(nobody).unwrap();

    let check = format!("/api/v1/sessions/{s}/contacts/check");
    let res = app
        .post_json(&key, &check, json!({"phones": [open, nobody]}))
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let items = body["items"].as_array().unwrap();
    assert_eq!(items[0]["phone"], open);
    assert_eq!(items[0]["on_whatsapp"], true);
    assert_eq!(items[0]["jid"], "4915550007002@s.whatsapp.net");
    assert_eq!(items[0]["lid"], lid_of(&sim, open));
    assert_eq!(items[0]["cached"], false);
    assert_eq!(items[1]["on_whatsapp"], false);
    assert!(items[1]["jid"].is_null());
    // Asked again: from the cache, without spending the lookup budget.
    for _ in 0..3 {
        let res = app
            .post_json(&key, &check, json!({"phones": [open, nobody]}))
            .await;
        let body: Value = res.json().await.unwrap();
        assert!(
            body["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["cached"] == true),
            "{body}"
        );
    }
    // Two numbers of budget are left: three new ones are refused.
    let res = app
        .post_json(
            &key,
            &check,
            json!({"phones": ["+4915550007011", "+4915550007012", "+4915550007013"]}),
        )
        .await;
    assert_error(res, 429, "rate_limited").await;
    for bad in [
        json!({"phones": []}),
        json!({"phones": ["123"]}),
        json!({"phones": ["99@lid"]}),
    ] {
        assert_error(
            app.post_json(&key, &check, bad).await,
            400,
            "validation_failed",
        )
        .await;
    }

    // Profiles: what the contact's privacy settings let this account see.
    let detail = app
        .get_json_as(&format!("/api/v1/sessions/{s}/contacts/{open}"), &key)
        .await;
    assert_eq!(detail["about"], "Available", "{detail}");
    assert_eq!(detail["about_hidden"], false);
    assert!(
        detail["picture_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://pps.whatsapp.net/")),
        "{detail}"
    );
    let hidden = app
        .get_json_as(&format!("/api/v1/sessions/{s}/contacts/{private}"), &key)
        .await;
    assert!(hidden["about"].is_null(), "{hidden}");
    assert_eq!(hidden["about_hidden"], true);
    assert!(hidden["picture_url"].is_null());
    // Once the contact has this number in their address book, the about text shows.
    sim.update_profile(
        private,
        ProfileUpdate {
            add_to_address_book: vec![own.into()],
            ..Default::default()
        },
    )
    .unwrap();
    let shown = app
        .get_json_as(&format!("/api/v1/sessions/{s}/contacts/{private}"), &key)
        .await;
    assert_eq!(shown["about"], "secret", "{shown}");
    assert!(shown["picture_url"].is_null(), "{shown}");

    // Blocking: WhatsApp stops delivering the contact's messages until unblocked.
    let res = app
        .post_json(
            &key,
            &format!("/api/v1/sessions/{s}/contacts/{open}/block"),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let blocked: Value = res.json().await.unwrap();
    assert_eq!(blocked["blocked"], true);
    assert_eq!(sim.blocked_by(own), vec!["4915550007002".to_owned()]);
    let dropped = sim.inject_text(open, own, "can you hear me").await.unwrap();
    let unblocked = app
        .post_json(
            &key,
            &format!("/api/v1/sessions/{s}/contacts/{open}/unblock"),
            json!({}),
        )
        .await;
    assert_eq!(unblocked.status(), 200);
    assert!(sim.blocked_by(own).is_empty());
    let heard = sim.inject_text(open, own, "and now?").await.unwrap();
    app.wait_received(&key, &s, &heard).await;
    let history = app.history(&key, &s).await;
    assert!(
        !history.iter().any(|m| m["wa_id"] == dropped),
        "a blocked contact's message arrived"
    );
    let listed = app
        .get_json_as(&format!("/api/v1/sessions/{s}/contacts?limit=100"), &key)
        .await;
    let entry = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["chat"] == open)
        .cloned()
        .unwrap();
    assert_eq!(entry["blocked"], false);
    assert_eq!(entry["on_whatsapp"], true);

    // A number never checked is blocked all the same (its LID is looked up first); one that
    // is not on WhatsApp cannot be.
    let fresh = "+4915550007021";
    let res = app
        .post_json(
            &key,
            &format!("/api/v1/sessions/{s}/contacts/{fresh}/block"),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert!(sim.blocked_by(own).contains(&"4915550007021".to_owned()));
    let res = app
        .post_json(
            &key,
            &format!("/api/v1/sessions/{s}/contacts/{nobody}/block"),
            json!({}),
        )
        .await;
    assert_error(res, 422, "not_on_whatsapp").await;

    // Other tenants see none of it; read-only keys read but do not block or look up.
    for path in [
        format!("/api/v1/sessions/{s}/contacts"),
        format!("/api/v1/sessions/{s}/contacts/{open}"),
    ] {
        assert_error(app.get_as(&path, &other_key).await, 404, "not_found").await;
    }
    assert_eq!(
        app.get_as(&format!("/api/v1/sessions/{s}/contacts"), &viewer)
            .await
            .status(),
        200
    );
    for path in [
        check.clone(),
        format!("/api/v1/sessions/{s}/contacts/{open}/block"),
        format!("/api/v1/sessions/{s}/contacts/{open}/unblock"),
    ] {
        assert_error(
            app.post_json(&other_key, &path, json!({"phones": [open]}))
                .await,
            404,
            "not_found",
        )
        .await;
        assert_error(
            app.post_json(&viewer, &path, json!({"phones": [open]}))
                .await,
            403,
            "forbidden",
        )
        .await;
    }
    assert!(!sim.blocked_by(own).contains(&"4915550007002".to_owned()));
    assert_eq!(sim.blocked_by(own), vec!["4915550007021".to_owned()]);
    // A session that is not connected cannot look anything up.
    let idle = app.new_session(&key, "idle").await;
    let res = app
        .post_json(
            &key,
            &format!("/api/v1/sessions/{idle}/contacts/check"),
            json!({"phones": [open]}),
        )
        .await;
    assert_error(res, 409, "session_not_connected").await;
}

#[actix_web::test]
async fn edits_and_deletes_go_both_ways_within_whatsapps_windows() {
    let app = spawn(|_| {}).await;
    let sim = app.sim();
    let (tenant, key) = app.create_tenant("Acme", "standard").await;
    let (_, other_key) = app.create_tenant("Globex", "standard").await;
    let viewer = app.read_only_key(tenant, &key).await;
    let s = app.new_session(&key, "main").await;
    let own = "+15550008001";
    app.link(&key, &s, own).await;
    let contact = "+4915550008002";
    sim.add_contact(contact, Some("Ed")).unwrap();

    // Our message, edited and then deleted for everyone: the contact's phone sees both.
    let m = app
        .send_ok(&key, &s, json!({"to": contact, "text": "helo"}))
        .await;
    let id = m["id"].as_str().unwrap().to_owned();
    let wa_id = m["wa_id"].as_str().unwrap().to_owned();
    app.wait_message(&key, &s, &id, "read").await;
    let path = format!("/api/v1/sessions/{s}/messages/{id}");
    let since = app.last_event_id(&key, &s).await;
    let res = app
        .patch(&path)
        .bearer_auth(&key)
        .json(&json!({"text": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let edited: Value = res.json().await.unwrap();
    assert_eq!(edited["text"], "hello");
    assert!(edited["edited_at"].is_string(), "{edited}");
    let seen = sim
        .wait_for_contact_message(contact, WAIT, |r| {
            r.kind == "edit" && r.reference_id.as_deref() == Some(wa_id.as_str())
        })
        .await
        .unwrap();
    assert_eq!(seen.text.as_deref(), Some("hello"));
    let event = app
        .wait_event_where(&key, &s, since, "message.edited", |d| {
            d["id"] == id.as_str()
        })
        .await;
    assert_eq!(event["direction"], "out");
    assert_eq!(event["text"], "hello");
    let res = app
        .delete(&format!("{path}?for=everyone"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let deleted: Value = res.json().await.unwrap();
    assert_eq!(deleted["deleted_for"], "everyone");
    sim.wait_for_contact_message(contact, WAIT, |r| {
        r.kind == "revoke" && r.reference_id.as_deref() == Some(wa_id.as_str())
    })
    .await
    .unwrap();
    app.wait_event_where(&key, &s, since, "message.deleted", |d| {
        d["id"] == id.as_str() && d["for"] == "everyone"
    })
    .await;
    let res = app
        .delete(&format!("{path}?for=everyone"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_error(res, 409, "message_not_changeable").await;

    // The contact's message, edited and then deleted by the contact.
    let theirs = sim.inject_text(contact, own, "see you at 5").await.unwrap();
    let got = app.wait_received(&key, &s, &theirs).await;
    let their_id = got["id"].as_str().unwrap().to_owned();
    sim.inject_edit(contact, own, &theirs, "see you at 6")
        .await
        .unwrap();
    let event = app
        .wait_event_where(&key, &s, since, "message.edited", |d| {
            d["wa_id"] == theirs.as_str()
        })
        .await;
    assert_eq!(event["direction"], "in");
    assert_eq!(event["text"], "see you at 6");
    let now = app
        .get_json_as(&format!("/api/v1/sessions/{s}/messages/{their_id}"), &key)
        .await;
    assert_eq!(now["text"], "see you at 6", "{now}");
    assert!(now["edited_at"].is_string());
    // An edit is not a new message: the chat still counts one received.
    let chat = app
        .get_json_as(&format!("/api/v1/sessions/{s}/chats/{contact}"), &key)
        .await;
    assert_eq!(chat["messages_in"], 1, "{chat}");
    // Not ours to edit, nor to delete for everyone.
    let their_path = format!("/api/v1/sessions/{s}/messages/{their_id}");
    let res = app
        .patch(&their_path)
        .bearer_auth(&key)
        .json(&json!({"text": "mine now"}))
        .send()
        .await
        .unwrap();
    assert_error(res, 409, "message_not_changeable").await;
    let res = app
        .delete(&format!("{their_path}?for=everyone"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_error(res, 409, "message_not_changeable").await;
    sim.inject_revoke(contact, own, &theirs).await.unwrap();
    app.wait_event_where(&key, &s, since, "message.deleted", |d| {
        d["wa_id"] == theirs.as_str() && d["for"] == "everyone" && d["direction"] == "in"
    })
    .await;

    // Deleting for me needs no WhatsApp and works on any message; an old one is past the
    // edit window.
    let another = sim.inject_text(contact, own, "keep or not").await.unwrap();
    let got = app.wait_received(&key, &s, &another).await;
    let res = app
        .delete(&format!(
            "/api/v1/sessions/{s}/messages/{}?for=me",
            got["id"].as_str().unwrap()
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mine: Value = res.json().await.unwrap();
    assert_eq!(mine["deleted_for"], "me");
    let old = app
        .send_ok(&key, &s, json!({"to": contact, "text": "old"}))
        .await;
    let old_id = old["id"].as_str().unwrap();
    app.wait_message(&key, &s, old_id, "read").await;
    app.execute_sql(&format!(
        "UPDATE messages SET created_at = now() - interval '16 minutes' WHERE id = '{old_id}'"
    ))
    .await;
    let old_path = format!("/api/v1/sessions/{s}/messages/{old_id}");
    let res = app
        .patch(&old_path)
        .bearer_auth(&key)
        .json(&json!({"text": "too late"}))
        .send()
        .await
        .unwrap();
    assert_error(res, 409, "message_not_changeable").await;

    // Bad input, other tenants, read-only keys.
    for body in [json!({"text": ""}), json!({"text": 5}), json!({"txt": "x"})] {
        let res = app
            .patch(&old_path)
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{body}");
    }
    let res = app
        .delete(&format!("{old_path}?for=nobody"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "validation_failed").await;
    for k in [&other_key, &viewer] {
        let status = if *k == other_key { 404 } else { 403 };
        let res = app
            .patch(&old_path)
            .bearer_auth(k)
            .json(&json!({"text": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status);
        let res = app.delete(&old_path).bearer_auth(k).send().await.unwrap();
        assert_eq!(res.status(), status);
    }
    let untouched = app.get_json_as(&old_path, &key).await;
    assert_eq!(untouched["text"], "old");
    assert!(untouched.get("deleted_at").is_none(), "{untouched}");
}

#[actix_web::test]
async fn a_contact_that_takes_only_trusted_first_messages_is_told_and_reached_after_it_writes() {
    let app = spawn(|_| {}).await;
    let sim = app.sim();
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let s = app.new_session(&key, "main").await;
    let own = "+15550006101";
    app.link(&key, &s, own).await;
    let contact = "+4915550006102";
    sim.update_profile(
        contact,
        ProfileUpdate {
            requires_token: Some(true),
            ..Default::default()
        },
    )
    .unwrap();

    // WhatsApp refuses the cold message (463): it fails, and says why.
    let cold = app
        .send_ok(&key, &s, json!({"to": contact, "text": "cold hello"}))
        .await;
    let failed = app
        .wait_message(&key, &s, cold["id"].as_str().unwrap(), "failed")
        .await;
    let reason = failed["error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("463") && reason.contains("write first"),
        "{failed}"
    );
    assert_eq!(sim.counters().token_refusals, 1);

    // The contact writes; its token comes with it, and the next message goes through.
    let first = sim.inject_text(contact, own, "hi there").await.unwrap();
    app.wait_received(&key, &s, &first).await;
    let warm = app
        .send_ok(&key, &s, json!({"to": contact, "text": "warm hello"}))
        .await;
    app.wait_message(&key, &s, warm["id"].as_str().unwrap(), "read")
        .await;
    assert_eq!(sim.counters().token_refusals, 1);
}
