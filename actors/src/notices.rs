//! What the `NotificationActor` makes of system events: the rules that turn an event into a
//! stored notification for a tenant's members (pure), and the port through which it claims
//! the events and stores what it made (`src/notifications` implements it with Postgres).
//!
//! Claimed work is settled in one transaction with the notifications it made (each keyed by
//! its event), so a crash between the two makes nothing twice and loses nothing.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use uuid::Uuid;

use crate::notification::StoredEvent;

/// How loud a notification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Critical,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }
}

/// A notification the rules made of an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// What it is about, e.g. `session.logged_out`, `ai.handoff`, `flow.failed`.
    pub kind: &'static str,
    pub level: Level,
    pub title: String,
    pub body: String,
    /// One member only (else every member of the tenant).
    pub member_id: Option<Uuid>,
}

/// A system event claimed for the rules.
#[derive(Debug, Clone)]
pub struct SystemEvent {
    pub tenant_id: Uuid,
    pub event_id: i64,
    pub session_id: Option<Uuid>,
    pub kind: String,
    pub data: Value,
    /// The session's name, for the text.
    pub session_name: Option<String>,
}

/// The event kinds the rules read: the store claims only these.
pub const NOTICE_EVENTS: &[&str] = &[
    "session.logged_out",
    "session.reconnect_failed",
    "session.health_check_failed",
    "ai.handoff",
    "flow.execution",
];

fn str_of<'a>(data: &'a Value, key: &str) -> Option<&'a str> {
    data.get(key).and_then(Value::as_str)
}

/// The notification `event` calls for, if any.
pub fn notice_for(event: &SystemEvent) -> Option<Notice> {
    let session = event
        .session_name
        .clone()
        .or_else(|| event.session_id.map(|s| s.to_string()))
        .unwrap_or_else(|| "a session".into());
    let data = &event.data;
    let notice = |kind, level, title: String, body: String| Notice {
        kind,
        level,
        title,
        body,
        member_id: None,
    };
    match event.kind.as_str() {
        "session.logged_out" => Some(notice(
            "session.logged_out",
            Level::Critical,
            format!("Session {session} was logged out"),
            "The phone unlinked this device. Link it again with a new QR code to receive and send messages.".into(),
        )),
        "session.reconnect_failed" => Some(notice(
            "session.reconnect_failed",
            Level::Critical,
            format!("Session {session} stopped reconnecting"),
            format!(
                "It could not reconnect and gave up{}. Restart it when the network is back.",
                str_of(data, "reason").map(|r| format!(" ({r})")).unwrap_or_default()
            ),
        )),
        "session.health_check_failed" => Some(notice(
            "session.health_check_failed",
            Level::Warning,
            format!("Session {session} is not answering"),
            "Its connection looks alive but WhatsApp does not answer it; the gateway is reconnecting it.".into(),
        )),
        "ai.handoff" => {
            let chat = str_of(data, "chat").unwrap_or("a chat");
            Some(notice(
                "ai.handoff",
                Level::Warning,
                format!("A customer needs a person on {session}"),
                format!(
                    "The agent handed {} over{}.",
                    if chat.starts_with('+') || chat.contains('@') {
                        chat.to_owned()
                    } else {
                        format!("+{chat}")
                    },
                    str_of(data, "reason")
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ),
            ))
        }
        "flow.execution" if str_of(data, "phase") == Some("failed") => Some(notice(
            "flow.failed",
            Level::Warning,
            format!(
                "Flow {} failed",
                str_of(data, "flow_name")
                    .or_else(|| str_of(data, "flow_id"))
                    .unwrap_or("")
            ),
            str_of(data, "error")
                .map(|e| format!("It stopped with: {e}"))
                .unwrap_or_else(|| "See its execution for the step that failed.".into()),
        )),
        _ => None,
    }
}

/// Where the `NotificationActor` claims system events and stores notifications.
#[async_trait]
pub trait NoticeStore: Send + Sync + 'static {
    /// Up to `limit` unsettled events of the kinds in [`NOTICE_EVENTS`], locked for a while so
    /// no other node takes them.
    async fn claim(&self, limit: usize) -> anyhow::Result<Vec<SystemEvent>>;
    /// Stores the notices made of the claimed events and settles those events, in one
    /// transaction; returns the `notification.created` events to publish.
    async fn settle(
        &self,
        made: Vec<(SystemEvent, Option<Notice>)>,
    ) -> anyhow::Result<Vec<Arc<StoredEvent>>>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: &str, data: Value) -> SystemEvent {
        SystemEvent {
            tenant_id: Uuid::nil(),
            event_id: 1,
            session_id: None,
            kind: kind.into(),
            data,
            session_name: Some("front".into()),
        }
    }

    #[test]
    fn the_rules() {
        let n = notice_for(&event("session.logged_out", json!({}))).expect("a notice");
        assert_eq!((n.kind, n.level), ("session.logged_out", Level::Critical));
        assert!(n.title.contains("front"));
        let n = notice_for(&event(
            "ai.handoff",
            json!({"chat": "4915550001111", "reason": "asked for a human"}),
        ))
        .expect("a notice");
        assert!(
            n.body.contains("+4915550001111") && n.body.contains("asked for a human"),
            "{}",
            n.body
        );
        assert!(notice_for(&event("flow.execution", json!({"phase": "step"}))).is_none());
        let n = notice_for(&event(
            "flow.execution",
            json!({"phase": "failed", "flow_id": "f", "error": "HTTP 500"}),
        ))
        .expect("a notice");
        assert_eq!(n.kind, "flow.failed");
        assert!(n.body.contains("HTTP 500"));
        assert!(notice_for(&event("message.received", json!({}))).is_none());
        for kind in NOTICE_EVENTS {
            // Every kind the store claims is one the rules read.
            let data = json!({"phase": "failed"});
            assert!(notice_for(&event(kind, data)).is_some(), "{kind}");
        }
    }
}
