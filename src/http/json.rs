//! `ValidJson<T>`: a JSON body extractor whose errors name the offending field.

use actix_web::dev::Payload;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{FromRequest, HttpRequest, web};
use futures::StreamExt;
use futures::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, payload_error};

/// The body limit, set once on the app from `application.body_limit_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

pub struct ValidJson<T>(pub T);

impl<T> ValidJson<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

fn is_json(req: &HttpRequest) -> bool {
    let Some(ct) = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// Reads the whole body within the app's limit.
fn read_body(
    req: &HttpRequest,
    payload: &mut Payload,
) -> LocalBoxFuture<'static, Result<web::BytesMut, ApiError>> {
    let limit = req
        .app_data::<web::Data<BodyLimit>>()
        .map(|l| l.0)
        .unwrap_or(1 << 20);
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut payload = payload.take();
    Box::pin(async move {
        if declared.is_some_and(|n| n > limit) {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| payload_error(e, limit))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    })
}

/// A body that must be there and be JSON: 415 for another content type, else the body
/// within the app's limit.
fn json_body(
    req: &HttpRequest,
    payload: &mut Payload,
) -> LocalBoxFuture<'static, Result<web::BytesMut, ApiError>> {
    let json = is_json(req);
    let body = read_body(req, payload);
    Box::pin(async move {
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        body.await
    })
}

impl<T: DeserializeOwned + 'static> FromRequest for ValidJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = json_body(req, payload);
        Box::pin(async move { parse(&body.await?).map(ValidJson) })
    }
}

/// A JSON body that may hold U+0000 in its strings: only for what a simulated contact sends
/// in the sandbox (a real contact's message can hold anything, and the inbound path is what
/// must cope with it). Everything else [`ValidJson`] checks still holds.
pub struct ContactJson<T>(pub T);

impl<T> ContactJson<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for ContactJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = json_body(req, payload);
        Box::pin(async move { parse_shape(&body.await?).map(ContactJson) })
    }
}

/// A JSON body that may be left out. No body at all is `None`; a body that is there is held
/// to everything [`ValidJson`] checks, so a body that does not parse is an error, never a
/// silent default (actix's `Option<ValidJson<T>>` turns every error into `None`).
pub struct OptionalJson<T>(pub Option<T>);

impl<T> OptionalJson<T> {
    pub fn into_inner(self) -> Option<T> {
        self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for OptionalJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let json = is_json(req);
        let body = read_body(req, payload);
        Box::pin(async move {
            let body = body.await?;
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(OptionalJson(None));
            }
            if !json {
                return Err(ApiError::UnsupportedMediaType);
            }
            parse(&body).map(|v| OptionalJson(Some(v)))
        })
    }
}

/// Why a string holding U+0000 is refused: Postgres can keep it neither in `text` nor in
/// `jsonb`, and nothing a person types contains it.
pub const NUL_MESSAGE: &str = "must not contain the NUL character (U+0000)";

/// The path of the first string (or object key) holding U+0000, if any. In valid JSON a NUL
/// can only be written as the escape `\u0000`, so a body without those six bytes is clean and
/// costs one scan; only a body with them is parsed to find the field.
fn field_with_nul(body: &[u8]) -> Option<String> {
    if !body.windows(6).any(|w| w == br"\u0000") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    fn walk(v: &serde_json::Value, path: &str) -> Option<String> {
        let join = |key: &str| {
            if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            }
        };
        match v {
            serde_json::Value::String(s) if s.contains('\0') => Some(if path.is_empty() {
                "body".into()
            } else {
                path.to_owned()
            }),
            serde_json::Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| walk(item, &join(&format!("[{i}]")).replace(".[", "["))),
            serde_json::Value::Object(map) => map.iter().find_map(|(k, item)| {
                if k.contains('\0') {
                    Some(join(&k.replace('\0', "\\u0000")))
                } else {
                    walk(item, &join(k))
                }
            }),
            _ => None,
        }
    }
    walk(&value, "")
}

/// Deserialises, tracking the path so a wrong type or missing field names the field; a
/// string holding U+0000 is refused, naming its field.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value = parse_shape(body)?;
    if let Some(field) = field_with_nul(body) {
        return Err(ApiError::validation(field, NUL_MESSAGE));
    }
    Ok(value)
}

/// [`parse`] without the NUL check.
fn parse_shape<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // Syntax first, so broken JSON is `malformed_json` wherever the break is.
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    // Every request body of this API is an object; serde would otherwise read a struct from an
    // array by position, so `["x"]` would pass as `{"name": "x"}`.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::validation("body", "must be a JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        // The syntax is known good here, so whatever fails is about the shape: a field's error.
        let message = e.into_inner().to_string();
        // serde names missing/unknown fields in backticks at the parent's path.
        // A missing field is reported at its parent's path, naming the field in backticks;
        // anything else (wrong type, unknown field) is reported at the field's own path.
        let missing = message.starts_with("missing field");
        let named = message.split('`').nth(1).filter(|_| missing);
        let field = match (path.as_str(), named) {
            (".", Some(n)) => n.to_owned(),
            (p, Some(n)) => format!("{p}.{n}"),
            (".", None) => "body".to_owned(),
            (p, None) => p.to_owned(),
        };
        ApiError::validation(field, message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        inner: Option<Inner>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    fn field_of(body: &str) -> String {
        match parse::<Body>(body.as_bytes()) {
            Err(ApiError::Validation { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn names_fields() {
        assert_eq!(field_of(r#"{"name": 5}"#), "name");
        assert_eq!(field_of(r#"{}"#), "name");
        assert_eq!(field_of(r#"{"name":"x","extra":1}"#), "extra");
        assert_eq!(
            field_of(r#"{"name":"x","inner":{"count":"no"}}"#),
            "inner.count"
        );
        assert!(matches!(
            parse::<Body>(b"{nope"),
            Err(ApiError::MalformedJson(_))
        ));
        assert_eq!(field_of(r#"{"name": "a\u0000b"}"#), "name");
        assert_eq!(
            field_of(r#"{"name": "x", "inner": {"count": 1, "tags": ["ok", "\u0000"]}}"#),
            "inner.tags[1]"
        );
        // An escaped backslash before the letters is not a NUL.
        assert!(parse::<Body>(br#"{"name": "\\u0000"}"#).is_ok());
        assert!(matches!(
            parse::<Body>(b""),
            Err(ApiError::MalformedJson(_))
        ));
    }
}
