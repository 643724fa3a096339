//! The CRM with real chats: simulated contacts write to a session linked through the real
//! whatsapp-rust client; a board takes each new chat as a card, search finds words of the
//! chat's messages, and the chat shows its cards.

use std::time::Duration;

use serde_json::{Value, json};

use super::linked::{WAIT, spawn};

const OWN: &str = "+15550009101";

#[actix_web::test]
async fn a_board_takes_new_chats_as_cards_once_and_search_finds_their_messages() {
    let app = spawn(|s| s.crm.auto_card_interval_ms = 100).await;
    let sim = app.sim();
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let session = app.new_session(&key, "main").await;
    app.link(&key, &session, OWN).await;
    let board = app
        .create_board(
            &key,
            json!({"name": "Inbox", "columns": ["Incoming", "Qualified"], "auto_session_id": session}),
        )
        .await;
    let board_id = board["id"].as_str().unwrap().to_owned();
    assert_eq!(board["auto_column_id"], board["columns"][0]["id"]);

    let contacts = ["+4915550009102", "+4915550009103"];
    sim.add_contact(contacts[0], Some("Lia")).unwrap();
    sim.add_contact(contacts[1], None).unwrap();
    for (contact, text) in [
        (contacts[0], "Hello, I need shipping to Berlin"),
        (contacts[1], "Is the blue jacket available?"),
        (contacts[0], "Also two more jackets please"),
    ] {
        let id = sim.inject_text(contact, OWN, text).await.unwrap();
        app.wait_received(&key, &session, &id).await;
    }

    // One card per new chat, titled with the contact's name (or number), in Incoming.
    let deadline = tokio::time::Instant::now() + WAIT;
    let cards = loop {
        let layout = app.board_layout(&key, &board_id).await;
        if layout[0].1.len() >= 2 {
            break layout[0].1.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no cards for the new chats"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // More sweeps make no second card of the same chat.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.board_layout(&key, &board_id).await[0].1.len(), 2);
    let board_now = app
        .get_json_as(&format!("/api/v1/boards/{board_id}"), &key)
        .await;
    let titles: Vec<&str> = board_now["columns"][0]["cards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["title"].as_str().unwrap())
        .collect();
    assert!(titles.contains(&"Lia"), "{titles:?}");
    // The simulator's accounts all send a push name; an unnamed one sends "Sim" and the
    // number's last four digits, which is the name WhatsApp would show.
    assert!(titles.contains(&"Sim 9103"), "{titles:?}");
    assert_eq!(
        app.count_sql("SELECT count(*) AS n FROM events WHERE kind = 'card.created'")
            .await,
        2
    );

    // The chat shows its card.
    let chat: Value = app
        .get_json_as(
            &format!(
                "/api/v1/sessions/{session}/chats/{}",
                contacts[0].trim_start_matches('+')
            ),
            &key,
        )
        .await;
    let linked = chat["cards"].as_array().unwrap();
    assert_eq!(linked.len(), 1, "{chat}");
    assert_eq!(linked[0]["title"], "Lia");
    assert!(cards.contains(&linked[0]["id"].as_str().unwrap().to_owned()));

    // Search: a stemmed word of a chat's message finds its card ("jacket" in both chats).
    let hits = app
        .get_json_as(&format!("/api/v1/boards/{board_id}/search?q=jacket"), &key)
        .await;
    let from_messages: Vec<&Value> = hits
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["matched_in"] == "message")
        .collect();
    assert_eq!(
        from_messages
            .iter()
            .map(|h| h["card_id"].as_str().unwrap())
            .collect::<std::collections::HashSet<_>>()
            .len(),
        2,
        "{hits}"
    );
    let hits = app
        .get_json_as(&format!("/api/v1/boards/{board_id}/search?q=ship"), &key)
        .await;
    assert_eq!(hits[0]["card_id"], linked[0]["id"]);
    assert_eq!(hits[0]["matched_in"], "message");
}
