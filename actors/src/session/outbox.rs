//! The session's send queue. Postgres holds it (`queued` rows); the actor takes a batch at a
//! time, sends one message after another at the session's pace, and stores what became of
//! each before it takes the next, so nothing is sent twice by this actor and a crash at any
//! point re-sends at most the one message in flight, under the same WhatsApp id.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use whatsapp_rust::Client;
use whatsapp_rust::client::ClientError;
use whatsapp_rust::send::{SendError, SendOptions};

use whatsapp_rust::upload::{UploadOptions, UploadResponse};

use super::SessionSpec;
use super::{SessionActor, SessionStatus};
use crate::messaging::{Content, DeliveryStatus, MediaKind, OutgoingMessage};
use crate::ports::MessageStore;

/// Queued messages taken from the store at a time.
pub const OUTBOX_BATCH: usize = 100;

/// After a send found the connection gone, the next try waits at least this long.
const NOT_CONNECTED_RETRY: Duration = Duration::from_secs(1);

/// Recipients remembered as checked (on WhatsApp or not) per session before the memory is
/// reset.
const RECIPIENTS_REMEMBERED: usize = 4096;

/// How long a read of the queue that found it all (fewer than a batch) is trusted to be the
/// whole queue: messages accepted on this node are appended to it directly, and an empty
/// queue is not read again until this has passed (or a wake-up without a message arrives).
/// Bounds how long a change of the tenant's send rate takes to apply.
const QUEUE_TRUSTED_FOR: Duration = Duration::from_secs(10);

/// Spread of the pause between two sends (±10 %), so a paced session does not tick like a
/// machine.
const PACE_SPREAD: f64 = 0.1;

#[derive(Default)]
pub(super) struct Outbox {
    queue: VecDeque<OutgoingMessage>,
    fetching: bool,
    /// Messages were queued while a read of the queue was in flight (it may have missed
    /// them): read again when it returns.
    refetch: bool,
    /// When the last read found every queued message (fewer than a batch), and nothing since
    /// suggested otherwise: the in-memory queue is then the whole queue.
    complete_since: Option<Instant>,
    sending: bool,
    /// A later pump is already scheduled (the pace holds the next send back).
    pump_scheduled: bool,
    next_send_at: Option<Instant>,
    rate_per_minute: u32,
    /// Recipients already checked with WhatsApp: `false` is not on WhatsApp.
    recipients: HashMap<String, bool>,
}

impl Outbox {
    fn pause(&self) -> Duration {
        if self.rate_per_minute == 0 {
            return Duration::ZERO;
        }
        let base = 60.0 / f64::from(self.rate_per_minute);
        let spread = 1.0 + PACE_SPREAD * (fastrand::f64() * 2.0 - 1.0);
        Duration::from_secs_f64(base * spread)
    }

    /// Forgets what was taken but not sent (the connection ended): the store still has it
    /// queued, and the next pump takes it again in order.
    pub(super) fn reset(&mut self) {
        if !self.sending {
            self.queue.clear();
        }
        self.complete_since = None;
    }

    /// Whether the in-memory queue is known to hold every queued message.
    fn complete(&self) -> bool {
        self.complete_since
            .is_some_and(|at| at.elapsed() < QUEUE_TRUSTED_FOR)
    }

    /// A message was queued. One accepted on this node (`Some`) joins the in-memory queue
    /// when that queue is the whole queue and holds less than a batch, saving a read;
    /// otherwise the next read finds it, so memory stays bounded by a batch whatever the
    /// backlog.
    pub(super) fn queued(&mut self, accepted: Option<OutgoingMessage>) {
        match accepted {
            Some(m) if self.complete() && !self.fetching && self.queue.len() < OUTBOX_BATCH => {
                if !self.queue.iter().any(|q| q.id == m.id) {
                    self.queue.push_back(m);
                }
            }
            // From another node, the sweep, or beyond a batch: the store has messages this
            // queue lacks.
            _ => self.complete_since = None,
        }
    }
}

/// One send finished (its outcome is stored).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct SendDone {
    generation: u64,
    to: String,
    attempt: Attempt,
    on_whatsapp: Option<bool>,
}

impl Handler<SendDone> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: SendDone, ctx: &mut Self::Context) {
        let outbox = &mut self.outbox;
        outbox.sending = false;
        if let Some(known) = msg.on_whatsapp {
            if outbox.recipients.len() >= RECIPIENTS_REMEMBERED {
                outbox.recipients.clear();
            }
            outbox.recipients.insert(msg.to, known);
        }
        match msg.attempt {
            Attempt::NotConnected => {
                // Stays queued in the store; the next connection takes it again (and until
                // the state catches up, try no faster than this).
                outbox.queue.clear();
                outbox.complete_since = None;
                outbox.next_send_at = Some(Instant::now() + NOT_CONNECTED_RETRY);
            }
            Attempt::Sent | Attempt::Failed(_) => {
                outbox.next_send_at = Some(Instant::now() + outbox.pause());
            }
        }
        if self.generation == msg.generation {
            self.pump_outbox(ctx);
        }
    }
}

/// How one send attempt ended.
enum Attempt {
    Sent,
    Failed(String),
    /// The connection is gone: the message stays queued for the next connection.
    NotConnected,
}

impl SessionActor {
    /// Sends the next queued message if the session is connected and its pace allows.
    pub(super) fn pump_outbox(&mut self, ctx: &mut Context<Self>) {
        if self.record.status != SessionStatus::Connected || !self.lease {
            return;
        }
        let Some(client) = self.client.clone() else {
            return;
        };
        let outbox = &mut self.outbox;
        if outbox.fetching {
            outbox.refetch = true;
            return;
        }
        if outbox.sending {
            return;
        }
        if outbox.queue.is_empty() {
            if !outbox.complete() {
                self.fetch_outbox(ctx);
            }
            return;
        }
        let now = Instant::now();
        if let Some(at) = outbox.next_send_at.filter(|at| *at > now) {
            if !outbox.pump_scheduled {
                outbox.pump_scheduled = true;
                ctx.run_later(at - now, |act, ctx| {
                    act.outbox.pump_scheduled = false;
                    act.pump_outbox(ctx);
                });
            }
            return;
        }
        let Some(message) = outbox.queue.pop_front() else {
            return;
        };
        outbox.sending = true;
        let known = outbox.recipients.get(&message.to).copied();
        let store = self.ports.messages.clone();
        let slots = self.ports.send_slots.clone();
        let spec = self.spec.clone();
        let generation = self.generation;
        let addr = ctx.address();
        // A task of its own, not a future of this actor: the actor's ordered steps pause its
        // futures, and a paused future holding a transaction (and its row locks) would block
        // the very step that waits for it.
        actix::spawn(async move {
            // Held until the outcome is stored: a slot is one whole send.
            let _slot = slots.acquire(spec.tier).await;
            let (attempt, on_whatsapp) = send_one(&client, &*store, &spec, &message, known).await;
            let stored = match &attempt {
                Attempt::Sent => {
                    store
                        .set_status(&spec, message.id, DeliveryStatus::Sent, None)
                        .await
                }
                Attempt::Failed(reason) => {
                    store
                        .set_status(
                            &spec,
                            message.id,
                            DeliveryStatus::Failed,
                            Some(reason.clone()),
                        )
                        .await
                }
                Attempt::NotConnected => Ok(()),
            };
            if let Err(e) = stored {
                tracing::warn!(session = %spec.id, message = %message.id, error = %e, "storing a send's outcome");
            }
            addr.do_send(SendDone {
                generation,
                to: message.to,
                attempt,
                on_whatsapp,
            });
        });
    }

    fn fetch_outbox(&mut self, ctx: &mut Context<Self>) {
        self.outbox.fetching = true;
        let store = self.ports.messages.clone();
        let spec = self.spec.clone();
        ctx.spawn(
            async move { store.queued(&spec, OUTBOX_BATCH).await }
                .into_actor(self)
                .map(|res, act, ctx| {
                    act.outbox.fetching = false;
                    let refetch = std::mem::take(&mut act.outbox.refetch);
                    match res {
                        Ok(batch) => {
                            act.outbox.rate_per_minute = batch.rate_per_minute;
                            act.outbox.complete_since = (batch.messages.len() < OUTBOX_BATCH
                                && !refetch)
                                .then(Instant::now);
                            if batch.messages.is_empty() && !refetch {
                                return;
                            }
                            act.outbox.queue.extend(batch.messages);
                            act.pump_outbox(ctx);
                        }
                        Err(e) => {
                            tracing::warn!(session = %act.spec.id, error = %e, "reading the send queue");
                        }
                    }
                }),
        );
    }
}

/// Puts a stored upload on WhatsApp's media servers (encrypted with a fresh key). A failure
/// while the connection is up is final: WhatsApp refused the file.
async fn upload(
    client: &Arc<Client>,
    store: &dyn MessageStore,
    spec: &SessionSpec,
    media_id: uuid::Uuid,
    kind: MediaKind,
) -> Result<UploadResponse, Attempt> {
    let bytes = match store.media_bytes(spec, media_id).await {
        Ok(Some(b)) => b,
        Ok(None) => return Err(Attempt::Failed("media_missing".into())),
        // The store is unreachable: the message stays queued for the next try.
        Err(e) => {
            tracing::warn!(session = %spec.id, error = %e, "reading media to send");
            return Err(Attempt::NotConnected);
        }
    };
    match client
        .upload(bytes, kind.media_type(), UploadOptions::new())
        .await
    {
        Ok(up) => Ok(up),
        Err(e) if !client.is_connected() => {
            tracing::debug!(error = %e, "upload failed while disconnected; keeping it queued");
            Err(Attempt::NotConnected)
        }
        Err(e) => {
            tracing::info!(session = %spec.id, error = %e, "WhatsApp refused a media upload");
            Err(Attempt::Failed("media_rejected".into()))
        }
    }
}

/// One attempt; also returns what was learnt about the recipient being on WhatsApp.
async fn send_one(
    client: &Arc<Client>,
    store: &dyn MessageStore,
    spec: &SessionSpec,
    message: &OutgoingMessage,
    known: Option<bool>,
) -> (Attempt, Option<bool>) {
    let to = message.recipient();
    let mut learnt = None;
    if known.is_none() {
        // Ask once per recipient: a number that is not on WhatsApp fails with a clear
        // reason instead of a silent send into the void. A failed query is no verdict.
        match client
            .contacts()
            .is_on_whatsapp(std::slice::from_ref(&to))
            .await
        {
            Ok(results) => {
                let registered = results.iter().any(|r| r.is_registered);
                learnt = Some(registered);
            }
            Err(e) => tracing::debug!(error = %e, "checking a recipient; sending anyway"),
        }
    }
    if matches!(known.or(learnt), Some(false)) {
        return (Attempt::Failed("recipient_not_on_whatsapp".into()), learnt);
    }
    let own = client.pn().map(|j| j.user.to_string());
    let wa = match &message.content {
        Content::Media {
            kind,
            media_id: Some(media_id),
            ..
        } => match upload(client, store, spec, *media_id, *kind).await {
            Ok(up) => match message.media_message(up, own.as_deref()) {
                Some(wa) => wa,
                None => return (Attempt::Failed("media_rejected".into()), learnt),
            },
            Err(attempt) => return (attempt, learnt),
        },
        _ => message.to_wa(own.as_deref()),
    };
    let options = SendOptions::default().with_message_id(message.wa_id.clone());
    let attempt = match client.send_message_with_options(to, wa, options).await {
        Ok(_) => Attempt::Sent,
        Err(SendError::Client(ClientError::NotConnected | ClientError::Socket(_)))
        | Err(SendError::NotLoggedIn) => Attempt::NotConnected,
        Err(e) if !client.is_connected() => {
            tracing::debug!(error = %e, "send failed while disconnected; keeping it queued");
            Attempt::NotConnected
        }
        Err(e) => Attempt::Failed(e.to_string()),
    };
    (attempt, learnt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: usize) -> OutgoingMessage {
        OutgoingMessage {
            id: uuid::Uuid::new_v4(),
            wa_id: format!("3EB0{n:020}"),
            to: "4915112345678".into(),
            content: Content::Text {
                text: format!("m{n}"),
            },
            quoted: None,
        }
    }

    #[test]
    fn accepted_messages_join_a_known_queue_only_up_to_a_batch() {
        let mut outbox = Outbox {
            complete_since: Some(Instant::now()),
            ..Outbox::default()
        };
        for n in 0..OUTBOX_BATCH {
            outbox.queued(Some(message(n)));
        }
        assert_eq!(outbox.queue.len(), OUTBOX_BATCH);
        assert!(outbox.complete());
        // One more stays in the store for the next read: memory holds a batch at most.
        outbox.queued(Some(message(OUTBOX_BATCH)));
        assert_eq!(outbox.queue.len(), OUTBOX_BATCH);
        assert!(!outbox.complete(), "the queue no longer holds everything");
        // An unknown queue takes nothing in; a wake-up from elsewhere forgets it was known.
        let mut unknown = Outbox::default();
        unknown.queued(Some(message(0)));
        assert!(unknown.queue.is_empty());
        let mut known = Outbox {
            complete_since: Some(Instant::now()),
            ..Outbox::default()
        };
        known.queued(None);
        assert!(!known.complete());
    }
}
