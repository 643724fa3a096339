use std::time::Duration;

use crate::helpers::spawn_app;

#[actix_web::test]
async fn stopping_finishes_requests_in_flight_and_refuses_new_ones() {
    let mut app = spawn_app().await;
    let client = app.client.clone();
    let slow_url = app.url("/__test/slow?ms=1500");
    let in_flight = actix_web::rt::spawn(async move { client.get(slow_url).send().await });
    // Let the slow request reach its handler.
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    let health_url = app.url("/health");
    app.stop().await;
    let res = in_flight
        .await
        .expect("task")
        .expect("the in-flight request completed");
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["slept_ms"], 1500);
    let after = reqwest::Client::new()
        .get(health_url)
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(after.is_err(), "the stopped server accepts nothing");
}
