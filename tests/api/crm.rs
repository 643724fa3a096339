//! The CRM board: columns, cards, moves (also concurrent ones), activity, stats, search.

use std::collections::{HashMap, HashSet};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, spawn_app, spawn_app_with};

impl TestApp {
    pub(crate) async fn create_board(&self, key: &str, body: Value) -> Value {
        let res = self.post_json(key, "/api/v1/boards", body).await;
        assert_eq!(res.status(), 201, "board creation");
        res.json().await.unwrap()
    }

    pub(crate) async fn create_card(&self, key: &str, board: &str, body: Value) -> Value {
        let res = self
            .post_json(key, &format!("/api/v1/boards/{board}/cards"), body)
            .await;
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        assert_eq!(status, 201, "card creation: {body}");
        body
    }

    /// `POST …/move`; returns (status, body).
    pub(crate) async fn move_card(
        &self,
        key: &str,
        board: &str,
        card: &str,
        column: &str,
        position: i64,
    ) -> (u16, Value) {
        let res = self
            .post_json(
                key,
                &format!("/api/v1/boards/{board}/cards/{card}/move"),
                json!({"column_id": column, "position": position}),
            )
            .await;
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// The board's columns as (column id, [card ids in order]).
    pub(crate) async fn board_layout(&self, key: &str, board: &str) -> Vec<(String, Vec<String>)> {
        let b = self
            .get_json_as(&format!("/api/v1/boards/{board}"), key)
            .await;
        b["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().to_owned(),
                    c["cards"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|card| card["id"].as_str().unwrap().to_owned())
                        .collect(),
                )
            })
            .collect()
    }
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

#[actix_web::test]
async fn a_boards_columns_and_cards_live_move_and_keep_their_history_and_figures() {
    let app = spawn_app().await;
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let board = app
        .create_board(
            &key,
            json!({"name": "Sales", "columns": ["New", "Talking", "Won"]}),
        )
        .await;
    let board_id = id(&board);
    let cols: Vec<String> = board["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(id)
        .collect();
    assert_eq!(board["columns"][1]["name"], "Talking");
    let (new, talking, won) = (cols[0].clone(), cols[1].clone(), cols[2].clone());

    // A column with a WIP limit, and the columns reordered.
    let res = app
        .post_json(
            &key,
            &format!("/api/v1/boards/{board_id}/columns"),
            json!({"name": "Lost", "wip_limit": 1}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let lost = id(&res.json::<Value>().await.unwrap());
    let res = app
        .post_json(
            &key,
            &format!("/api/v1/boards/{board_id}/columns/reorder"),
            json!({"column_ids": [new, talking, lost, won]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let names: Vec<String> = res.json::<Value>().await.unwrap()["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["New", "Talking", "Lost", "Won"]);
    let res = app
        .post_json(
            &key,
            &format!("/api/v1/boards/{board_id}/columns/reorder"),
            json!({"column_ids": [new, talking]}),
        )
        .await;
    assert_error(res, 400, "validation_failed").await;

    let mut cards = Vec::new();
    for (title, value) in [
        ("Ana's order", 100.0),
        ("Bob's quote", 250.5),
        ("Carl", 0.0),
    ] {
        cards.push(id(&app
            .create_card(
                &key,
                &board_id,
                json!({"column_id": new, "title": title, "value": value, "labels": ["vip"]}),
            )
            .await));
    }
    assert_eq!(app.board_layout(&key, &board_id).await[0].1, cards);

    // A card that sat in New for an hour moves to the top of Talking.
    app.execute_sql(&format!(
        "UPDATE cards SET column_entered_at = now() - interval '1 hour' WHERE id = '{}'",
        cards[1]
    ))
    .await;
    let (status, moved) = app.move_card(&key, &board_id, &cards[1], &talking, 0).await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["column_id"], talking.as_str());
    assert_eq!(moved["index"], 0);
    // Reordering inside a column: last to first.
    let (status, _) = app.move_card(&key, &board_id, &cards[2], &new, 0).await;
    assert_eq!(status, 200);
    let layout = app.board_layout(&key, &board_id).await;
    assert_eq!(layout[0].1, [cards[2].clone(), cards[0].clone()]);
    assert_eq!(layout[1].1, [cards[1].clone()]);

    // The WIP limit holds; a column with cards cannot be deleted.
    assert_eq!(
        app.move_card(&key, &board_id, &cards[0], &lost, 0).await.0,
        200
    );
    let (status, body) = app.move_card(&key, &board_id, &cards[2], &lost, 0).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("wip_limit_reached"))
    );
    let res = app
        .delete(&format!("/api/v1/boards/{board_id}/columns/{lost}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_error(res, 409, "column_not_empty").await;
    let (status, _) = app.move_card(&key, &board_id, &cards[0], &won, 99).await;
    assert_eq!(status, 200);
    let res = app
        .delete(&format!("/api/v1/boards/{board_id}/columns/{lost}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);

    // Reordering a column needs its cards as they are.
    let res = app
        .post_json(
            &key,
            &format!("/api/v1/boards/{board_id}/columns/{new}/cards/reorder"),
            json!({"card_ids": [cards[0]]}),
        )
        .await;
    assert_error(res, 409, "order_conflict").await;

    // Comments.
    let res = app
        .post_json(
            &key,
            &format!("/api/v1/boards/{board_id}/cards/{}/comments", cards[1]),
            json!({"text": "Called them, waiting for the signed quote"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let comment = id(&res.json::<Value>().await.unwrap());
    let res = app
        .patch(&format!(
            "/api/v1/boards/{board_id}/cards/{}/comments/{comment}",
            cards[1]
        ))
        .bearer_auth(&key)
        .json(&json!({"text": "Signed quote received"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let comments = app
        .get_json_as(
            &format!("/api/v1/boards/{board_id}/cards/{}/comments", cards[1]),
            &key,
        )
        .await;
    assert_eq!(comments[0]["text"], "Signed quote received");

    // History: created, moved (with the hour in New), commented.
    let activity = app
        .get_json_as(
            &format!("/api/v1/boards/{board_id}/cards/{}/activity", cards[1]),
            &key,
        )
        .await;
    let kinds: Vec<&str> = activity["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["commented", "moved", "created"]);
    let moved = &activity["items"][1];
    assert_eq!(moved["from_column_id"], new.as_str());
    assert_eq!(moved["to_column_id"], talking.as_str());
    assert!(
        moved["seconds_in_column"].as_i64().unwrap() >= 3600,
        "{moved}"
    );
    assert_eq!(moved["actor_kind"], "key");
    let board_activity = app
        .get_json_as(&format!("/api/v1/boards/{board_id}/activity?limit=2"), &key)
        .await;
    assert_eq!(board_activity["items"].as_array().unwrap().len(), 2);
    assert!(board_activity["next_cursor"].is_string());

    // Figures.
    let stats = app
        .get_json_as(&format!("/api/v1/boards/{board_id}/stats"), &key)
        .await;
    assert_eq!(stats["cards"], 3);
    assert_eq!(stats["value"], 350.5);
    let new_stats = stats["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["column_id"] == new.as_str())
        .unwrap();
    assert_eq!(new_stats["cards"], 1);
    assert!(
        new_stats["avg_secs_in_column"].as_f64().unwrap() >= 1800.0,
        "{new_stats}"
    );
    let col = app
        .get_json_as(
            &format!("/api/v1/boards/{board_id}/columns/{talking}/stats"),
            &key,
        )
        .await;
    assert_eq!(
        (col["cards"].as_i64(), col["value"].as_f64()),
        (Some(1), Some(250.5))
    );

    // Events: every card created and moved is in the log.
    let created = app
        .count_sql("SELECT count(*) AS n FROM events WHERE kind = 'card.created'")
        .await;
    let moves = app
        .count_sql("SELECT count(*) AS n FROM events WHERE kind = 'card.moved'")
        .await;
    assert_eq!((created, moves), (3, 4));

    // Bad input names its field.
    let res = app
        .post_json(
            &key,
            &format!("/api/v1/boards/{board_id}/cards"),
            json!({"column_id": new, "title": ""}),
        )
        .await;
    let body = assert_error(res, 400, "validation_failed").await;
    assert_eq!(body["error"]["details"]["field"], "title");
    let (status, body) = app.move_card(&key, &board_id, &cards[0], &new, -1).await;
    assert_eq!(
        (status, body["error"]["details"]["field"].as_str()),
        (400, Some("position"))
    );

    // Search: a stemmed word in a title and in a comment.
    let hits = app
        .get_json_as(&format!("/api/v1/boards/{board_id}/search?q=quotes"), &key)
        .await;
    let found: HashSet<(String, String)> = hits
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["card_id"].as_str().unwrap().to_owned(),
                h["matched_in"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(found.contains(&(cards[1].clone(), "card".into())), "{hits}");
    assert!(
        found.contains(&(cards[1].clone(), "comment".into())),
        "{hits}"
    );
    let hits = app
        .get_json_as(
            &format!("/api/v1/boards/{board_id}/search?q=ordering"),
            &key,
        )
        .await;
    assert_eq!(hits[0]["card_id"], cards[0].as_str());
    assert!(hits[0]["snippet"].as_str().unwrap().contains("<b>"));
}

#[actix_web::test]
async fn concurrent_moves_from_two_clients_keep_every_card_once_and_lose_no_move() {
    let app = spawn_app_with(|s| s.rate_limit.enabled = false).await;
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let board = app
        .create_board(&key, json!({"name": "Race", "columns": ["A", "B", "C"]}))
        .await;
    let board_id = id(&board);
    let cols: Vec<String> = board["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(id)
        .collect();
    let mut cards = Vec::new();
    for i in 0..12 {
        cards.push(id(&app
            .create_card(
                &key,
                &board_id,
                json!({"column_id": cols[0], "title": format!("card {i}")}),
            )
            .await));
    }
    // Two clients, each moving cards to the top (position 0) and other places, at once: many
    // moves land on the same neighbours, so the gaps run out and columns are renumbered.
    let client = |seed: usize| {
        let (app, key, board_id, cols, cards) = (
            &app,
            key.clone(),
            board_id.clone(),
            cols.clone(),
            cards.clone(),
        );
        async move {
            let mut ok = 0;
            for i in 0..40 {
                let card = &cards[(i * 7 + seed * 5) % cards.len()];
                let column = &cols[(i + seed) % cols.len()];
                let position = if i % 3 == 0 {
                    0
                } else {
                    ((i * seed) % 5) as i64
                };
                let (status, body) = app.move_card(&key, &board_id, card, column, position).await;
                assert_eq!(status, 200, "{body}");
                ok += 1;
            }
            ok
        }
    };
    let (a, b) = tokio::join!(client(1), client(2));
    assert_eq!(a + b, 80);

    // Every card exactly once.
    let layout = app.board_layout(&key, &board_id).await;
    let placed: Vec<&String> = layout.iter().flat_map(|(_, c)| c).collect();
    assert_eq!(placed.len(), cards.len());
    assert_eq!(placed.iter().collect::<HashSet<_>>().len(), cards.len());
    // No two cards of a column share a position: the order is one order.
    assert_eq!(
        app.count_sql(
            "SELECT count(*) AS n FROM (SELECT column_id, position FROM cards \
             GROUP BY 1, 2 HAVING count(*) > 1) d"
        )
        .await,
        0
    );
    // Every move is recorded, and each card is where its last move put it.
    assert_eq!(
        app.count_sql("SELECT count(*) AS n FROM card_activity WHERE kind = 'moved'")
            .await,
        80
    );
    let activity = {
        let mut all = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = app
                .get_json_as(
                    &format!("/api/v1/boards/{board_id}/activity?limit=500{cursor}"),
                    &key,
                )
                .await;
            all.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => break all,
            }
        }
    };
    let mut last_move: HashMap<String, String> = HashMap::new();
    for a in activity.iter().rev().filter(|a| a["kind"] == "moved") {
        last_move.insert(
            a["card_id"].as_str().unwrap().to_owned(),
            a["to_column_id"].as_str().unwrap().to_owned(),
        );
    }
    for (column, ids) in &layout {
        for card in ids {
            if let Some(to) = last_move.get(card) {
                assert_eq!(to, column, "card {card} is not where its last move put it");
            }
        }
    }
}

#[actix_web::test]
async fn another_tenant_gets_404_and_a_read_only_key_403_on_every_crm_route() {
    let app = spawn_app().await;
    let (tenant_a, key_a) = app.create_tenant("Acme", "standard").await;
    let (_, key_b) = app.create_tenant("Globex", "standard").await;
    let viewer = app.read_only_key(tenant_a, &key_a).await;
    let board = app.create_board(&key_a, json!({"name": "Sales"})).await;
    let b = id(&board);
    let col = id(&board["columns"][0]);
    let card = id(&app
        .create_card(&key_a, &b, json!({"column_id": col, "title": "Deal"}))
        .await);
    let res = app
        .post_json(
            &key_a,
            &format!("/api/v1/boards/{b}/cards/{card}/comments"),
            json!({"text": "hello"}),
        )
        .await;
    let comment = id(&res.json::<Value>().await.unwrap());

    for path in [
        format!("/api/v1/boards/{b}"),
        format!("/api/v1/boards/{b}/search?q=deal"),
        format!("/api/v1/boards/{b}/stats"),
        format!("/api/v1/boards/{b}/activity"),
        format!("/api/v1/boards/{b}/columns/{col}/stats"),
        format!("/api/v1/boards/{b}/cards/{card}"),
        format!("/api/v1/boards/{b}/cards/{card}/activity"),
        format!("/api/v1/boards/{b}/cards/{card}/comments"),
    ] {
        assert_error(app.get_as(&path, &key_b).await, 404, "not_found").await;
        assert_eq!(app.get_as(&path, &viewer).await.status(), 200, "{path}");
    }
    assert_eq!(
        app.get_json_as("/api/v1/boards", &key_b).await["items"],
        json!([])
    );
    let mutations = [
        (
            Method::PATCH,
            format!("/api/v1/boards/{b}"),
            json!({"name": "x"}),
        ),
        (
            Method::POST,
            format!("/api/v1/boards/{b}/columns"),
            json!({"name": "x"}),
        ),
        (
            Method::POST,
            format!("/api/v1/boards/{b}/columns/reorder"),
            json!({"column_ids": [col]}),
        ),
        (
            Method::PATCH,
            format!("/api/v1/boards/{b}/columns/{col}"),
            json!({"name": "x"}),
        ),
        (
            Method::POST,
            format!("/api/v1/boards/{b}/columns/{col}/cards/reorder"),
            json!({"card_ids": [card]}),
        ),
        (
            Method::POST,
            format!("/api/v1/boards/{b}/cards"),
            json!({"column_id": col, "title": "x"}),
        ),
        (
            Method::PATCH,
            format!("/api/v1/boards/{b}/cards/{card}"),
            json!({"title": "x"}),
        ),
        (
            Method::POST,
            format!("/api/v1/boards/{b}/cards/{card}/move"),
            json!({"column_id": col, "position": 0}),
        ),
        (
            Method::POST,
            format!("/api/v1/boards/{b}/cards/{card}/comments"),
            json!({"text": "x"}),
        ),
        (
            Method::PATCH,
            format!("/api/v1/boards/{b}/cards/{card}/comments/{comment}"),
            json!({"text": "x"}),
        ),
        (
            Method::DELETE,
            format!("/api/v1/boards/{b}/cards/{card}/comments/{comment}"),
            Value::Null,
        ),
        (
            Method::DELETE,
            format!("/api/v1/boards/{b}/cards/{card}"),
            Value::Null,
        ),
        (
            Method::DELETE,
            format!("/api/v1/boards/{b}/columns/{col}"),
            Value::Null,
        ),
        (Method::DELETE, format!("/api/v1/boards/{b}"), Value::Null),
    ];
    for (method, path, body) in &mutations {
        for (credential, status, code) in [(&key_b, 404, "not_found"), (&viewer, 403, "forbidden")]
        {
            let req = app
                .client
                .request(method.clone(), app.url(path))
                .bearer_auth(credential);
            let req = if body.is_null() { req } else { req.json(body) };
            assert_error(req.send().await.unwrap(), status, code).await;
        }
    }
    // Nothing changed.
    let still = app
        .get_json_as(&format!("/api/v1/boards/{b}"), &key_a)
        .await;
    assert_eq!(still["name"], "Sales");
    assert_eq!(still["columns"][0]["cards"][0]["title"], "Deal");
    assert_eq!(
        app.get_json_as(&format!("/api/v1/boards/{b}/cards/{card}/comments"), &key_a)
            .await[0]["text"],
        "hello"
    );
}
