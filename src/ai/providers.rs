//! The model providers on the wire: Gemini's `generateContent` and OpenAI's chat completions
//! (which self-hosted servers speak too), with their documented errors read into what the
//! AiActor's retry logic needs: retry (429/500/503/504, after `Retry-After` or Gemini's
//! `RetryInfo`), never retry (400/401/403/404, OpenAI's `insufficient_quota`), or blocked.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use wagate_actors::ai::ports::{
    ModelAnswer, ModelCall, ModelClient, ModelError, Provider, Role, ToolCall,
};

/// Gemini's harm categories, each blocked at medium and above (its documented default made
/// explicit, so an answer to a customer never depends on a provider's default changing).
const GEMINI_SAFETY: [&str; 4] = [
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
];

/// A model name in a URL path: unreserved characters stay as they are.
const MODEL_NAME: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Calls the providers over HTTPS (or HTTP to a local server). A tenant's own `base_url`
/// goes through the egress guard (checked again at connect time); the platform's, set by
/// the operator in config, may be a local server.
pub struct HttpModelClient {
    platform: reqwest::Client,
    tenant: reqwest::Client,
}

impl HttpModelClient {
    pub fn new(timeout: Duration, allow_private: bool) -> anyhow::Result<Self> {
        let build = |allow: bool| {
            crate::http::egress::client_builder(allow)
                .timeout(timeout)
                .user_agent(concat!("wagate/", env!("CARGO_PKG_VERSION")))
                .build()
        };
        Ok(Self {
            platform: build(true)?,
            tenant: build(allow_private)?,
        })
    }

    fn client_for(&self, call: &ModelCall) -> &reqwest::Client {
        if call.credential.id.starts_with(super::PLATFORM_CREDENTIAL) {
            &self.platform
        } else {
            &self.tenant
        }
    }
}

/// The request body Gemini's `generateContent` takes.
pub fn gemini_body(call: &ModelCall) -> Value {
    let contents: Vec<Value> = call
        .turns
        .iter()
        .map(|t| {
            let mut parts = Vec::new();
            if !t.text.is_empty() {
                parts.push(json!({ "text": t.text }));
            }
            for c in &t.tool_calls {
                parts
                    .push(json!({"functionCall": {"name": c.name, "args": args_of(&c.arguments)}}));
            }
            for r in &t.tool_results {
                parts.push(
                    json!({"functionResponse": {"name": r.name, "response": args_of(&r.content)}}),
                );
            }
            json!({
                "role": match t.role { Role::User => "user", Role::Model => "model" },
                "parts": parts,
            })
        })
        .collect();
    let mut generation = serde_json::Map::new();
    if let Some(t) = call.temperature {
        generation.insert("temperature".into(), json!(t));
    }
    if let Some(m) = call.max_output_tokens {
        generation.insert("maxOutputTokens".into(), json!(m));
    }
    let mut body = json!({
        "contents": contents,
        "generationConfig": generation,
        "safetySettings": GEMINI_SAFETY
            .iter()
            .map(|c| json!({"category": c, "threshold": "BLOCK_MEDIUM_AND_ABOVE"}))
            .collect::<Vec<_>>(),
    });
    if !call.system_prompt.trim().is_empty() {
        body["systemInstruction"] = json!({ "parts": [{ "text": call.system_prompt }] });
    }
    if !call.tools.is_empty() {
        body["tools"] = json!([{
            "functionDeclarations": call.tools.iter().map(|t| json!({
                "name": t.name, "description": t.description, "parameters": t.parameters,
            })).collect::<Vec<_>>()
        }]);
    }
    body
}

/// A call's arguments (or a tool's answer) as the JSON object it holds; `{}` if it holds
/// none.
fn args_of(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

/// The request body of OpenAI's chat completions.
pub fn openai_body(call: &ModelCall) -> Value {
    let mut messages = Vec::with_capacity(call.turns.len() + 1);
    if !call.system_prompt.trim().is_empty() {
        messages.push(json!({"role": "system", "content": call.system_prompt}));
    }
    for t in &call.turns {
        if !t.tool_calls.is_empty() {
            messages.push(json!({
                "role": "assistant",
                "content": if t.text.is_empty() { Value::Null } else { json!(t.text) },
                "tool_calls": t.tool_calls.iter().map(|c| json!({
                    "id": c.id, "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                })).collect::<Vec<_>>(),
            }));
            continue;
        }
        if !t.tool_results.is_empty() {
            for r in &t.tool_results {
                messages
                    .push(json!({"role": "tool", "tool_call_id": r.call_id, "content": r.content}));
            }
            continue;
        }
        messages.push(json!({
            "role": match t.role { Role::User => "user", Role::Model => "assistant" },
            "content": t.text,
        }));
    }
    let mut body = json!({ "model": call.model, "messages": messages });
    if !call.tools.is_empty() {
        body["tools"] = json!(call.tools.iter().map(|t| json!({
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
        })).collect::<Vec<_>>());
    }
    if let Some(t) = call.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(m) = call.max_output_tokens {
        body["max_tokens"] = json!(m);
    }
    body
}

/// A `Retry-After` header in seconds (the HTTP-date form is not used by either provider).
fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// Gemini's `google.rpc.RetryInfo` detail: `"retryDelay": "30s"` (a protobuf Duration).
fn gemini_retry_info(body: &Value) -> Option<Duration> {
    body["error"]["details"]
        .as_array()?
        .iter()
        .find(|d| {
            d["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
        })
        .and_then(|d| d["retryDelay"].as_str())
        .and_then(|s| s.strip_suffix('s'))
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// What an HTTP error status means for a retry.
fn status_error(
    provider: Provider,
    status: u16,
    retry_after: Option<Duration>,
    body: &Value,
) -> ModelError {
    let detail = body["error"]["message"]
        .as_str()
        .map(|m| m.chars().take(300).collect::<String>())
        .unwrap_or_default();
    let message = format!("{} answered {status}: {detail}", provider.as_str());
    let insufficient_quota = provider == Provider::Openai
        && (body["error"]["code"] == "insufficient_quota"
            || body["error"]["type"] == "insufficient_quota");
    match status {
        429 if insufficient_quota => ModelError::Fatal {
            status: Some(status),
            message,
        },
        429 | 500 | 502 | 503 | 504 => ModelError::Retryable {
            status: Some(status),
            retry_after: retry_after.or_else(|| gemini_retry_info(body)),
            message,
        },
        _ => ModelError::Fatal {
            status: Some(status),
            message,
        },
    }
}

/// Reads Gemini's answer: its text, or why it was blocked; tokens from `usageMetadata`.
pub fn read_gemini(body: &Value) -> Result<ModelAnswer, ModelError> {
    if let Some(reason) = body["promptFeedback"]["blockReason"].as_str() {
        return Err(ModelError::Blocked {
            reason: reason.to_owned(),
        });
    }
    let candidate = &body["candidates"][0];
    let finish = candidate["finishReason"].as_str().unwrap_or("");
    let parts = candidate["content"]["parts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let text: String = parts
        .iter()
        .filter(|p| p["thought"] != true)
        .filter_map(|p| p["text"].as_str())
        .collect::<Vec<_>>()
        .join("");
    // Gemini gives its calls no ids: they are numbered in the order it made them.
    let tool_calls: Vec<ToolCall> = parts
        .iter()
        .filter_map(|p| p.get("functionCall"))
        .enumerate()
        .filter_map(|(i, f)| {
            Some(ToolCall {
                id: format!("call_{i}"),
                name: f["name"].as_str()?.to_owned(),
                arguments: f
                    .get("args")
                    .cloned()
                    .unwrap_or_else(|| json!({}))
                    .to_string(),
            })
        })
        .collect();
    if matches!(
        finish,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII"
    ) {
        return Err(ModelError::Blocked {
            reason: finish.to_owned(),
        });
    }
    let usage = &body["usageMetadata"];
    Ok(ModelAnswer {
        text,
        prompt_tokens: usage["promptTokenCount"].as_u64().unwrap_or(0),
        output_tokens: usage["candidatesTokenCount"].as_u64().unwrap_or(0),
        tool_calls,
    })
}

/// Reads an OpenAI chat completion; tokens from `usage`.
pub fn read_openai(body: &Value) -> Result<ModelAnswer, ModelError> {
    let choice = &body["choices"][0];
    if choice["finish_reason"] == "content_filter" {
        return Err(ModelError::Blocked {
            reason: "content_filter".into(),
        });
    }
    if let Some(refusal) = choice["message"]["refusal"].as_str() {
        return Err(ModelError::Blocked {
            reason: format!("refusal: {}", refusal.chars().take(200).collect::<String>()),
        });
    }
    let usage = &body["usage"];
    let tool_calls: Vec<ToolCall> = choice["message"]["tool_calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .filter_map(|c| {
                    Some(ToolCall {
                        id: c["id"].as_str()?.to_owned(),
                        name: c["function"]["name"].as_str()?.to_owned(),
                        arguments: c["function"]["arguments"]
                            .as_str()
                            .unwrap_or("{}")
                            .to_owned(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ModelAnswer {
        text: choice["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        prompt_tokens: usage["prompt_tokens"].as_u64().unwrap_or(0),
        output_tokens: usage["completion_tokens"].as_u64().unwrap_or(0),
        tool_calls,
    })
}

#[async_trait]
impl ModelClient for HttpModelClient {
    async fn generate(&self, call: &ModelCall) -> Result<ModelAnswer, ModelError> {
        let base = call.credential.base_url.trim_end_matches('/');
        let client = self.client_for(call);
        let request = match call.provider {
            Provider::Gemini => client
                .post(format!(
                    "{base}/v1beta/models/{}:generateContent",
                    percent_encoding::utf8_percent_encode(&call.model, MODEL_NAME)
                ))
                .header("x-goog-api-key", &call.credential.api_key)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(gemini_body(call).to_string()),
            Provider::Openai => client
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(&call.credential.api_key)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(openai_body(call).to_string()),
        };
        let res = request.send().await.map_err(|e| {
            let message = if let Some(refused) = crate::http::egress::refusal(&e) {
                return ModelError::Fatal {
                    status: None,
                    message: format!("the provider's address is refused: {refused}"),
                };
            } else if e.is_timeout() {
                format!("{} did not answer in time", call.provider.as_str())
            } else {
                format!("{} could not be reached: {e}", call.provider.as_str())
            };
            ModelError::Retryable {
                status: None,
                retry_after: None,
                message,
            }
        })?;
        let status = res.status().as_u16();
        let retry_after = retry_after_header(res.headers());
        let bytes = res.bytes().await.map_err(|e| ModelError::Retryable {
            status: Some(status),
            retry_after: None,
            message: format!("reading {}'s answer: {e}", call.provider.as_str()),
        })?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return Err(status_error(call.provider, status, retry_after, &body));
        }
        if body.is_null() {
            return Err(ModelError::Retryable {
                status: Some(status),
                retry_after: None,
                message: format!("{} answered with no JSON", call.provider.as_str()),
            });
        }
        match call.provider {
            Provider::Gemini => read_gemini(&body),
            Provider::Openai => read_openai(&body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemini_errors_are_read_as_documented() {
        let body = json!({"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]}});
        assert_eq!(
            status_error(Provider::Gemini, 429, None, &body),
            ModelError::Retryable {
                status: Some(429),
                retry_after: Some(Duration::from_secs(7)),
                message: "gemini answered 429: Resource has been exhausted".into()
            }
        );
        assert!(matches!(
            status_error(Provider::Gemini, 400, None, &json!({})),
            ModelError::Fatal { .. }
        ));
        assert!(matches!(
            read_gemini(&json!({"promptFeedback": {"blockReason": "SAFETY"}})),
            Err(ModelError::Blocked { .. })
        ));
        assert!(matches!(
            read_gemini(&json!({"candidates": [{"finishReason": "SAFETY"}]})),
            Err(ModelError::Blocked { .. })
        ));
    }

    #[test]
    fn tool_calls_are_read_and_answered_in_each_providers_format() {
        use wagate_actors::ai::ports::{Credential, ToolResult, Turn};
        let openai = read_openai(&json!({"choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "call_abc",
            "type": "function", "function": {"name": "set_contact_name", "arguments": "{\"name\":\"Lia\"}"}}]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2}}))
        .unwrap();
        assert_eq!(
            openai.tool_calls,
            vec![ToolCall {
                id: "call_abc".into(),
                name: "set_contact_name".into(),
                arguments: "{\"name\":\"Lia\"}".into()
            }]
        );
        let gemini = read_gemini(&json!({"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "handoff_to_human", "args": {"reason": "angry"}}}]}, "finishReason": "STOP"}]}))
        .unwrap();
        assert_eq!(gemini.tool_calls[0].name, "handoff_to_human");
        assert_eq!(
            args_of(&gemini.tool_calls[0].arguments),
            json!({"reason": "angry"})
        );

        let mut asked = Turn::text(Role::Model, "");
        asked.tool_calls = openai.tool_calls.clone();
        let mut answered = Turn::text(Role::User, "");
        answered.tool_results = vec![ToolResult {
            call_id: "call_abc".into(),
            name: "set_contact_name".into(),
            content: "{\"ok\":true}".into(),
        }];
        let call = ModelCall {
            provider: Provider::Openai,
            credential: Credential {
                id: "c".into(),
                base_url: "http://x".into(),
                api_key: "k".into(),
            },
            model: "gpt-4o-mini".into(),
            system_prompt: String::new(),
            turns: vec![Turn::text(Role::User, "I am Lia"), asked, answered],
            temperature: None,
            max_output_tokens: None,
            tools: wagate_actors::ai::tools::catalogue(),
        };
        let body = openai_body(&call);
        assert_eq!(body["messages"][1]["tool_calls"][0]["id"], "call_abc");
        assert_eq!(
            body["messages"][2],
            json!({"role": "tool", "tool_call_id": "call_abc", "content": "{\"ok\":true}"})
        );
        assert_eq!(body["tools"][0]["function"]["name"], "handoff_to_human");
        let body = gemini_body(&call);
        assert_eq!(
            body["contents"][1]["parts"][0]["functionCall"]["args"],
            json!({"name": "Lia"})
        );
        assert_eq!(
            body["contents"][2]["parts"][0]["functionResponse"]["response"],
            json!({"ok": true})
        );
        assert_eq!(
            body["tools"][0]["functionDeclarations"]
                .as_array()
                .unwrap()
                .len(),
            wagate_actors::ai::tools::catalogue().len()
        );
    }

    #[test]
    fn openai_insufficient_quota_is_never_retried_but_rate_limits_are() {
        let quota = json!({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}});
        assert!(matches!(
            status_error(Provider::Openai, 429, None, &quota),
            ModelError::Fatal { .. }
        ));
        let limited = json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}});
        assert!(matches!(
            status_error(Provider::Openai, 429, Some(Duration::from_secs(2)), &limited),
            ModelError::Retryable { retry_after: Some(d), .. } if d == Duration::from_secs(2)
        ));
    }
}
