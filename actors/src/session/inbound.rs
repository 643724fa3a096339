//! What the network tells a session about messages: contacts' messages, their receipts for
//! ours, and WhatsApp's refusals. Each is handed to the message store, which keeps it once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use wacore::types::events::{InboundMessage as WaInbound, MessageBatch, Receipt, ServerAck};
use wacore::types::presence::ReceiptType;
use whatsapp_rust::types::durability_hook::InboundDurabilityHook;
use whatsapp_rust::wacore_binary::JidExt as _;
use whatsapp_rust::{Client, Jid};

use super::{SessionActor, SessionSpec};
use crate::messaging::{DeliveryStatus, InboundMessage, MessageChange, read_change, read_content};
use crate::ports::MessageStore;

/// Who sent a message, as its chat is keyed: the phone number's digits (a LID sender is
/// read through its phone-number twin), or `<lid>@lid` for a contact known only by its LID
/// (one who hides their number).
fn phone_of(jid: &Jid, alt: Option<&Jid>) -> String {
    match alt {
        Some(alt) if jid.is_lid() && alt.is_pn() => alt.user.to_string(),
        _ if jid.is_lid() => format!("{}@lid", jid.user),
        _ => jid.user.to_string(),
    }
}

/// What a contact's message in a batch is to the store: a message, or a change (edit,
/// delete for everyone) to one it sent before.
#[derive(Debug, Clone)]
enum Received {
    Message(InboundMessage),
    Change(MessageChange),
}

impl Received {
    fn sender_mut(&mut self) -> &mut String {
        match self {
            Received::Message(m) => &mut m.from,
            Received::Change(c) => &mut c.from,
        }
    }
}

/// A contact's messages in a batch, as the store takes them. A group message is kept in the
/// group's chat, with its sender; edits and deletes in groups are not applied yet. What the
/// account's own phone sent to a contact (WhatsApp syncs it to every linked device, with a
/// `recipient`) is kept as the operator's message; other messages of our own are not.
fn received<'a>(
    batch: impl IntoIterator<Item = &'a WaInbound>,
    own: Option<String>,
) -> Vec<Received> {
    batch
        .into_iter()
        .filter(|m| !m.info.source.is_from_me || by_own_phone(m))
        .filter(|m| !(m.info.source.is_group && read_change(&m.message).is_some()))
        .map(|m| {
            let source = &m.info.source;
            let from_me = source.is_from_me;
            let from = if from_me {
                phone_of(&source.chat, None)
            } else {
                phone_of(&source.sender, source.sender_alt.as_ref())
            };
            // A status post or a broadcast list's message lives in its own chat
            // (`status@broadcast`, `<id>@broadcast`), never in the sender's 1:1 chat: nothing
            // that answers a contact's chat (agents, triggers) wakes on it.
            let shared = source.is_group
                || source.chat.is_status_broadcast()
                || source.chat.is_broadcast_list();
            let group = shared.then(|| source.chat.to_string());
            if let Some((target_wa_id, edit)) = read_change(&m.message) {
                return Received::Change(MessageChange {
                    wa_id: m.info.id.to_string(),
                    target_wa_id,
                    from,
                    edit,
                    at: SystemTime::from(m.info.timestamp),
                });
            }
            let (content, quoted_wa_id) = read_content(&m.message);
            Received::Message(InboundMessage {
                wa_id: m.info.id.to_string(),
                from,
                group,
                to: own.clone(),
                push_name: Some(m.info.push_name.clone()).filter(|n| !n.is_empty()),
                content,
                quoted_wa_id,
                sent_at: SystemTime::from(m.info.timestamp),
                from_me,
            })
        })
        .collect()
}

/// A message the account's own phone wrote to a contact (1:1, not an edit or delete).
fn by_own_phone(m: &WaInbound) -> bool {
    let s = &m.info.source;
    s.is_from_me && !s.is_group && s.recipient.is_some() && read_change(&m.message).is_none()
}

/// A sender known only by LID in the message may be known by number to the client (a LID
/// mapping it learned before): its chat is the number's then.
async fn resolve_lid_senders(client: Option<&Client>, messages: &mut [Received]) {
    let Some(client) = client else { return };
    for m in messages.iter_mut() {
        let from = m.sender_mut();
        if let Some(lid) = from.strip_suffix("@lid")
            && let Ok(Some(entry)) = client.get_lid_pn_entry(&Jid::lid(lid)).await
        {
            *from = entry.phone_number.to_string();
        }
    }
}

/// Keeps a received message or change (see [`keep_inbound`], [`keep_change`]).
async fn keep(store: &dyn MessageStore, spec: &SessionSpec, r: Received) -> anyhow::Result<()> {
    match r {
        Received::Message(m) => keep_inbound(store, spec, m).await,
        Received::Change(c) => keep_change(store, spec, c).await,
    }
}

/// Stores a contact's edit or delete, retrying a failure; `Err` keeps it unacked, so
/// WhatsApp delivers it again at the next login.
async fn keep_change(
    store: &dyn MessageStore,
    spec: &SessionSpec,
    change: MessageChange,
) -> anyhow::Result<()> {
    let mut last_error = None;
    for attempt in 0..INBOUND_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(INBOUND_RETRY_PAUSES[(attempt as usize - 1).min(1)]).await;
        }
        match store.changed(spec, change.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("storing a message change")))
}

/// Whether whatsapp-rust hands this message to the durability hook before acking it. PDO
/// recoveries and newsletter posts are acked on their own paths and only arrive as events.
fn committed_by_hook(m: &WaInbound) -> bool {
    m.info.unavailable_request_id.is_none() && !m.info.source.chat.is_newsletter()
}

/// Stores a contact's messages before whatsapp-rust acks them to WhatsApp: a message is
/// only gone from WhatsApp's offline queue once it is in Postgres. If the store fails or the
/// process dies first, WhatsApp redelivers it at the next login and the client replays it
/// from its pending-inbound buffer (kept in the key store, so the Signal ratchet having
/// moved on does not lose it). The store keeps a WhatsApp id once, so a replay is a no-op.
pub struct DurableInbound {
    pub store: Arc<dyn MessageStore>,
    pub spec: SessionSpec,
}

#[async_trait::async_trait]
impl InboundDurabilityHook for DurableInbound {
    async fn on_messages(&self, client: Arc<Client>, batch: &[WaInbound]) -> anyhow::Result<()> {
        let own = client.pn().map(|pn| format!("+{}", pn.user));
        // In batch order, each committed before the next: a contact's messages keep their
        // order in the history and in the event stream. One that cannot be kept does not stop
        // the others: they are stored, and the batch stays unacked only for its sake.
        let mut withheld = None;
        let mut messages = received(batch, own);
        resolve_lid_senders(Some(&client), &mut messages).await;
        for message in messages {
            if let Err(e) = keep(self.store.as_ref(), &self.spec, message).await {
                withheld = Some(e);
            }
        }
        withheld.map_or(Ok(()), Err)
    }
}

/// How often a received message is tried before it is dead-lettered, and the pause before
/// each retry.
pub const INBOUND_ATTEMPTS: u32 = 3;
const INBOUND_RETRY_PAUSES: [Duration; 2] =
    [Duration::from_millis(100), Duration::from_millis(500)];

/// Stores a received message, retrying a failure; after [`INBOUND_ATTEMPTS`] it is kept as
/// a dead letter so it can be acked. `Err` only when even that failed (the database is
/// down, say): then nothing was kept and the message must stay unacked.
pub async fn keep_inbound(
    store: &dyn MessageStore,
    spec: &SessionSpec,
    message: InboundMessage,
) -> anyhow::Result<()> {
    let mut last_error = None;
    for attempt in 0..INBOUND_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(INBOUND_RETRY_PAUSES[(attempt as usize - 1).min(1)]).await;
        }
        match store.inbound(spec, message.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                tracing::warn!(session = %spec.id, wa_id = message.wa_id, attempt = attempt + 1, error = %e, "storing a received message");
                last_error = Some(e);
            }
        }
    }
    let error = last_error.map(|e| format!("{e:#}")).unwrap_or_default();
    store
        .dead_letter(spec, &message, &error, INBOUND_ATTEMPTS)
        .await
        .map_err(|e| e.context(format!("dead-lettering after: {error}")))?;
    tracing::error!(session = %spec.id, wa_id = message.wa_id, error, "a received message could not be stored: dead-lettered and acked");
    Ok(())
}

impl SessionActor {
    /// The messages of a batch the durability hook did not commit (see
    /// [`committed_by_hook`]); everything else is already stored.
    pub(super) fn store_inbound(&mut self, ctx: &mut Context<Self>, batch: &MessageBatch) {
        let mut messages = received(
            batch.iter().filter(|m| !committed_by_hook(m)),
            self.record.phone.clone(),
        );
        if messages.is_empty() {
            return;
        }
        let store = self.ports.messages.clone();
        let spec = self.spec.clone();
        let client = self.client.clone();
        // In order, before the next event: a contact's messages keep their order in the
        // history and in the event stream.
        self.step(ctx, async move {
            resolve_lid_senders(client.as_deref(), &mut messages).await;
            for message in messages {
                let wa_id = match &message {
                    Received::Message(m) => m.wa_id.clone(),
                    Received::Change(c) => c.wa_id.clone(),
                };
                if let Err(e) = keep(store.as_ref(), &spec, message).await {
                    tracing::warn!(session = %spec.id, wa_id, error = %e, "a received message is lost");
                }
            }
        });
    }

    pub(super) fn store_receipt(&mut self, receipt: &Receipt) {
        if receipt.source.is_from_me {
            return;
        }
        let status = match receipt.r#type {
            ReceiptType::Delivered => DeliveryStatus::Delivered,
            ReceiptType::Read | ReceiptType::Played => DeliveryStatus::Read,
            _ => return,
        };
        let ids: Vec<String> = receipt.message_ids.iter().map(|i| i.to_string()).collect();
        let store = self.ports.messages.clone();
        let spec = self.spec.clone();
        // A task of its own (see `pump_send_queue`): never paused while it holds a transaction.
        actix::spawn(async move {
            if let Err(e) = store.receipt(&spec, &ids, status, None).await {
                tracing::warn!(session = %spec.id, error = %e, "storing a receipt");
            }
        });
    }

    /// WhatsApp refused a message we sent (a nack): it failed, with the code as reason.
    pub(super) fn store_nack(&mut self, ack: &ServerAck) {
        let (Some("message"), Some(code)) = (ack.class.as_deref(), ack.error.as_deref()) else {
            return;
        };
        let ids = vec![ack.id.clone()];
        let reason = match code {
            // The recipient takes first messages only from numbers it trusts; it must write
            // first (its token then comes with its message, and sends to it go through).
            "463" => "rejected by WhatsApp (error 463): the recipient accepts messages only \
                      from numbers it has written to; it must write first"
                .to_owned(),
            _ => format!("rejected by WhatsApp (error {code})"),
        };
        let store = self.ports.messages.clone();
        let spec = self.spec.clone();
        actix::spawn(async move {
            if let Err(e) = store
                .receipt(&spec, &ids, DeliveryStatus::Failed, Some(reason))
                .await
            {
                tracing::warn!(session = %spec.id, error = %e, "storing a nack");
            }
        });
    }
}
