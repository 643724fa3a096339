//! Logging and request correlation.
//!
//! Privacy (as the gateway's technical brief requires): request and message bodies are never logged, and phone numbers only appear
//! as keyed hashes ([`PhoneHash`]), so a log line can be correlated without exposing the number.

use std::sync::OnceLock;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::configuration::{LogFormat, LogSettings};

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Installs the global subscriber: JSON lines or a human format, filtered by `log.level`
/// unless `RUST_LOG` is set. A second call (tests) is a no-op.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter_directives(&settings.level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match settings.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
    // Already initialised (several apps in one test process): keep the first subscriber.
    let _ = result;
}

/// The targets of whatsapp-rust's own log lines (its crates and the names it logs under).
/// Their INFO lines carry pairing codes and phone numbers ("Code: ABCD-EFGH", "pair code
/// authentication for phone: 1555…"), so they log at WARN unless `log.level` names them.
const LIBRARY_TARGETS: &[&str] = &[
    "whatsapp_rust",
    "wacore",
    "Client",
    "AppState",
    "usync",
    "Blocking",
    "blocklist",
    "UnifiedSession",
    "TcToken",
    "Bot",
    "Chatstate",
    "PresenceHandler",
    "Mex",
    "MessageQueue",
];

/// `log.level` with the library's targets lowered to WARN, except those it names itself.
pub fn filter_directives(level: &str) -> String {
    let mut directives = level.to_owned();
    for target in LIBRARY_TARGETS {
        let named = level.split(',').any(|d| {
            d.trim()
                .split('=')
                .next()
                .is_some_and(|t| t.starts_with(target))
        });
        if !named {
            directives.push_str(&format!(",{target}=warn"));
        }
    }
    directives
}

/// The request id of the request being served, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// The id this request is known by: the client's `x-request-id` when it is sane, else a new one.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn sane_request_id(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| s.to_owned())
}

/// Middleware: gives every request an id, runs it inside a span carrying that id (so every log
/// line of the request has it), and echoes it in the `x-request-id` response header.
pub async fn request_id_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = req
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(sane_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    // The route's pattern, never the raw path: paths carry phone numbers (`…/chats/+1555…`)
    // and ids that have no place in logs.
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!(
        "http_request",
        request_id = %id,
        method = %req.method(),
        route = %route,
    );
    // Inner layers answer errors themselves (never `Err`), inside this scope, so every error
    // body carries the request id.
    let mut res = REQUEST_ID
        .scope(id.clone(), next.call(req))
        .instrument(span)
        .await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    Ok(res)
}

static PHONE_HASH_KEY: OnceLock<Vec<u8>> = OnceLock::new();

/// Sets the key phone hashes are made with (derived from deployment secrets at startup), so
/// hashes cannot be reversed by hashing every phone number.
pub fn set_phone_hash_key(key: &[u8]) {
    let _ = PHONE_HASH_KEY.set(key.to_vec());
}

/// A phone number as it may appear in logs: `phone#` and 12 hex digits of a keyed hash.
pub struct PhoneHash<'a>(pub &'a str);

impl std::fmt::Display for PhoneHash<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits: String = self.0.chars().filter(char::is_ascii_digit).collect();
        let key = PHONE_HASH_KEY
            .get()
            .map(Vec::as_slice)
            .unwrap_or(b"wagate-phone");
        let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
            Ok(m) => m,
            Err(_) => return f.write_str("phone#?"),
        };
        mac.update(digits.as_bytes());
        let out = mac.finalize().into_bytes();
        write!(f, "phone#{}", &hex::encode(out)[..12])
    }
}

impl std::fmt::Debug for PhoneHash<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_hash_hides_the_number_and_is_stable_across_formats() {
        let a = PhoneHash("+15551234567").to_string();
        let b = PhoneHash("15551234567").to_string();
        assert_eq!(a, b);
        assert!(a.starts_with("phone#"));
        assert!(!a.contains("5551234567"));
        assert_ne!(a, PhoneHash("+15551234568").to_string());
    }

    #[test]
    fn library_lines_are_lowered_unless_named() {
        let d = filter_directives("info");
        assert!(d.starts_with("info,"), "{d}");
        assert!(
            d.contains(",Client=warn") && d.contains(",whatsapp_rust=warn"),
            "{d}"
        );
        let named = filter_directives("info,whatsapp_rust=debug");
        assert!(!named.contains("whatsapp_rust=warn"), "{named}");
        assert!(named.contains("Client=warn"), "{named}");
        assert!(EnvFilter::try_new(d).is_ok());
    }

    #[test]
    fn request_ids_are_checked() {
        assert!(sane_request_id(&HeaderValue::from_static("abc-123")).is_some());
        assert!(sane_request_id(&HeaderValue::from_static("a b")).is_none());
        assert!(sane_request_id(&HeaderValue::from_static("")).is_none());
    }
}
