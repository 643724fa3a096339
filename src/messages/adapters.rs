//! The actors' `MessageStore`, on Postgres: every status change and every received message
//! is stored with its event (and its webhook deliveries) atomically, and the event is
//! published once stored.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use uuid::Uuid;
use wagate_actors::messaging::{
    Content, DeliveryStatus, InboundMessage, MessageChange, OutgoingMessage, QuotedRef, SendBatch,
    chat_key,
};
use wagate_actors::ports::MessageStore;
use wagate_actors::session::SessionSpec;

use super::store::{self, Inbound, MessageRow, Move, StatusMove};
use super::{Message, rate_for};
use crate::configuration::MessageSettings;
use crate::db::DbPool;
use crate::db::group_commit::{GroupCommit, GroupWrite};
use crate::events::EventHub;
use crate::events::EventPayload;

pub struct PgMessageStore {
    db: DbPool,
    hub: EventHub,
    settings: MessageSettings,
    /// Sends' outcomes, written in groups (see [`OutcomeGroup`]).
    outcomes: GroupCommit<OutcomeGroup>,
    /// Received messages, written in groups (see [`ReceivedGroup`]).
    received: GroupCommit<ReceivedGroup>,
}

/// What became of one send.
#[derive(Debug, Clone)]
struct Outcome {
    id: Uuid,
    status: DeliveryStatus,
    error: Option<String>,
}

/// Outcomes of sends written in one statement at the most.
const OUTCOMES_PER_WRITE: usize = 256;

/// Received messages written in one statement at the most.
const RECEIVED_PER_WRITE: usize = 256;

impl PgMessageStore {
    /// Starts the store's group writers on the current runtime.
    pub fn start(db: DbPool, hub: EventHub, settings: MessageSettings) -> Self {
        let outcomes = GroupCommit::start(
            OutcomeGroup {
                db: db.clone(),
                hub: hub.clone(),
            },
            OUTCOMES_PER_WRITE,
        );
        let received = GroupCommit::start(
            ReceivedGroup {
                db: db.clone(),
                hub: hub.clone(),
            },
            RECEIVED_PER_WRITE,
        );
        Self {
            db,
            hub,
            settings,
            outcomes,
            received,
        }
    }
}

/// Writes the outcomes of many sends (of any sessions and tenants) together: one statement
/// for all of them, their events and webhook deliveries, instead of one per message.
struct OutcomeGroup {
    db: DbPool,
    hub: EventHub,
}

impl GroupWrite for OutcomeGroup {
    type Job = Outcome;
    type Answer = ();
    const KIND: &'static str = "send_outcomes";

    /// A message named twice waits for a second round (one statement may move a row once).
    /// Should a round fail after others committed, writing each alone again is harmless:
    /// a move only goes forward, so a repeated one moves nothing and stores no event.
    async fn write_group(&self, outcomes: &[Outcome]) -> anyhow::Result<Vec<()>> {
        let mut pending: Vec<&Outcome> = outcomes.iter().collect();
        while !pending.is_empty() {
            let mut seen = std::collections::HashSet::new();
            let (round, later): (Vec<_>, Vec<_>) =
                pending.into_iter().partition(|m| seen.insert(m.id));
            pending = later;
            let moves: Vec<StatusMove> = round
                .iter()
                .map(|m| StatusMove {
                    id: m.id,
                    status: m.status.as_str().to_owned(),
                    error: m.error.clone(),
                })
                .collect();
            let mut conn = self.db.get().await?;
            let events = store::move_statuses(&mut conn, &moves).await?;
            drop(conn);
            for e in &events {
                let status = e.data.get("status").and_then(|s| s.as_str()).unwrap_or("");
                crate::metrics::MESSAGES
                    .with_label_values(&["out", status])
                    .inc();
            }
            self.hub.publish(events);
        }
        Ok(vec![(); outcomes.len()])
    }

    async fn write_one(&self, o: Outcome) -> anyhow::Result<()> {
        move_status(&self.db, &self.hub, Move::One(o.id), o.status, o.error)
            .await
            .map(drop)
    }
}

/// Moves outgoing messages on and stores each move's `message.status` event (with its webhook
/// deliveries) in the same statement; publishes the events once stored. Returns how many
/// moved (a move backwards moves nothing).
pub async fn move_status(
    db: &DbPool,
    hub: &EventHub,
    which: Move,
    status: DeliveryStatus,
    error: Option<String>,
) -> anyhow::Result<usize> {
    let mut conn = db.get().await?;
    let events = store::move_status(&mut conn, &which, status.as_str(), error.as_deref()).await?;
    drop(conn);
    let moved = events.len();
    crate::metrics::MESSAGES
        .with_label_values(&["out", status.as_str()])
        .inc_by(moved as u64);
    hub.publish(events);
    Ok(moved)
}

#[async_trait]
impl MessageStore for PgMessageStore {
    async fn media_bytes(
        &self,
        session: &SessionSpec,
        media_id: Uuid,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let mut conn = self.db.get().await?;
        Ok(crate::media::store::bytes(&mut conn, session.id, media_id).await?)
    }

    async fn queued(&self, session: &SessionSpec, limit: usize) -> anyhow::Result<SendBatch> {
        let mut conn = self.db.get().await?;
        let rows = store::queued_for_session(&mut conn, session.id, limit as i64).await?;
        let own = store::tenant_send_rate(&mut conn, session.tenant_id).await?;
        let rate_per_minute = rate_for(&self.settings, session.tier, own);
        let messages = rows
            .into_iter()
            .filter_map(|r| match outgoing(&r) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::error!(message = %r.id, error = %e, "a queued message cannot be read");
                    None
                }
            })
            .collect();
        Ok(SendBatch {
            messages,
            rate_per_minute,
        })
    }

    async fn set_status(
        &self,
        // The id is the message's own, taken from this session's queue.
        _session: &SessionSpec,
        id: Uuid,
        status: DeliveryStatus,
        error: Option<String>,
    ) -> anyhow::Result<()> {
        self.outcomes.submit(Outcome { id, status, error }).await
    }

    async fn receipt(
        &self,
        session: &SessionSpec,
        wa_ids: &[String],
        status: DeliveryStatus,
        error: Option<String>,
    ) -> anyhow::Result<()> {
        let which = Move::ByWaIds(session.id, wa_ids.to_vec());
        move_status(&self.db, &self.hub, which, status, error).await?;
        Ok(())
    }

    async fn inbound(
        &self,
        session: &SessionSpec,
        message: InboundMessage,
    ) -> anyhow::Result<bool> {
        let from_me = message.from_me;
        let stored = match prepare_inbound(session, message) {
            // The operator's own phone: rare, and not a contact's message (no unread count,
            // no answer from the bot): stored alone as an outgoing message.
            Ok(m) if from_me => store_own_phone(&self.db, &self.hub, m).await,
            Ok(m) => self.received.submit(m).await,
            Err(e) => Err(e),
        };
        if stored.is_err() {
            crate::metrics::INBOUND_STORE_FAILURES.inc();
        }
        stored
    }

    async fn changed(&self, session: &SessionSpec, change: MessageChange) -> anyhow::Result<()> {
        let chat = chat_key(&change.from);
        let text = change
            .edit
            .as_ref()
            .map(|c| c.text().unwrap_or_default().to_owned());
        let mut conn = self.db.get().await?;
        let applied = store::apply_change(
            &mut conn,
            &store::Change {
                change_id: &change.wa_id,
                session_id: session.id,
                tenant_id: session.tenant_id,
                wa_id: &change.target_wa_id,
                direction: "in",
                chat: &chat,
                at: DateTime::<Utc>::from(change.at),
                edit: text.as_deref(),
                deleted_for: change.edit.is_none().then_some("everyone"),
            },
        )
        .await?;
        match applied {
            Some((_, event)) => self.hub.publish([event]),
            None => {
                tracing::debug!(session = %session.id, target = change.target_wa_id, "a change to a message this session does not hold (or applied before)")
            }
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        session: &SessionSpec,
        message: &InboundMessage,
        error: &str,
        attempts: u32,
    ) -> anyhow::Result<()> {
        let mut conn = self.db.get().await?;
        let event = store::insert_dead_letter(&mut conn, session, message, error, attempts).await?;
        crate::metrics::INBOUND_DEAD_LETTERS.inc();
        self.hub.publish([event]);
        Ok(())
    }
}

/// Replaces U+0000, which Postgres keeps in neither `text` nor `jsonb`, with U+FFFD; sets
/// `replaced` when there was one.
pub fn without_nul(text: String, replaced: &mut bool) -> String {
    if text.contains('\0') {
        *replaced = true;
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// [`without_nul`] on every string (and key) of a JSON value.
fn json_without_nul(value: &mut serde_json::Value, replaced: &mut bool) {
    match value {
        serde_json::Value::String(s) if s.contains('\0') => {
            *s = without_nul(std::mem::take(s), replaced);
        }
        serde_json::Value::Array(items) => {
            items.iter_mut().for_each(|v| json_without_nul(v, replaced));
        }
        serde_json::Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, v)| (without_nul(k, replaced), v))
                    .collect();
            }
            map.values_mut().for_each(|v| json_without_nul(v, replaced));
        }
        _ => {}
    }
}

/// A received message made ready to store: NULs replaced, the row and its event data built.
fn prepare_inbound(session: &SessionSpec, message: InboundMessage) -> anyhow::Result<Inbound> {
    // Stored in arrival order: the sender's clock has only whole seconds (kept as
    // `content.sent_at`) and may be wrong.
    let created_at = Utc::now();
    let sent_at: DateTime<Utc> = DateTime::<Utc>::from(message.sent_at);
    // A contact's text may hold U+0000, which Postgres refuses: what can be kept is kept,
    // with the NUL replaced and the content saying so (`nul_replaced`).
    let mut replaced = false;
    let mut body = serde_json::to_value(&message.content)?;
    json_without_nul(&mut body, &mut replaced);
    let text = message
        .content
        .text()
        .map(|t| without_nul(t.to_owned(), &mut replaced));
    let wa_id = without_nul(message.wa_id, &mut replaced);
    let sender = without_nul(chat_key(&message.from), &mut replaced);
    // A group message lives in the group's chat; its sender is kept beside it (`_from`), and
    // its push name is the participant's, not the chat's name.
    let (chat, group_sender) = match message.group {
        Some(group) => (without_nul(group, &mut replaced), Some(sender)),
        None => (sender, None),
    };
    let quoted_id = message.quoted_wa_id.map(|q| without_nul(q, &mut replaced));
    let push_name = message
        .push_name
        .filter(|_| group_sender.is_none())
        .map(|n| without_nul(n, &mut replaced));
    if let Some(o) = body.as_object_mut() {
        o.insert("sent_at".into(), serde_json::json!(sent_at));
        if let Some(from) = group_sender {
            o.insert("_from".into(), serde_json::json!(from));
        }
        if replaced {
            o.insert("nul_replaced".into(), serde_json::json!(true));
        }
    }
    let from_me = message.from_me;
    let row = MessageRow {
        id: Uuid::now_v7(),
        tenant_id: session.tenant_id,
        session_id: session.id,
        wa_id,
        direction: if from_me { "out" } else { "in" }.into(),
        chat,
        own_phone: message.to.unwrap_or_default(),
        kind: message.content.kind().into(),
        text,
        body,
        quoted_id,
        status: if from_me { "sent" } else { "received" }.into(),
        error: None,
        idempotency_key: None,
        created_at,
        updated_at: created_at,
    };
    let message = Box::new(Message::try_from(&row)?);
    let (_, event) = if from_me {
        EventPayload::MessageFromPhone(message)
    } else {
        EventPayload::MessageReceived(message)
    }
    .to_stored()?;
    Ok(Inbound {
        row,
        push_name,
        event,
    })
}

/// Stores received messages (of any sessions and tenants) together: one statement for all of
/// them, their chats, events and webhook rows, before any of them is acked. Answers whether
/// each was new.
struct ReceivedGroup {
    db: DbPool,
    hub: EventHub,
}

impl GroupWrite for ReceivedGroup {
    type Job = Inbound;
    type Answer = bool;
    const KIND: &'static str = "received_messages";

    async fn write_group(&self, messages: &[Inbound]) -> anyhow::Result<Vec<bool>> {
        let mut conn = self.db.get().await?;
        let events = store::insert_inbound_batch(&mut conn, messages).await?;
        drop(conn);
        let new: std::collections::HashSet<Uuid> = events
            .iter()
            .filter_map(|e| e.data.get("id")?.as_str()?.parse().ok())
            .collect();
        crate::metrics::MESSAGES
            .with_label_values(&["in", "received"])
            .inc_by(events.len() as u64);
        self.hub.publish(events);
        Ok(messages.iter().map(|m| new.contains(&m.row.id)).collect())
    }

    async fn write_one(&self, m: Inbound) -> anyhow::Result<bool> {
        store_inbound_alone(&self.db, &self.hub, m).await
    }
}

/// A message the account's own phone sent, kept as the chat's outgoing message with its
/// `message.from_phone` event (the AI pipeline sees it as the operator's).
async fn store_own_phone(db: &DbPool, hub: &EventHub, m: Inbound) -> anyhow::Result<bool> {
    let mut conn = db.get().await?;
    let Inbound { row, event, .. } = m;
    let (tenant, session_id) = (row.tenant_id, row.session_id);
    let event = conn
        .transaction(async move |conn| {
            if store::insert_message_with_chat(conn, &row, None, None)
                .await?
                .is_none()
            {
                return Ok::<_, diesel::result::Error>(None);
            }
            crate::events::store::insert_stored(
                conn,
                tenant,
                Some(session_id),
                crate::events::MESSAGE_FROM_PHONE,
                event,
            )
            .await
            .map(Some)
        })
        .await?;
    let new = event.is_some();
    hub.publish(event);
    Ok(new)
}

/// One received message in a transaction of its own.
async fn store_inbound_alone(db: &DbPool, hub: &EventHub, m: Inbound) -> anyhow::Result<bool> {
    let mut conn = db.get().await?;
    let Inbound {
        row,
        push_name,
        event,
    } = m;
    let (tenant, session_id) = (row.tenant_id, row.session_id);
    let event = conn
        .transaction(async move |conn| {
            if store::insert_message_with_chat(conn, &row, push_name.as_deref(), None)
                .await?
                .is_none()
            {
                return Ok::<_, diesel::result::Error>(None);
            }
            let event = crate::events::store::insert_stored(
                conn,
                tenant,
                Some(session_id),
                crate::events::MESSAGE_RECEIVED,
                event,
            )
            .await?;
            crate::ai::store::pending_for_event(conn, &event).await?;
            Ok(Some(event))
        })
        .await?;
    let new = event.is_some();
    if new {
        crate::metrics::MESSAGES
            .with_label_values(&["in", "received"])
            .inc();
    }
    hub.publish(event);
    Ok(new)
}

/// A stored outgoing message as the session actor sends it.
pub fn outgoing(r: &MessageRow) -> anyhow::Result<OutgoingMessage> {
    let content: Content = serde_json::from_value(r.body.clone())?;
    let quoted: Option<QuotedRef> = match r.body.get("quoted") {
        Some(q) if !q.is_null() => Some(serde_json::from_value(q.clone())?),
        _ => None,
    };
    Ok(OutgoingMessage {
        id: r.id,
        wa_id: r.wa_id.clone(),
        to: r.chat.trim_start_matches('+').to_owned(),
        content,
        quoted,
    })
}
