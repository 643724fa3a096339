//! Groups end to end: two gateway sessions of different tenants and a simulated contact in
//! one group, through HTTP, with the real whatsapp-rust clients and sender keys over the
//! simulator.

use serde_json::{Value, json};

use super::linked::{WAIT, spawn};
use crate::helpers::{TestApp, assert_error};

impl TestApp {
    async fn patch_json(&self, key: &str, path: &str, body: Value) -> reqwest::Response {
        self.patch(path)
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// The `message.received` event whose text is `text`.
    async fn wait_received_text(&self, key: &str, session: &str, text: &str) -> Value {
        self.wait_event_where(key, session, 0, "message.received", |d| d["text"] == text)
            .await
    }
}

#[actix_web::test]
async fn two_tenants_and_a_contact_share_a_group_end_to_end() {
    let app = spawn(|_| {}).await;
    let sim = app.sim();
    let (acme_tenant, acme) = app.create_tenant("Acme", "professional").await;
    let (_, globex) = app.create_tenant("Globex", "standard").await;
    let viewer = app.read_only_key(acme_tenant, &acme).await;
    let (alice, bob, carol) = ("+15550007001", "+15550007002", "+4915550007003");
    let a = app.new_session(&acme, "main").await;
    let b = app.new_session(&globex, "main").await;
    app.link(&acme, &a, alice).await;
    app.link(&globex, &b, bob).await;
    sim.add_contact(carol, Some("Carol")).unwrap();

    // Acme creates the group: Alice is its superadmin, Bob and Carol members.
    let res = app
        .post_json(
            &acme,
            &format!("/api/v1/sessions/{a}/groups"),
            json!({"subject": "Launch", "participants": [bob, carol]}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let group: Value = res.json().await.unwrap();
    let gid = group["jid"].as_str().unwrap().to_owned();
    assert!(gid.ends_with("@g.us"), "{group}");
    assert_eq!(group["subject"], "Launch");
    let role_of = |g: &Value, phone: &str| {
        g["participants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["phone"] == phone)
            .map(|p| p["role"].as_str().unwrap().to_owned())
    };
    assert_eq!(role_of(&group, alice).as_deref(), Some("superadmin"));
    assert_eq!(role_of(&group, bob).as_deref(), Some("member"));
    assert_eq!(role_of(&group, carol).as_deref(), Some("member"));

    // Bob's session is told, and lists it.
    let created = app
        .wait_event_where(&globex, &b, 0, "group.created", |d| d["group"] == gid)
        .await;
    assert_eq!(created["subject"], "Launch");
    assert_eq!(created["by"], alice);
    let listed = app
        .get_json_as(&format!("/api/v1/sessions/{b}/groups"), &globex)
        .await;
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["jid"] == gid),
        "{listed}"
    );

    // Alice writes to the group: Bob's session stores it in the group's chat with Alice as
    // sender, Carol's phone reads it, and the message is delivered.
    let sent = app
        .send_ok(&acme, &a, json!({"to": gid, "text": "hello group"}))
        .await;
    assert_eq!(sent["chat"], gid);
    let got = app.wait_received_text(&globex, &b, "hello group").await;
    assert_eq!(got["chat"], gid, "{got}");
    assert_eq!(got["from"], alice, "{got}");
    let carol_got = sim
        .wait_for_contact_message(carol, WAIT, |m| m.text.as_deref() == Some("hello group"))
        .await
        .unwrap();
    assert_eq!(carol_got.group.as_deref(), Some(gid.as_str()));
    app.wait_message(&acme, &a, sent["id"].as_str().unwrap(), "read")
        .await;

    // Carol writes from her phone and Bob answers: both reach the others, kept with their
    // senders; the group's chat holds the conversation.
    sim.inject_group_text(carol, &gid, "Carol here")
        .await
        .unwrap();
    for (key, s) in [(&acme, &a), (&globex, &b)] {
        let got = app.wait_received_text(key, s, "Carol here").await;
        assert_eq!(
            (got["chat"].as_str(), got["from"].as_str()),
            (Some(gid.as_str()), Some(carol))
        );
    }
    app.send_ok(&globex, &b, json!({"to": gid, "text": "Bob answers"}))
        .await;
    let got = app.wait_received_text(&acme, &a, "Bob answers").await;
    assert_eq!(got["from"], bob);
    let history = app
        .get_json_as(&format!("/api/v1/sessions/{a}/messages?chat={gid}"), &acme)
        .await;
    let texts: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    for t in ["hello group", "Carol here", "Bob answers"] {
        assert!(texts.contains(&t), "{t} missing from {texts:?}");
    }

    // Alice renames and describes it; Bob's session is told.
    let res = app
        .patch_json(
            &acme,
            &format!("/api/v1/sessions/{a}/groups/{gid}"),
            json!({"subject": "Launch v2", "description": "Ship it"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let updated: Value = res.json().await.unwrap();
    assert_eq!(updated["subject"], "Launch v2");
    assert_eq!(updated["description"], "Ship it");
    app.wait_event_where(&globex, &b, 0, "group.updated", |d| {
        d["group"] == gid && d["subject"] == "Launch v2"
    })
    .await;
    let seen = app
        .get_json_as(&format!("/api/v1/sessions/{b}/groups/{gid}"), &globex)
        .await;
    assert_eq!(seen["description"], "Ship it");

    // Only admins change participants: Bob is refused, Alice removes Carol.
    let participants = |s: &str| format!("/api/v1/sessions/{s}/groups/{gid}/participants");
    let res = app
        .post_json(&globex, &participants(&b), json!({"remove": [carol]}))
        .await;
    assert_error(res, 403, "whatsapp_refused").await;
    let res = app
        .post_json(&acme, &participants(&a), json!({"remove": [carol]}))
        .await;
    assert_eq!(res.status(), 200);
    let removed: Value = res.json().await.unwrap();
    assert_eq!(removed["items"][0]["phone"], carol);
    assert_eq!(removed["items"][0]["ok"], true, "{removed}");
    let told = app
        .wait_event_where(&globex, &b, 0, "group.participants", |d| {
            d["group"] == gid && d["action"] == "remove"
        })
        .await;
    assert_eq!(told["participants"], json!([carol]));
    // Adding Bob again is WhatsApp's 409, per number; promoting him works.
    let res = app
        .post_json(&acme, &participants(&a), json!({"add": [bob]}))
        .await;
    let again: Value = res.json().await.unwrap();
    assert_eq!(again["items"][0]["error"], "409", "{again}");
    let res = app
        .post_json(&acme, &participants(&a), json!({"promote": [bob]}))
        .await;
    assert_eq!(res.status(), 200);
    let g = app
        .get_json_as(&format!("/api/v1/sessions/{a}/groups/{gid}"), &acme)
        .await;
    assert_eq!(role_of(&g, bob).as_deref(), Some("admin"), "{g}");
    assert_eq!(role_of(&g, carol), None);

    // Bob leaves and comes back through the invite link.
    let link = app
        .get_json_as(
            &format!("/api/v1/sessions/{a}/groups/{gid}/invite-link"),
            &acme,
        )
        .await;
    let code = link["invite_code"].as_str().unwrap().to_owned();
    assert_eq!(
        link["invite_link"],
        format!("https://chat.whatsapp.com/{code}")
    );
    let res = app
        .post_json(
            &globex,
            &format!("/api/v1/sessions/{b}/groups/{gid}/leave"),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert!(
        !sim.group(&gid)
            .unwrap()
            .participants
            .contains_key(&bob[1..])
    );
    let res = app
        .post_json(
            &globex,
            &format!("/api/v1/sessions/{b}/groups/join"),
            json!({"invite_code": link["invite_link"]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let joined: Value = res.json().await.unwrap();
    assert_eq!(joined["jid"], gid);
    // A revoked link no longer works.
    let res = app
        .post_json(
            &acme,
            &format!("/api/v1/sessions/{a}/groups/{gid}/invite-link/revoke"),
            json!({}),
        )
        .await;
    let fresh: Value = res.json().await.unwrap();
    assert_ne!(fresh["invite_code"], code);
    let res = app
        .post_json(
            &globex,
            &format!("/api/v1/sessions/{b}/groups/join"),
            json!({"invite_code": code}),
        )
        .await;
    assert_error(res, 422, "whatsapp_refused").await;

    // Bad input, unknown groups, other tenants, read-only keys, sessions not connected.
    let base = format!("/api/v1/sessions/{a}/groups");
    for (body, field) in [
        (json!({"subject": "", "participants": [bob]}), "subject"),
        (json!({"subject": "x".repeat(101)}), "subject"),
        (
            json!({"subject": "ok", "participants": ["not a number"]}),
            "participants[0]",
        ),
    ] {
        let body = assert_error(
            app.post_json(&acme, &base, body).await,
            400,
            "validation_failed",
        )
        .await;
        assert_eq!(body["error"]["details"]["field"], field, "{body}");
    }
    assert_error(
        app.post_json(
            &acme,
            &participants(&a),
            json!({"add": [bob], "remove": [bob]}),
        )
        .await,
        400,
        "validation_failed",
    )
    .await;
    assert_error(
        app.get_as(&format!("{base}/not-a-group"), &acme).await,
        400,
        "validation_failed",
    )
    .await;
    assert_error(
        app.get_as(&format!("{base}/120363999999999999@g.us"), &acme)
            .await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        app.send(&acme, &a, json!({"to": "12x@g.us", "text": "x"}))
            .await,
        400,
        "validation_failed",
    )
    .await;
    for path in [
        base.clone(),
        format!("{base}/{gid}"),
        format!("{base}/{gid}/invite-link"),
    ] {
        assert_error(app.get_as(&path, &globex).await, 404, "not_found").await;
    }
    for (path, body) in [
        (base.clone(), json!({"subject": "Nope"})),
        (participants(&a), json!({"add": [carol]})),
        (format!("{base}/{gid}/leave"), json!({})),
        (format!("{base}/join"), json!({"invite_code": "abc"})),
        (format!("{base}/{gid}/invite-link/revoke"), json!({})),
    ] {
        assert_error(
            app.post_json(&globex, &path, body.clone()).await,
            404,
            "not_found",
        )
        .await;
        assert_error(app.post_json(&viewer, &path, body).await, 403, "forbidden").await;
    }
    assert_error(
        app.patch_json(&viewer, &format!("{base}/{gid}"), json!({"subject": "x"}))
            .await,
        403,
        "forbidden",
    )
    .await;
    // The viewer reads; nothing it tried changed the group.
    let g = app.get_json_as(&format!("{base}/{gid}"), &viewer).await;
    assert_eq!(g["subject"], "Launch v2");
    assert_eq!(role_of(&g, carol), None);
    let idle = app.new_session(&acme, "idle").await;
    assert_error(
        app.get_as(&format!("/api/v1/sessions/{idle}/groups"), &acme)
            .await,
        409,
        "session_not_connected",
    )
    .await;
    assert_eq!(
        sim.counters().unmodelled_requests,
        0,
        "{:?}",
        sim.counters().unmodelled
    );
}
