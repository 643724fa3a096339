//! Quick replies: CRUD, search, toggle, duplicate, stats, and what a send with one refuses.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app};

#[actix_web::test]
async fn quick_replies_are_found_copied_toggled_and_checked() {
    let app = spawn_app().await;
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let res = app
        .post_json(
            &key,
            "/api/v1/quick-replies",
            json!({"shortcut": "/Price", "title": "Price list", "text": "Hi {{ name }}, the price is {{ price }} for {{ phone }}"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let price: Value = res.json().await.unwrap();
    assert_eq!(price["shortcut"], "/price");
    assert_eq!(price["variables"], json!(["name", "price"]));
    let id = price["id"].as_str().unwrap().to_owned();
    let res = app
        .post_json(
            &key,
            "/api/v1/quick-replies",
            json!({"shortcut": "/hours", "title": "Opening hours", "text": "We open at 9"}),
        )
        .await;
    assert_eq!(res.status(), 201);

    // Bad input names its field; a taken shortcut is a 409.
    for (body, field) in [
        (
            json!({"shortcut": "price", "title": "t", "text": "x"}),
            "shortcut",
        ),
        (json!({"shortcut": "/x", "title": "", "text": "x"}), "title"),
        (
            json!({"shortcut": "/x", "title": "t", "text": "{{ broken"}),
            "text",
        ),
        (
            json!({"shortcut": "/x", "title": "t", "text": "x", "media_id": uuid::Uuid::new_v4()}),
            "media_id",
        ),
    ] {
        let res = app.post_json(&key, "/api/v1/quick-replies", body).await;
        let err = assert_error(res, 400, "validation_failed").await;
        assert_eq!(err["error"]["details"]["field"], field);
    }
    let res = app
        .post_json(
            &key,
            "/api/v1/quick-replies",
            json!({"shortcut": "/price", "title": "t", "text": "x"}),
        )
        .await;
    assert_error(res, 409, "shortcut_taken").await;

    // Search, duplicate (disabled, a free shortcut), toggle, stats.
    let found = app
        .get_json_as("/api/v1/quick-replies?q=OPENING", &key)
        .await;
    assert_eq!(found["items"].as_array().unwrap().len(), 1);
    assert_eq!(found["items"][0]["shortcut"], "/hours");
    let none = app.get_json_as("/api/v1/quick-replies?q=%25", &key).await;
    assert_eq!(none["items"], json!([]), "% is a character, not a wildcard");
    let res = app
        .post(&format!("/api/v1/quick-replies/{id}/duplicate"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let copy: Value = res.json().await.unwrap();
    assert_eq!(
        (copy["shortcut"].as_str(), copy["enabled"].as_bool()),
        (Some("/price-copy"), Some(false))
    );
    let res = app
        .post(&format!("/api/v1/quick-replies/{id}/duplicate"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.json::<Value>().await.unwrap()["shortcut"],
        "/price-copy2"
    );
    let res = app
        .patch(&format!("/api/v1/quick-replies/{id}/toggle"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["enabled"], false);
    let stats = app.get_json_as("/api/v1/quick-replies/stats", &key).await;
    assert_eq!(
        (stats["quick_replies"].as_i64(), stats["enabled"].as_i64()),
        (Some(4), Some(1))
    );
    assert_eq!(
        app.get_json_as("/api/v1/quick-replies?enabled=true", &key)
            .await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A send with one checks before anything is stored: a disabled or missing reply, a
    // quick_reply field on another type.
    let session = app.new_session(&key, "main").await;
    let res = app
        .post_json(
            &key,
            &format!("/api/v1/sessions/{session}/messages"),
            json!({"to": "+4915550001111", "type": "quick_reply", "shortcut": "/price", "variables": {"name": "Ana"}}),
        )
        .await;
    let err = assert_error(res, 400, "validation_failed").await;
    assert_eq!(err["error"]["details"]["field"], "shortcut");
    let res = app
        .post_json(
            &key,
            &format!("/api/v1/sessions/{session}/messages"),
            json!({"to": "+4915550001111", "type": "quick_reply", "shortcut": "/nothing"}),
        )
        .await;
    assert_error(res, 404, "not_found").await;
    let res = app
        .post_json(
            &key,
            &format!("/api/v1/sessions/{session}/messages"),
            json!({"to": "+4915550001111", "text": "hi", "shortcut": "/hours"}),
        )
        .await;
    let err = assert_error(res, 400, "validation_failed").await;
    assert_eq!(err["error"]["details"]["field"], "shortcut");
}

#[actix_web::test]
async fn another_tenant_gets_404_and_a_read_only_key_403_on_every_quick_reply_route() {
    let app = spawn_app().await;
    let (tenant_a, key_a) = app.create_tenant("Acme", "standard").await;
    let (_, key_b) = app.create_tenant("Globex", "standard").await;
    let viewer = app.read_only_key(tenant_a, &key_a).await;
    let res = app
        .post_json(
            &key_a,
            "/api/v1/quick-replies",
            json!({"shortcut": "/hi", "title": "Hi", "text": "Hello"}),
        )
        .await;
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/quick-replies/{id}");
    assert_error(app.get_as(&path, &key_b).await, 404, "not_found").await;
    assert_eq!(app.get_as(&path, &viewer).await.status(), 200);
    for list in ["/api/v1/quick-replies", "/api/v1/quick-replies/popular"] {
        let body = app.get_json_as(list, &key_b).await;
        let items = body.get("items").unwrap_or(&body);
        assert_eq!(items, &json!([]), "{list}");
    }
    assert_eq!(
        app.get_json_as("/api/v1/quick-replies/stats", &key_b).await["quick_replies"],
        0
    );
    for (method, p, body) in [
        (Method::PATCH, path.clone(), json!({"title": "x"})),
        (Method::PATCH, format!("{path}/toggle"), Value::Null),
        (Method::POST, format!("{path}/duplicate"), Value::Null),
        (Method::DELETE, path.clone(), Value::Null),
    ] {
        for (credential, status, code) in [(&key_b, 404, "not_found"), (&viewer, 403, "forbidden")]
        {
            let req = app
                .client
                .request(method.clone(), app.url(&p))
                .bearer_auth(credential);
            let req = if body.is_null() { req } else { req.json(&body) };
            assert_error(req.send().await.unwrap(), status, code).await;
        }
    }
    // Another tenant's session cannot send it by shortcut either.
    let session_b = app.new_session(&key_b, "b").await;
    let res = app
        .post_json(
            &key_b,
            &format!("/api/v1/sessions/{session_b}/messages"),
            json!({"to": "+4915550001111", "type": "quick_reply", "quick_reply_id": id}),
        )
        .await;
    assert_error(res, 404, "not_found").await;
    assert_eq!(app.get_json_as(&path, &key_a).await["title"], "Hi");
}
