//! Events, the platform's spine: the list of event types and their typed payloads (the only
//! place event data is serialised), the event as the API shows it, their rows and insertion
//! with the webhook deliveries written beside them (`store.rs`), fan-out to the
//! `NotificationActor` (and, with Redis, to the other nodes: `relay.rs`), and the WebSocket
//! stream `GET /api/v1/events` (`ws.rs`). A new event type is a new `EventPayload` variant
//! and its name in `EVENT_TYPES`.

pub mod relay;
pub mod store;
pub mod ws;

use std::sync::{Arc, LazyLock};

use actix::Addr;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;
use wagate_actors::notification::{NotificationActor, Publish, StoredEvent};
pub use wagate_actors::ports::SessionEvent;

use crate::messages::Message;
pub use store::{EventRow, insert_event};

/// `message.received`: a contact's message, stored (data: the message).
pub const MESSAGE_RECEIVED: &str = "message.received";
/// `message.from_phone`: the account's own phone (or another of its linked devices) sent a
/// message; it is kept as the chat's outgoing message (data: the message).
pub const MESSAGE_FROM_PHONE: &str = "message.from_phone";
/// `message.status`: an outgoing message moved on (data: [`StatusChange`]). Written inside
/// the statement that moves the message (`messages::store::move_status`), which builds the
/// same fields in SQL; a test holds the two to the same shape.
pub const MESSAGE_STATUS: &str = "message.status";
/// `message.dead_lettered`: a received message that could not be stored (data: [`DeadLettered`]).
pub const MESSAGE_DEAD_LETTERED: &str = "message.dead_lettered";
/// `message.edited`: a message's text changed, by the contact or through the API (data:
/// [`MessageChanged`]).
pub const MESSAGE_EDITED: &str = "message.edited";
/// `message.deleted`: a message was deleted for everyone (by the contact or through the
/// API) or for this session only (data: [`MessageChanged`]).
pub const MESSAGE_DELETED: &str = "message.deleted";
/// `presence.update`: a contact's presence or chat state changed (data: [`PresenceUpdate`]).
pub const PRESENCE_UPDATE: &str = "presence.update";
/// `group.created`: a group was created, by this session or by someone who put it in one
/// (data: [`GroupChanged`]).
pub const GROUP_CREATED: &str = "group.created";
/// `group.participants`: participants were added, removed, promoted or demoted, or joined or
/// left (data: [`GroupChanged`]).
pub const GROUP_PARTICIPANTS: &str = "group.participants";
/// `group.updated`: a group's subject or description changed (data: [`GroupChanged`]).
pub const GROUP_UPDATED: &str = "group.updated";
/// `ai.reply`: an agent answered a chat (data: [`crate::ai::AiActivity`]).
pub const AI_REPLY: &str = "ai.reply";
/// `ai.error`: an agent's model failed; the fallback text went out if it has one (data:
/// [`crate::ai::AiActivity`]).
pub const AI_ERROR: &str = "ai.error";
/// `ai.handoff`: a contact asked for a human; the chat's bot is off (data:
/// [`crate::ai::AiActivity`]).
pub const AI_HANDOFF: &str = "ai.handoff";
/// `flow.execution`: a flow execution started, ran steps, waits, finished or failed (data:
/// [`crate::automation::FlowExecutionEvent`]).
pub const FLOW_EXECUTION: &str = "flow.execution";
/// `card.created`: a CRM card was created (data: the card, and who created it).
pub const CARD_CREATED: &str = "card.created";
/// `card.moved`: a card changed column or place (data: the card, `from_column_id`,
/// `to_column_id`, `position`, who moved it).
pub const CARD_MOVED: &str = "card.moved";
/// `notification.created`: a notification for the tenant's members (`member_id` set: for that
/// member only).
pub const NOTIFICATION_CREATED: &str = "notification.created";
/// `error`: reserved for errors the platform reports as events (today only the test builds'
/// synthetic events use it).
pub const ERROR: &str = "error";

/// Every event type, the names a webhook subscription may list.
pub static EVENT_TYPES: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    SessionEvent::KINDS
        .iter()
        .copied()
        .chain([
            MESSAGE_RECEIVED,
            MESSAGE_FROM_PHONE,
            MESSAGE_STATUS,
            MESSAGE_DEAD_LETTERED,
            MESSAGE_EDITED,
            MESSAGE_DELETED,
            PRESENCE_UPDATE,
            GROUP_CREATED,
            GROUP_PARTICIPANTS,
            GROUP_UPDATED,
            AI_REPLY,
            AI_ERROR,
            AI_HANDOFF,
            FLOW_EXECUTION,
            CARD_CREATED,
            CARD_MOVED,
            NOTIFICATION_CREATED,
            ERROR,
        ])
        .collect()
});

/// What happened, typed: one variant per event type (session events come from the session
/// actors, in their own enum).
#[derive(Debug, Clone)]
pub enum EventPayload {
    Session(SessionEvent),
    MessageReceived(Box<Message>),
    MessageFromPhone(Box<Message>),
    MessageDeadLettered(DeadLettered),
    Presence(PresenceUpdate),
    MessageEdited(MessageChanged),
    MessageDeleted(MessageChanged),
    Group(GroupChanged),
    /// `ai.reply`, `ai.error` or `ai.handoff`.
    Ai((&'static str, crate::ai::AiActivity)),
    Flow(crate::automation::FlowExecutionEvent),
    /// The platform's own events whose data its module builds: `card.*`,
    /// `notification.created`.
    Platform(&'static str, Value),
}

impl EventPayload {
    pub fn kind(&self) -> &'static str {
        match self {
            EventPayload::Session(e) => e.kind(),
            EventPayload::MessageReceived(_) => MESSAGE_RECEIVED,
            EventPayload::MessageFromPhone(_) => MESSAGE_FROM_PHONE,
            EventPayload::MessageDeadLettered(_) => MESSAGE_DEAD_LETTERED,
            EventPayload::Presence(_) => PRESENCE_UPDATE,
            EventPayload::MessageEdited(_) => MESSAGE_EDITED,
            EventPayload::MessageDeleted(_) => MESSAGE_DELETED,
            EventPayload::Group(g) => match g.kind {
                GroupChangeKind::Created => GROUP_CREATED,
                GroupChangeKind::Participants => GROUP_PARTICIPANTS,
                GroupChangeKind::Updated => GROUP_UPDATED,
            },
            EventPayload::Ai((kind, _)) => kind,
            EventPayload::Flow(_) => FLOW_EXECUTION,
            EventPayload::Platform(kind, _) => kind,
        }
    }

    /// The event's type and data as stored: the one place event data is serialised.
    pub fn to_stored(&self) -> serde_json::Result<(&'static str, Value)> {
        let data = match self {
            EventPayload::Session(e) => serde_json::to_value(e)?,
            EventPayload::MessageReceived(m) | EventPayload::MessageFromPhone(m) => {
                serde_json::to_value(m)?
            }
            EventPayload::MessageDeadLettered(d) => serde_json::to_value(d)?,
            EventPayload::Presence(p) => serde_json::to_value(p)?,
            EventPayload::MessageEdited(c) | EventPayload::MessageDeleted(c) => {
                serde_json::to_value(c)?
            }
            EventPayload::Group(g) => serde_json::to_value(g)?,
            EventPayload::Ai((_, a)) => serde_json::to_value(a)?,
            EventPayload::Flow(f) => serde_json::to_value(f)?,
            EventPayload::Platform(_, data) => data.clone(),
        };
        Ok((self.kind(), data))
    }
}

/// The data of `message.status`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    pub id: Uuid,
    pub wa_id: String,
    pub chat: String,
    /// `sent`, `delivered`, `read` or `failed`.
    pub status: String,
    pub error: Option<String>,
}

/// The data of `message.edited` and `message.deleted`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageChanged {
    /// The message's id.
    pub id: Uuid,
    pub wa_id: String,
    pub chat: String,
    /// `in` (the contact changed it) or `out` (this session did).
    pub direction: String,
    /// The new text (`message.edited`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `everyone` or `me` (`message.deleted`).
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub deleted_for: Option<String>,
    pub at: DateTime<Utc>,
}

/// The data of `presence.update`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceUpdate {
    /// The contact: `+<digits>`, or `<lid>@lid` while only its LID is known.
    pub phone: String,
    /// `available`, `unavailable` (presence), or `composing`, `recording`, `paused` (chat
    /// state: typing, recording audio, neither).
    pub state: String,
    /// When the contact was last online (with `unavailable`, when they share it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<DateTime<Utc>>,
    /// The chat a chat state is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<String>,
    /// A `paused` the gateway inferred: the contact's `composing` or `recording` was not
    /// repeated within 25 seconds, after which WhatsApp's apps stop showing it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expired: bool,
}

/// Which `group.*` event a [`GroupChanged`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupChangeKind {
    Created,
    Participants,
    #[default]
    Updated,
}

/// The data of `group.created`, `group.participants` and `group.updated`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupChanged {
    #[serde(skip)]
    pub kind: GroupChangeKind,
    /// The group: `<id>@g.us`.
    pub group: String,
    /// Who did it: `+<digits>` (or `<lid>@lid`), when WhatsApp says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// `group.participants`: `add`, `remove`, `promote` or `demote` (joining by link is an
    /// `add` by the one who joined; leaving, a `remove` of oneself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// `group.participants`: who was added, removed, promoted or demoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participants: Option<Vec<String>>,
    /// `group.created` and `group.updated` (when it changed): the subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `group.updated`: the new description (`null` when it was removed), when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Option<String>>,
    pub at: DateTime<Utc>,
}

/// The data of `message.dead_lettered`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLettered {
    pub dead_letter_id: Uuid,
    pub wa_id: String,
    pub from: String,
    pub error: String,
    /// Attempts to store it so far.
    pub attempts: i32,
}

/// An event as the API shows it everywhere: WebSocket frames, webhook bodies and
/// `GET …/events`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Event {
    /// Grows by one per event of the tenant: resume a stream with `?since=`.
    pub id: i64,
    /// One of the event types (`session.connected`, `message.received`, …).
    #[serde(rename = "type")]
    pub kind: String,
    pub session_id: Option<Uuid>,
    pub tenant_id: Uuid,
    pub at: DateTime<Utc>,
    /// By type: the message for `message.received`, `{phone, jid}` for `session.connected`, …
    #[schema(value_type = Object)]
    pub data: Value,
}

impl From<&EventRow> for Event {
    fn from(row: &EventRow) -> Event {
        Event {
            id: row.id,
            kind: row.kind.clone(),
            session_id: row.session_id,
            tenant_id: row.tenant_id,
            at: row.at,
            data: row.data.clone(),
        }
    }
}

/// A list of events, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub items: Vec<Event>,
}

/// Where stored events go to be fanned out. Cheap to clone.
#[derive(Clone)]
pub struct EventHub {
    pub notifier: Addr<NotificationActor>,
}

impl EventHub {
    /// Publishes events that are committed (never before: a subscriber that sees an event
    /// must find it, and every event before it, in the store).
    pub fn publish(&self, rows: impl IntoIterator<Item = EventRow>) {
        let events: Vec<Arc<StoredEvent>> = rows.into_iter().map(stored).collect();
        for e in &events {
            crate::metrics::EVENTS_PUBLISHED
                .with_label_values(&[e.kind.as_str()])
                .inc();
        }
        if !events.is_empty() {
            self.notifier.do_send(Publish {
                events,
                relay: true,
            });
        }
    }
}

/// A stored row as the fan-out carries it: serialized once.
pub fn stored(row: EventRow) -> Arc<StoredEvent> {
    // Cannot fail: every field is a number, string, time, UUID or an already-parsed JSON
    // value, and none is a map with non-string keys.
    let json: Arc<str> = serde_json::to_string(&Event::from(&row))
        .unwrap_or_default()
        .into();
    Arc::new(StoredEvent {
        tenant_id: row.tenant_id,
        id: row.id,
        session_id: row.session_id,
        kind: row.kind,
        json,
    })
}

/// The event stream (WebSocket).
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(ws::stream_events);
}
