#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The simulator's HTTP control API, as a separately run simulator serves it.

use std::time::Duration;

use actix_web::{App, test};
use serde_json::{Value, json};
use wagate_sim::{SimClient, Simulator, control};
use whatsapp_rust::Jid;
use whatsapp_rust::types::events::Event;
use whatsapp_rust::waproto::whatsapp as wa;

const WAIT: Duration = Duration::from_secs(20);

#[actix_web::test]
async fn the_control_api_links_injects_reads_drops_and_counts() {
    let sim = Simulator::new();
    let app = test::init_service(App::new().configure(control::configure(sim.clone()))).await;
    let c = SimClient::start_unpaired(&sim).await.unwrap();
    let qr = c.wait_qr(0, WAIT).await.unwrap();

    // Bad input is a clear JSON error, not a link.
    let req = test::TestRequest::post()
        .uri("/control/scan")
        .set_json(json!({"qr": "not a qr", "phone": "15550001111"}))
        .to_request();
    let res = test::call_service(&app, req).await;
    assert_eq!(res.status(), 422);
    let body: Value = test::read_body_json(res).await;
    assert_eq!(body["error"]["code"], "rejected");

    let req = test::TestRequest::post()
        .uri("/control/scan")
        .set_json(json!({"qr": qr, "phone": "+15550001111"}))
        .to_request();
    let body: Value = test::call_and_read_body_json(&app, req).await;
    assert_eq!(body["jid"], "15550001111:1@s.whatsapp.net");
    c.wait_connected(0, WAIT).await.unwrap();

    // A contact writes to the account.
    let mark = c.events.mark();
    let req = test::TestRequest::post()
        .uri("/control/inject")
        .set_json(json!({"from": "+4915112345678", "to": "15550001111", "text": "via http"}))
        .to_request();
    let body: Value = test::call_and_read_body_json(&app, req).await;
    let id = body["id"].as_str().unwrap().to_string();
    c.events
        .wait(mark, WAIT, |e| match e {
            Event::Messages(b) => b
                .iter()
                .any(|m| m.info.id == id && m.message.conversation.as_deref() == Some("via http"))
                .then_some(()),
            _ => None,
        })
        .await
        .unwrap();

    // The account answers; the contact's inbox shows it.
    let sent = c
        .client
        .send_message(
            Jid::pn("4915112345678"),
            wa::Message {
                conversation: Some("answer".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    sim.wait_for_contact_message("4915112345678", WAIT, |m| m.id == sent.message_id)
        .await
        .unwrap();
    let req = test::TestRequest::get()
        .uri("/control/contacts/4915112345678/messages")
        .to_request();
    let inbox: Value = test::call_and_read_body_json(&app, req).await;
    assert_eq!(inbox[0]["text"], "answer");
    assert_eq!(inbox[0]["from"], "15550001111");

    let req = test::TestRequest::post()
        .uri("/control/accounts/15550001111/drop")
        .to_request();
    let body: Value = test::call_and_read_body_json(&app, req).await;
    assert_eq!(body["dropped"], 1);

    // The client reconnects; dropping every connection cuts that one too.
    let reconnected = std::time::Instant::now();
    while !(sim.counters().connections_total >= 2 && sim.counters().connections_open == 1) {
        assert!(reconnected.elapsed() < WAIT, "the client did not reconnect");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let req = test::TestRequest::post()
        .uri("/control/connections/drop")
        .to_request();
    let body: Value = test::call_and_read_body_json(&app, req).await;
    assert_eq!(body["dropped"], 1);

    let req = test::TestRequest::post()
        .uri("/control/accounts/15550001111/devices/9/logout")
        .to_request();
    assert_eq!(test::call_service(&app, req).await.status(), 404);

    let req = test::TestRequest::post()
        .uri("/control/faults")
        .set_json(json!({"latency_ms": 0}))
        .to_request();
    assert_eq!(test::call_service(&app, req).await.status(), 204);

    let req = test::TestRequest::get()
        .uri("/control/counters")
        .to_request();
    let counters: Value = test::call_and_read_body_json(&app, req).await;
    assert_eq!(counters["pairings"], 1);
    assert!(counters["connections_total"].as_u64().unwrap() >= 2);
}
