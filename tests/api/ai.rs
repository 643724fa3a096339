//! AI agents through the HTTP API: credentials, agents, one-off calls against a wiremock
//! Gemini and OpenAI that answer as the providers document (errors included), retries,
//! the circuit breaker, usage, tenant isolation and read-only keys. The reply pipeline over
//! WhatsApp is in `sessions/agents.rs`.

use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::{Value, json};
use uuid::Uuid;
use wagate::configuration::Settings;
use wiremock::matchers::{header, method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{ADMIN_KEY, TestApp, assert_error, spawn_app_with};

pub(crate) const GEMINI_KEY: &str = "test-gemini-key-0001";
pub(crate) const MODEL: &str = "gemini-2.0-flash";

/// A `generateContent` answer as Gemini documents it.
pub(crate) fn gemini_answer(text: &str, prompt_tokens: u64, output_tokens: u64) -> Value {
    json!({
        "candidates": [{
            "content": {"role": "model", "parts": [{"text": text}]},
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}]
        }],
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": output_tokens,
            "totalTokenCount": prompt_tokens + output_tokens
        },
        "modelVersion": MODEL
    })
}

/// Gemini's documented error body (`google.rpc.Status`).
pub(crate) fn gemini_error(code: u16, status: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "status": status}})
}

/// The path of `generateContent` for the test model.
pub(crate) fn gemini_path() -> String {
    format!("/v1beta/models/{MODEL}:generateContent")
}

/// Points the platform's Gemini credential at a double, with quick AI timings.
pub(crate) fn with_gemini(s: &mut Settings, uri: &str) {
    s.ai.gemini.base_url = uri.to_owned();
    s.ai.gemini.api_key = Some(SecretString::from(GEMINI_KEY));
    s.ai.poll_interval_ms = 50;
    s.ai.backoff_base_ms = 50;
    s.rate_limit.enabled = false;
}

impl TestApp {
    /// Creates an agent as `key`; returns it.
    pub(crate) async fn create_agent(&self, key: &str, extra: Value) -> Value {
        let mut body = json!({
            "name": "Front desk",
            "provider": "gemini",
            "model": MODEL,
            "system_prompt": "You are the front desk of Acme. Answer briefly.",
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let res = self
            .post("/api/v1/agents")
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "agent creation");
        res.json().await.unwrap()
    }

    pub(crate) async fn generate(&self, key: &str, agent: &str, text: &str) -> reqwest::Response {
        self.post("/api/v1/ai/generate")
            .bearer_auth(key)
            .json(&json!({"agent_id": agent, "text": text}))
            .send()
            .await
            .unwrap()
    }
}

#[actix_web::test]
async fn agents_are_created_validated_changed_duplicated_and_deleted() {
    let gemini = MockServer::start().await;
    let app = spawn_app_with(|s| with_gemini(s, &gemini.uri())).await;
    let (_, key) = app.create_tenant("Acme", "standard").await;

    let defaults = app.get_json_as("/api/v1/agents/defaults", &key).await;
    assert_eq!(defaults["debounce_ms"], 3000);
    assert_eq!(defaults["context_messages"], 20);
    assert_eq!(defaults["platform_providers"], json!(["gemini"]));

    let agent = app
        .create_agent(
            &key,
            json!({"handoff_keywords": [" human "], "fallback_text": "One moment, please."}),
        )
        .await;
    assert_eq!(agent["debounce_ms"], 3000);
    assert_eq!(agent["context_messages"], 20);
    assert_eq!(agent["handoff_keywords"], json!(["human"]));
    assert_eq!(agent["credential_id"], Value::Null);
    let id = agent["id"].as_str().unwrap();

    // Validation names the field, and nothing is stored by /validate.
    for (body, field) in [
        (
            json!({"name": "x", "provider": "claude", "model": "m", "system_prompt": "p"}),
            "provider",
        ),
        (
            json!({"name": "", "provider": "gemini", "model": "m", "system_prompt": "p"}),
            "name",
        ),
        (
            json!({"name": "x", "provider": "gemini", "model": "a b", "system_prompt": "p"}),
            "model",
        ),
        (
            json!({"name": "x", "provider": "gemini", "model": "m", "system_prompt": "p", "temperature": 3.0}),
            "temperature",
        ),
        (
            json!({"name": "x", "provider": "gemini", "model": "m", "system_prompt": "p", "debounce_ms": -1}),
            "debounce_ms",
        ),
        (
            json!({"name": "x", "provider": "gemini", "model": "m", "system_prompt": "p", "context_messages": 0}),
            "context_messages",
        ),
        (
            json!({"name": "x", "provider": "gemini", "model": "m", "system_prompt": "p", "tools": ["launch_missiles"]}),
            "tools[0]",
        ),
        // No platform OpenAI key here, and no credential of the tenant's own.
        (
            json!({"name": "x", "provider": "openai", "model": "gpt-4o-mini", "system_prompt": "p"}),
            "credential_id",
        ),
        (
            json!({"name": "x", "provider": "gemini", "model": "m", "system_prompt": "p", "credential_id": Uuid::new_v4()}),
            "credential_id",
        ),
    ] {
        for route in ["/api/v1/agents/validate", "/api/v1/agents"] {
            let res = app
                .post(route)
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let err = assert_error(res, 400, "validation_failed").await;
            assert_eq!(err["error"]["details"]["field"], field, "{route} {body}");
        }
    }
    let ok = app
        .post("/api/v1/agents/validate")
        .bearer_auth(&key)
        .json(&json!({"name": "Try", "provider": "gemini", "model": MODEL, "system_prompt": "p"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap()["valid"], true);
    let listed = app.get_json_as("/api/v1/agents", &key).await;
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        1,
        "validate stored nothing"
    );

    let res = app
        .patch(&format!("/api/v1/agents/{id}"))
        .bearer_auth(&key)
        .json(&json!({"debounce_ms": 500, "fallback_text": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let changed: Value = res.json().await.unwrap();
    assert_eq!(changed["debounce_ms"], 500);
    assert_eq!(changed["fallback_text"], Value::Null);
    assert_eq!(changed["name"], "Front desk");

    let res = app
        .post(&format!("/api/v1/agents/{id}/duplicate"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let copy: Value = res.json().await.unwrap();
    assert_eq!(copy["name"], "Front desk (copy)");
    assert_eq!(copy["debounce_ms"], 500);
    assert_ne!(copy["id"], agent["id"]);

    let res = app
        .delete(&format!("/api/v1/agents/{id}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_error(
        app.get_as(&format!("/api/v1/agents/{id}"), &key).await,
        404,
        "not_found",
    )
    .await;
    assert_eq!(
        app.get_json_as("/api/v1/agents", &key).await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[actix_web::test]
async fn generate_sends_the_prompt_and_the_model_and_meters_the_tokens() {
    let gemini = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(gemini_path()))
        .and(header("x-goog-api-key", GEMINI_KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(gemini_answer(
            "We open at 9.",
            21,
            4,
        )))
        .expect(1)
        .mount(&gemini)
        .await;
    let app = spawn_app_with(|s| with_gemini(s, &gemini.uri())).await;
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let agent = app
        .create_agent(&key, json!({"temperature": 0.2, "max_output_tokens": 256}))
        .await;
    let id = agent["id"].as_str().unwrap();

    let res = app.generate(&key, id, "When do you open?").await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(
        answer,
        json!({"text": "We open at 9.", "prompt_tokens": 21, "output_tokens": 4})
    );

    let asked = &gemini.received_requests().await.unwrap()[0];
    let body: Value = serde_json::from_slice(&asked.body).unwrap();
    assert_eq!(
        body["systemInstruction"]["parts"][0]["text"],
        "You are the front desk of Acme. Answer briefly."
    );
    assert_eq!(
        body["contents"],
        json!([{"role": "user", "parts": [{"text": "When do you open?"}]}])
    );
    assert_eq!(body["generationConfig"]["maxOutputTokens"], 256);
    assert!((body["generationConfig"]["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
    assert_eq!(body["safetySettings"].as_array().unwrap().len(), 4);

    let usage = app.get_json_as("/api/v1/ai/usage", &key).await;
    assert_eq!(usage["prompt_tokens"], 21);
    assert_eq!(usage["output_tokens"], 4);
    // gemini-2.0-flash at 0.10 / 0.40 USD per million tokens.
    let cost = usage["items"][0]["cost_usd"].as_f64().unwrap();
    assert!(
        (cost - (21.0 * 0.10 + 4.0 * 0.40) / 1e6).abs() < 1e-12,
        "{usage}"
    );
    let limits = app.get_json_as("/api/v1/ai/limits", &key).await;
    assert_eq!(limits["tokens_today"], 25);
    assert_eq!(limits["calls_last_minute"], 1);
    assert_eq!(limits["calls_per_minute"], 30);
}

#[actix_web::test]
async fn an_openai_compatible_server_is_called_with_the_tenants_own_encrypted_key() {
    let openai = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", "Bearer sk-tenant-own-key-1234"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000, "model": "llama-3.1-8b",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from Llama"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
        })))
        .expect(1)
        .mount(&openai)
        .await;
    // A tenant's base_url on loopback needs the egress policy's consent.
    let app = spawn_app_with(|s| {
        s.rate_limit.enabled = false;
        s.egress.allow_private_targets = true;
    })
    .await;
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let res = app
        .post("/api/v1/ai/credentials")
        .bearer_auth(&key)
        .json(&json!({"provider": "openai", "api_key": "sk-tenant-own-key-1234", "base_url": openai.uri()}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let credential: Value = res.json().await.unwrap();
    assert_eq!(credential["key_hint"], "1234");
    assert!(credential.get("api_key").is_none());
    let stored = app
        .count_sql("SELECT count(*) AS n FROM ai_credentials WHERE position('sk-tenant' in encode(api_key_sealed, 'escape')) > 0")
        .await;
    assert_eq!(stored, 0, "the key is sealed at rest");
    let agent = app
        .create_agent(
            &key,
            json!({"provider": "openai", "model": "llama-3.1-8b", "credential_id": credential["id"]}),
        )
        .await;
    let res = app
        .post("/api/v1/ai/generate")
        .bearer_auth(&key)
        .json(&json!({"agent_id": agent["id"], "messages": [
            {"role": "user", "text": "hi"}, {"role": "model", "text": "Hello!"}, {"role": "user", "text": "who are you?"}
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap()["text"],
        "Hello from Llama"
    );
    let body: Value =
        serde_json::from_slice(&openai.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(body["model"], "llama-3.1-8b");
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "You are the front desk of Acme. Answer briefly."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "who are you?"}
        ])
    );

    // Without the policy's consent, a private base_url is refused.
    let strict = spawn_app_with(|s| s.rate_limit.enabled = false).await;
    let (_, key) = strict.create_tenant("Acme", "standard").await;
    let res = strict
        .post("/api/v1/ai/credentials")
        .bearer_auth(&key)
        .json(&json!({"provider": "openai", "api_key": "sk-tenant-own-key-1234", "base_url": openai.uri()}))
        .send()
        .await
        .unwrap();
    let err = assert_error(res, 400, "validation_failed").await;
    assert_eq!(err["error"]["details"]["field"], "base_url");
}

#[actix_web::test]
async fn a_429_is_retried_after_its_retry_info_and_a_400_is_not() {
    let gemini = MockServer::start().await;
    let app = spawn_app_with(|s| with_gemini(s, &gemini.uri())).await;
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let agent = app.create_agent(&key, json!({})).await;
    let id = agent["id"].as_str().unwrap();

    let mut limited = gemini_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted");
    limited["error"]["details"] =
        json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]);
    Mock::given(method("POST"))
        .and(path(gemini_path()))
        .respond_with(ResponseTemplate::new(429).set_body_json(limited))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&gemini)
        .await;
    Mock::given(method("POST"))
        .and(path(gemini_path()))
        .respond_with(ResponseTemplate::new(200).set_body_json(gemini_answer("Sure.", 5, 1)))
        .with_priority(2)
        .mount(&gemini)
        .await;
    let started = Instant::now();
    let res = app.generate(&key, id, "hello").await;
    assert_eq!(res.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "the retry waited the 1 s Gemini asked for ({:?})",
        started.elapsed()
    );
    assert_eq!(gemini.received_requests().await.unwrap().len(), 2);

    // A 400 is the request's fault: never retried, shown to the tenant, not a 500.
    gemini.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(gemini_error(
            400,
            "INVALID_ARGUMENT",
            "Invalid JSON payload",
        )))
        .mount(&gemini)
        .await;
    let err = assert_error(
        app.generate(&key, id, "hello").await,
        502,
        "ai_provider_failed",
    )
    .await;
    assert!(
        err["error"]["message"].as_str().unwrap().contains("400"),
        "{err}"
    );
    assert_eq!(gemini.received_requests().await.unwrap().len(), 1);

    // A blocked prompt is an answer of its own, not a crash.
    gemini.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
            "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 3}
        })))
        .mount(&gemini)
        .await;
    assert_error(
        app.generate(&key, id, "something nasty").await,
        422,
        "ai_blocked",
    )
    .await;
}

#[actix_web::test]
async fn the_circuit_opens_after_repeated_failures_and_a_probe_closes_it() {
    let gemini = MockServer::start().await;
    let app = spawn_app_with(|s| {
        with_gemini(s, &gemini.uri());
        s.ai.max_attempts = 1;
        s.ai.circuit_failures = 2;
        s.ai.circuit_open_secs = 1;
    })
    .await;
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let agent = app.create_agent(&key, json!({})).await;
    let id = agent["id"].as_str().unwrap();
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_json(gemini_error(
            503,
            "UNAVAILABLE",
            "The model is overloaded.",
        )))
        .mount(&gemini)
        .await;
    for _ in 0..2 {
        assert_error(
            app.generate(&key, id, "hi").await,
            502,
            "ai_provider_failed",
        )
        .await;
    }
    // Open: refused without calling the provider.
    let err = assert_error(
        app.generate(&key, id, "hi").await,
        503,
        "ai_provider_failed",
    )
    .await;
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("circuit"),
        "{err}"
    );
    assert_eq!(gemini.received_requests().await.unwrap().len(), 2);
    let limits = app.get_json_as("/api/v1/ai/limits", &key).await;
    assert_eq!(
        limits["circuits"],
        json!([{"credential": "platform:gemini", "state": "open"}])
    );
    assert!(
        app.metric("wagate_ai_circuit_state{credential=\"platform:gemini\"}")
            .await
            == 2.0
    );

    // After the open time, one probe; it succeeds and closes the circuit.
    gemini.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(gemini_answer("Back.", 2, 1)))
        .mount(&gemini)
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let res = app.generate(&key, id, "hi").await;
    assert_eq!(res.status(), 200);
    let limits = app.get_json_as("/api/v1/ai/limits", &key).await;
    assert_eq!(
        limits["circuits"],
        json!([{"credential": "platform:gemini", "state": "closed"}])
    );
    assert!(
        app.metric("wagate_ai_calls_total{outcome=\"circuit_open\",provider=\"gemini\"}")
            .await
            >= 1.0
    );
}

#[actix_web::test]
async fn the_tenants_calls_per_minute_and_tokens_per_day_are_enforced() {
    let gemini = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(gemini_answer("ok", 60, 50)))
        .mount(&gemini)
        .await;
    let app = spawn_app_with(|s| {
        with_gemini(s, &gemini.uri());
        s.ai.calls_per_minute.standard = 2;
        s.ai.tokens_per_day.professional = 100;
    })
    .await;
    let (standard, key) = app.create_tenant("Acme", "standard").await;
    let agent = app.create_agent(&key, json!({})).await;
    let id = agent["id"].as_str().unwrap();
    for _ in 0..2 {
        assert_eq!(app.generate(&key, id, "hi").await.status(), 200);
    }
    let res = app.generate(&key, id, "hi").await;
    assert!(res.headers().get("retry-after").is_some());
    assert_error(res, 429, "rate_limited").await;
    // The admin resets the window.
    let res = app
        .delete(&format!("/api/v1/ai/limits?tenant_id={standard}"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["calls_last_minute"], 0);
    assert_eq!(app.generate(&key, id, "hi").await.status(), 200);
    // A tenant may not reset its own limits.
    assert_error(
        app.delete("/api/v1/ai/limits")
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
        403,
        "forbidden",
    )
    .await;

    // Tokens a day: the call that crosses the budget is answered, the next is refused.
    let (_, pro) = app.create_tenant("Globex", "professional").await;
    let agent = app.create_agent(&pro, json!({})).await;
    let id = agent["id"].as_str().unwrap();
    assert_eq!(app.generate(&pro, id, "hi").await.status(), 200);
    let err = assert_error(app.generate(&pro, id, "hi").await, 403, "quota_exceeded").await;
    assert_eq!(err["error"]["details"]["limit"], 100);
    // Past 80 % of the budget its members are told, once a day; the other tenant, under its
    // own, is not.
    let told: Vec<Value> = app
        .notifications(&pro, "")
        .await
        .into_iter()
        .filter(|n| n["kind"] == "quota.warning")
        .collect();
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0]["data"]["quota"], "ai_tokens_per_day");
    assert_eq!(told[0]["data"]["used"], 110);
    assert_eq!(told[0]["level"], "critical");
    assert!(
        app.notifications(&key, "")
            .await
            .iter()
            .all(|n| n["kind"] != "quota.warning")
    );
}

#[actix_web::test]
async fn another_tenant_gets_404_and_a_read_only_key_403_on_every_ai_route() {
    let gemini = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(".*generateContent$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(gemini_answer("ok", 1, 1)))
        .mount(&gemini)
        .await;
    let app = spawn_app_with(|s| {
        with_gemini(s, &gemini.uri());
        s.egress.allow_private_targets = true;
    })
    .await;
    let (tenant_a, key_a) = app.create_tenant("Acme", "standard").await;
    let (_, key_b) = app.create_tenant("Globex", "standard").await;
    let agent = app.create_agent(&key_a, json!({})).await;
    let agent_id = agent["id"].as_str().unwrap().to_owned();
    let session = app.new_session(&key_a, "front").await;
    let res = app
        .put(&format!("/api/v1/sessions/{session}/agent"))
        .bearer_auth(&key_a)
        .json(&json!({"agent_id": agent_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .post("/api/v1/ai/credentials")
        .bearer_auth(&key_a)
        .json(&json!({"provider": "gemini", "api_key": "AIza-own-key-0000", "base_url": gemini.uri()}))
        .send()
        .await
        .unwrap();
    let credential: Value = res.json().await.unwrap();
    let credential_id = credential["id"].as_str().unwrap().to_owned();

    // B sees none of A's things, and cannot use them.
    for path in [
        format!("/api/v1/agents/{agent_id}"),
        format!("/api/v1/agents/{agent_id}/stats"),
        format!("/api/v1/sessions/{session}/agent"),
    ] {
        assert_error(app.get_as(&path, &key_b).await, 404, "not_found").await;
    }
    assert!(
        app.get_json_as("/api/v1/agents", &key_b).await["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        app.get_json_as("/api/v1/ai/credentials", &key_b).await["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    for (m, path, body) in [
        (
            "PATCH",
            format!("/api/v1/agents/{agent_id}"),
            json!({"name": "mine"}),
        ),
        ("DELETE", format!("/api/v1/agents/{agent_id}"), json!(null)),
        (
            "POST",
            format!("/api/v1/agents/{agent_id}/duplicate"),
            json!(null),
        ),
        (
            "POST",
            "/api/v1/ai/generate".to_owned(),
            json!({"agent_id": agent_id, "text": "hi"}),
        ),
        (
            "PUT",
            format!("/api/v1/sessions/{session}/agent"),
            json!({"agent_id": agent_id}),
        ),
        (
            "DELETE",
            format!("/api/v1/sessions/{session}/agent"),
            json!(null),
        ),
        (
            "POST",
            format!("/api/v1/sessions/{session}/chats/+4915112345678/suggest"),
            json!(null),
        ),
        (
            "DELETE",
            format!("/api/v1/ai/credentials/{credential_id}"),
            json!(null),
        ),
    ] {
        let res = app.call(m, &path, &key_b, &body).await;
        assert_error(res, 404, "not_found").await;
    }
    // B's own session cannot take A's agent or credential.
    let session_b = app.new_session(&key_b, "b").await;
    let res = app
        .call(
            "PUT",
            &format!("/api/v1/sessions/{session_b}/agent"),
            &key_b,
            &json!({"agent_id": agent_id}),
        )
        .await;
    assert_eq!(
        assert_error(res, 400, "validation_failed").await["error"]["details"]["field"],
        "agent_id"
    );
    let res = app
        .call("POST", "/api/v1/agents", &key_b, &json!({"name": "x", "provider": "gemini", "model": MODEL, "system_prompt": "p", "credential_id": credential_id}))
        .await;
    assert_eq!(
        assert_error(res, 400, "validation_failed").await["error"]["details"]["field"],
        "credential_id"
    );

    // A read-only key of A reads, and changes nothing.
    let viewer = app.read_only_key(tenant_a, &key_a).await;
    assert_eq!(
        app.get_as(&format!("/api/v1/agents/{agent_id}"), &viewer)
            .await
            .status(),
        200
    );
    assert_eq!(app.get_as("/api/v1/ai/usage", &viewer).await.status(), 200);
    assert_eq!(app.get_as("/api/v1/ai/limits", &viewer).await.status(), 200);
    for (m, path, body) in [
        (
            "POST",
            "/api/v1/agents".to_owned(),
            json!({"name": "x", "provider": "gemini", "model": MODEL, "system_prompt": "p"}),
        ),
        (
            "POST",
            "/api/v1/agents/validate".to_owned(),
            json!({"name": "x", "provider": "gemini", "model": MODEL, "system_prompt": "p"}),
        ),
        (
            "PATCH",
            format!("/api/v1/agents/{agent_id}"),
            json!({"name": "mine"}),
        ),
        ("DELETE", format!("/api/v1/agents/{agent_id}"), json!(null)),
        (
            "POST",
            format!("/api/v1/agents/{agent_id}/duplicate"),
            json!(null),
        ),
        (
            "POST",
            "/api/v1/ai/generate".to_owned(),
            json!({"agent_id": agent_id, "text": "hi"}),
        ),
        (
            "PUT",
            format!("/api/v1/sessions/{session}/agent"),
            json!({"agent_id": agent_id}),
        ),
        (
            "DELETE",
            format!("/api/v1/sessions/{session}/agent"),
            json!(null),
        ),
        (
            "PATCH",
            format!("/api/v1/sessions/{session}/chats/+4915112345678"),
            json!({"agent_id": agent_id}),
        ),
        (
            "POST",
            format!("/api/v1/sessions/{session}/chats/+4915112345678/suggest"),
            json!(null),
        ),
        (
            "POST",
            "/api/v1/ai/credentials".to_owned(),
            json!({"provider": "gemini", "api_key": "AIza-other-key-1"}),
        ),
        (
            "DELETE",
            format!("/api/v1/ai/credentials/{credential_id}"),
            json!(null),
        ),
        ("DELETE", "/api/v1/ai/limits".to_owned(), json!(null)),
    ] {
        let res = app.call(m, &path, &viewer, &body).await;
        assert_error(res, 403, "forbidden").await;
    }
    let after = app
        .get_json_as(&format!("/api/v1/agents/{agent_id}"), &key_a)
        .await;
    assert_eq!(after["name"], "Front desk");
    assert_eq!(
        app.get_json_as("/api/v1/agents", &key_a).await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        app.get_json_as("/api/v1/ai/credentials", &key_a).await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        app.get_json_as(&format!("/api/v1/sessions/{session}/agent"), &key_a)
            .await["agent"]["id"],
        agent_id.as_str()
    );
    assert!(
        gemini.received_requests().await.unwrap().is_empty(),
        "no caller but A's writer reached the model"
    );
}

impl TestApp {
    /// Any method, JSON body unless `null`.
    pub(crate) async fn call(
        &self,
        m: &str,
        path: &str,
        key: &str,
        body: &Value,
    ) -> reqwest::Response {
        let req = self
            .client
            .request(
                reqwest::Method::from_bytes(m.as_bytes()).unwrap(),
                self.url(path),
            )
            .bearer_auth(key);
        let req = if body.is_null() { req } else { req.json(body) };
        req.send().await.unwrap()
    }

    /// `SELECT count(*) AS n …` on the app's database.
    pub(crate) async fn count_sql(&self, sql: &str) -> i64 {
        use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = AsyncPgConnection::establish(&self.db_url).await.unwrap();
        diesel::sql_query(sql)
            .get_result::<N>(&mut conn)
            .await
            .unwrap()
            .n
    }
}

#[actix_web::test]
async fn the_prompt_generator_asks_its_questions_and_the_model_writes_a_versioned_prompt() {
    let gemini = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(gemini_path()))
        .respond_with(ResponseTemplate::new(200).set_body_json(gemini_answer(
            "You are the assistant of Acme Bikes in Berlin. Answer briefly.",
            300,
            40,
        )))
        .mount(&gemini)
        .await;
    let app = spawn_app_with(|s| with_gemini(s, &gemini.uri())).await;
    let (tenant, key) = app.create_tenant("Acme", "standard").await;
    let (_, other) = app.create_tenant("Globex", "standard").await;
    let viewer = app.read_only_key(tenant, &key).await;

    let res = app
        .call(
            "POST",
            "/api/v1/prompt-generator/sessions",
            &key,
            &json!({"goal": "answer bike questions"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let started: Value = res.json().await.unwrap();
    let id = started["id"].as_str().unwrap().to_owned();
    assert_eq!(started["question"]["number"], 1);
    assert_eq!(started["question"]["total"], 7);
    assert_eq!(started["question"]["key"], "business");
    let base = format!("/api/v1/prompt-generator/sessions/{id}");
    assert_error(
        app.call("POST", &format!("{base}/generate"), &key, &json!({}))
            .await,
        409,
        "prompt_session_incomplete",
    )
    .await;
    let answers = [
        "Acme Bikes, a bike shop in Berlin",
        "Cyclists asking about repairs and prices",
        "Friendly, short, German or English",
        "Mon-Fri 9-18; outside, say we answer tomorrow",
        "A repair check costs 20 EUR",
        "Never promise same-day repairs",
        "When someone complains",
    ];
    for (i, a) in answers.iter().enumerate() {
        let q = app
            .get_json_as(&format!("{base}/current-question"), &key)
            .await;
        assert_eq!(q["question"]["number"], i + 1);
        let res = app
            .call(
                "POST",
                &format!("{base}/answer"),
                &key,
                &json!({"answer": a}),
            )
            .await;
        assert_eq!(res.status(), 200);
        let next: Value = res.json().await.unwrap();
        assert_eq!(next["done"], i + 1 == answers.len());
    }
    assert_eq!(
        app.get_json_as(&format!("{base}/current-question"), &key)
            .await["done"],
        true
    );
    assert_error(
        app.call(
            "POST",
            &format!("{base}/answer"),
            &key,
            &json!({"answer": "more"}),
        )
        .await,
        409,
        "prompt_session_complete",
    )
    .await;
    let session = app.get_json_as(&base, &key).await;
    assert_eq!(
        session["answers"][4]["answer"],
        "A repair check costs 20 EUR"
    );

    // Another tenant sees nothing of it; a read-only key changes nothing.
    assert_error(app.get_as(&base, &other).await, 404, "not_found").await;
    assert_error(
        app.call("POST", &format!("{base}/generate"), &other, &json!({}))
            .await,
        404,
        "not_found",
    )
    .await;
    for (m, p, body) in [
        (
            "POST",
            "/api/v1/prompt-generator/sessions".to_owned(),
            json!({}),
        ),
        ("POST", format!("{base}/answer"), json!({"answer": "x"})),
        ("POST", format!("{base}/generate"), json!({})),
        ("DELETE", base.clone(), json!(null)),
    ] {
        assert_error(app.call(m, &p, &viewer, &body).await, 403, "forbidden").await;
    }
    assert!(gemini.received_requests().await.unwrap().is_empty());

    let res = app
        .call("POST", &format!("{base}/generate"), &key, &json!({}))
        .await;
    assert_eq!(res.status(), 201);
    let first: Value = res.json().await.unwrap();
    assert_eq!(first["version"], 1);
    assert_eq!(
        first["text"],
        "You are the assistant of Acme Bikes in Berlin. Answer briefly."
    );
    let asked: Value =
        serde_json::from_slice(&gemini.received_requests().await.unwrap()[0].body).unwrap();
    let brief = asked["contents"][0]["parts"][0]["text"].as_str().unwrap();
    assert!(brief.contains("Goal: answer bike questions"), "{brief}");
    assert!(
        brief.contains("A: Never promise same-day repairs"),
        "{brief}"
    );
    assert!(
        asked["systemInstruction"]["parts"][0]["text"]
            .as_str()
            .unwrap()
            .contains("system prompts"),
        "{asked}"
    );
    let res = app
        .call("POST", &format!("{base}/generate"), &key, &json!({}))
        .await;
    assert_eq!(res.json::<Value>().await.unwrap()["version"], 2);
    let listed = app.get_json_as("/api/v1/prompts", &key).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    assert!(
        app.get_json_as("/api/v1/prompts", &other).await["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let prompt_id = first["id"].as_str().unwrap();
    assert_error(
        app.get_as(&format!("/api/v1/prompts/{prompt_id}"), &other)
            .await,
        404,
        "not_found",
    )
    .await;

    // An agent takes it as its prompt; another tenant cannot.
    let res = app
        .call(
            "POST",
            "/api/v1/agents",
            &key,
            &json!({"name": "Desk", "provider": "gemini", "model": MODEL, "prompt_id": prompt_id}),
        )
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(
        res.json::<Value>().await.unwrap()["system_prompt"],
        "You are the assistant of Acme Bikes in Berlin. Answer briefly."
    );
    let res = app
        .call(
            "POST",
            "/api/v1/agents",
            &other,
            &json!({"name": "Desk", "provider": "gemini", "model": MODEL, "prompt_id": prompt_id}),
        )
        .await;
    assert_eq!(
        assert_error(res, 400, "validation_failed").await["error"]["details"]["field"],
        "prompt_id"
    );
    let usage = app.get_json_as("/api/v1/ai/usage", &key).await;
    assert_eq!(usage["prompt_tokens"], 600, "both writings were metered");
}

#[actix_web::test]
async fn the_literal_agent_routes_refuse_other_methods_with_405() {
    let app = spawn_app_with(|s| s.rate_limit.enabled = false).await;
    let (_, key) = app.create_tenant("Acme", "standard").await;
    for (m, path) in [
        ("PATCH", "/api/v1/agents/defaults"),
        ("DELETE", "/api/v1/agents/defaults"),
        ("PATCH", "/api/v1/agents/validate"),
        ("GET", "/api/v1/agents/validate"),
        ("DELETE", "/api/v1/agents/validate"),
    ] {
        let res = app.call(m, path, &key, &json!({"name": "x"})).await;
        let allow = res.headers()["allow"].to_str().unwrap().to_owned();
        assert!(allow == "GET, HEAD" || allow == "POST", "{path}: {allow}");
        assert_error(res, 405, "method_not_allowed").await;
    }
    // An id that is no id is a 404, like a missing one.
    let res = app
        .call("PATCH", "/api/v1/agents/not-an-id", &key, &json!({}))
        .await;
    assert_error(res, 404, "not_found").await;
}
