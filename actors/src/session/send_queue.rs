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
use whatsapp_rust::wacore_binary::JidExt as _;

use whatsapp_rust::upload::{UploadOptions, UploadResponse};

use super::SessionSpec;
use super::{SessionActor, SessionStatus};
use crate::messaging::{Content, DeliveryStatus, MediaKind, OutgoingMessage};
use crate::ports::MessageStore;

/// Queued messages taken from the store at a time.
pub const SEND_BATCH: usize = 100;

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
pub(super) struct SendQueue {
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

impl SendQueue {
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
            Some(m) if self.complete() && !self.fetching && self.queue.len() < SEND_BATCH => {
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
        let send_queue = &mut self.send_queue;
        send_queue.sending = false;
        if let Some(known) = msg.on_whatsapp {
            if send_queue.recipients.len() >= RECIPIENTS_REMEMBERED {
                send_queue.recipients.clear();
            }
            send_queue.recipients.insert(msg.to, known);
        }
        match msg.attempt {
            Attempt::NotConnected => {
                // Stays queued in the store; the next connection takes it again (and until
                // the state catches up, try no faster than this).
                send_queue.queue.clear();
                send_queue.complete_since = None;
                send_queue.next_send_at = Some(Instant::now() + NOT_CONNECTED_RETRY);
            }
            Attempt::Sent | Attempt::Failed(_) => {
                send_queue.next_send_at = Some(Instant::now() + send_queue.pause());
            }
        }
        if self.generation == msg.generation {
            self.pump_send_queue(ctx);
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
    pub(super) fn pump_send_queue(&mut self, ctx: &mut Context<Self>) {
        if self.record.status != SessionStatus::Connected || !self.lease {
            return;
        }
        let Some(client) = self.client.clone() else {
            return;
        };
        let send_queue = &mut self.send_queue;
        if send_queue.fetching {
            send_queue.refetch = true;
            return;
        }
        if send_queue.sending {
            return;
        }
        if send_queue.queue.is_empty() {
            if !send_queue.complete() {
                self.fetch_send_queue(ctx);
            }
            return;
        }
        let now = Instant::now();
        if let Some(at) = send_queue.next_send_at.filter(|at| *at > now) {
            if !send_queue.pump_scheduled {
                send_queue.pump_scheduled = true;
                ctx.run_later(at - now, |act, ctx| {
                    act.send_queue.pump_scheduled = false;
                    act.pump_send_queue(ctx);
                });
            }
            return;
        }
        let Some(message) = send_queue.queue.pop_front() else {
            return;
        };
        send_queue.sending = true;
        let known = send_queue.recipients.get(&message.to).copied();
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

    fn fetch_send_queue(&mut self, ctx: &mut Context<Self>) {
        self.send_queue.fetching = true;
        let store = self.ports.messages.clone();
        let spec = self.spec.clone();
        ctx.spawn(
            async move { store.queued(&spec, SEND_BATCH).await }
                .into_actor(self)
                .map(|res, act, ctx| {
                    act.send_queue.fetching = false;
                    let refetch = std::mem::take(&mut act.send_queue.refetch);
                    match res {
                        Ok(batch) => {
                            act.send_queue.rate_per_minute = batch.rate_per_minute;
                            act.send_queue.complete_since = (batch.messages.len() < SEND_BATCH
                                && !refetch)
                                .then(Instant::now);
                            if batch.messages.is_empty() && !refetch {
                                return;
                            }
                            act.send_queue.queue.extend(batch.messages);
                            act.pump_send_queue(ctx);
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
    // A group is not a number to check: WhatsApp refuses a send to one we are not in.
    if known.is_none() && !to.is_group() {
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
        let mut send_queue = SendQueue {
            complete_since: Some(Instant::now()),
            ..SendQueue::default()
        };
        for n in 0..SEND_BATCH {
            send_queue.queued(Some(message(n)));
        }
        assert_eq!(send_queue.queue.len(), SEND_BATCH);
        assert!(send_queue.complete());
        // One more stays in the store for the next read: memory holds a batch at most.
        send_queue.queued(Some(message(SEND_BATCH)));
        assert_eq!(send_queue.queue.len(), SEND_BATCH);
        assert!(
            !send_queue.complete(),
            "the queue no longer holds everything"
        );
        // An unknown queue takes nothing in; a wake-up from elsewhere forgets it was known.
        let mut unknown = SendQueue::default();
        unknown.queued(Some(message(0)));
        assert!(unknown.queue.is_empty());
        let mut known = SendQueue {
            complete_since: Some(Instant::now()),
            ..SendQueue::default()
        };
        known.queued(None);
        assert!(!known.complete());
    }
}
