//! What a session's actor tells the tenant about: one typed variant per event type. wagate's
//! events module stores them (type and data) and is the only place they are serialised.

use serde::Serialize;

/// One state change worth telling the tenant about. Serialised, as the event's `data`, by
/// its fields alone (`untagged`); the type is [`SessionEvent::kind`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum SessionEvent {
    /// `session.qr`: a QR code to scan (at most one event per `qr_event_min_interval`).
    Qr { qr: String, expires_in_secs: u64 },
    /// `session.paired`: a phone scanned the code or entered the pairing code.
    Paired {
        phone: Option<String>,
        jid: Option<String>,
    },
    /// `session.connected`: connected and logged in.
    Connected {
        phone: Option<String>,
        jid: Option<String>,
    },
    /// `session.disconnected`: the connection dropped (a reconnect follows).
    Disconnected { reason: String },
    /// `session.reconnecting`: the next attempt, after `delay_ms`.
    Reconnecting {
        attempt: u32,
        delay_ms: u64,
        last_error: Option<String>,
    },
    /// `session.reconnect_failed`: every attempt failed; the session is `failed`.
    ReconnectFailed {
        attempts: u32,
        last_error: Option<String>,
    },
    /// `session.logged_out`: the device was unlinked (`requested`: through the API).
    LoggedOut { reason: String },
    /// `session.stopped`: stopped by the API, a tier move or shutdown.
    Stopped {},
    /// `session.replaced`: another connection took the account over.
    Replaced {},
    /// `session.qr_timeout`: nobody scanned in time (`after_secs`: the configured wait, when
    /// that was the cause; absent when every code WhatsApp offered expired).
    QrTimeout {
        #[serde(skip_serializing_if = "Option::is_none")]
        after_secs: Option<u64>,
    },
    /// `session.health_check_failed`: the connection looked dead; it is being reconnected.
    HealthCheckFailed { reason: String },
}

impl SessionEvent {
    /// Every session event type, in the order the API documents them.
    pub const KINDS: &[&str] = &[
        "session.qr",
        "session.paired",
        "session.connected",
        "session.disconnected",
        "session.reconnecting",
        "session.reconnect_failed",
        "session.logged_out",
        "session.stopped",
        "session.replaced",
        "session.qr_timeout",
        "session.health_check_failed",
    ];

    /// The event's type.
    pub fn kind(&self) -> &'static str {
        match self {
            SessionEvent::Qr { .. } => "session.qr",
            SessionEvent::Paired { .. } => "session.paired",
            SessionEvent::Connected { .. } => "session.connected",
            SessionEvent::Disconnected { .. } => "session.disconnected",
            SessionEvent::Reconnecting { .. } => "session.reconnecting",
            SessionEvent::ReconnectFailed { .. } => "session.reconnect_failed",
            SessionEvent::LoggedOut { .. } => "session.logged_out",
            SessionEvent::Stopped {} => "session.stopped",
            SessionEvent::Replaced {} => "session.replaced",
            SessionEvent::QrTimeout { .. } => "session.qr_timeout",
            SessionEvent::HealthCheckFailed { .. } => "session.health_check_failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_a_listed_kind_and_serialises_to_an_object() {
        let all = [
            SessionEvent::Qr {
                qr: "2@x".into(),
                expires_in_secs: 20,
            },
            SessionEvent::Paired {
                phone: None,
                jid: None,
            },
            SessionEvent::Connected {
                phone: Some("+1".into()),
                jid: None,
            },
            SessionEvent::Disconnected { reason: "r".into() },
            SessionEvent::Reconnecting {
                attempt: 1,
                delay_ms: 5,
                last_error: None,
            },
            SessionEvent::ReconnectFailed {
                attempts: 3,
                last_error: None,
            },
            SessionEvent::LoggedOut { reason: "r".into() },
            SessionEvent::Stopped {},
            SessionEvent::Replaced {},
            SessionEvent::QrTimeout { after_secs: None },
            SessionEvent::HealthCheckFailed { reason: "r".into() },
        ];
        let kinds: Vec<&str> = all.iter().map(SessionEvent::kind).collect();
        assert_eq!(kinds, SessionEvent::KINDS);
        for e in &all {
            let data = serde_json::to_value(e).unwrap_or_default();
            assert!(data.is_object(), "{}: {data}", e.kind());
        }
        assert_eq!(
            serde_json::to_value(SessionEvent::Stopped {}).unwrap_or_default(),
            serde_json::json!({})
        );
        assert_eq!(
            serde_json::to_value(SessionEvent::QrTimeout {
                after_secs: Some(60)
            })
            .unwrap_or_default(),
            serde_json::json!({"after_secs": 60})
        );
    }
}
