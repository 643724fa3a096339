//! `NotificationActor`: fans stored events out to the live subscribers of their tenant
//! (WebSocket connections) and wakes the webhook outbox.
//!
//! Events reach it only after they are stored (the store publishes after commit), so a
//! subscriber can always fill a gap from the store. A subscriber that cannot keep up — its
//! bounded mailbox is full — is dropped at once and told why; it never makes this actor or
//! the process hold more memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use actix::dev::SendError;
use actix::prelude::*;
use uuid::Uuid;

/// One stored event, serialized once for every subscriber.
#[derive(Debug)]
pub struct StoredEvent {
    pub tenant_id: Uuid,
    /// Monotonic per tenant.
    pub id: i64,
    pub session_id: Option<Uuid>,
    pub kind: String,
    /// The event as sent to subscribers (`{"id", "type", "session_id", "tenant_id", "at", "data"}`).
    pub json: Arc<str>,
}

/// An event for one subscriber.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Deliver(pub Arc<StoredEvent>);

/// Tells a subscriber it was dropped because it fell behind.
#[derive(Debug, Default)]
pub struct Eviction {
    evicted: AtomicBool,
}

impl Eviction {
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }
}

/// Register a subscriber for a tenant's events. Returns its subscription id.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct Subscribe {
    pub tenant_id: Uuid,
    pub subscriber: Recipient<Deliver>,
    pub eviction: Arc<Eviction>,
}

/// Remove a subscriber (its connection closed).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub tenant_id: Uuid,
    pub id: u64,
}

/// Stored events to fan out. `relay`: also hand them to other nodes (false for events that
/// came from another node).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Publish {
    pub events: Vec<Arc<StoredEvent>>,
    pub relay: bool,
}

/// How many subscribers are connected, and how many were dropped for falling behind.
#[derive(Message, Debug)]
#[rtype(result = "NotificationStats")]
pub struct GetStats;

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct NotificationStats {
    pub subscribers: usize,
    pub evicted_total: u64,
    pub published_total: u64,
}

/// Hands events to other nodes (Redis pub/sub in wagate) and wakes the webhook outbox.
pub trait EventSinks: Send + Sync + 'static {
    /// Events stored on this node, for subscribers on other nodes.
    fn relay(&self, _events: &[Arc<StoredEvent>]) {}
    /// New events were stored: webhook deliveries may be due.
    fn outbox_ready(&self) {}
}

struct Subscriber {
    id: u64,
    recipient: Recipient<Deliver>,
    eviction: Arc<Eviction>,
}

pub struct NotificationActor {
    sinks: Arc<dyn EventSinks>,
    subscribers: HashMap<Uuid, Vec<Subscriber>>,
    next_id: u64,
    evicted_total: Arc<AtomicU64>,
    published_total: u64,
}

impl NotificationActor {
    pub fn new(sinks: Arc<dyn EventSinks>) -> Self {
        Self {
            sinks,
            subscribers: HashMap::new(),
            next_id: 0,
            evicted_total: Arc::new(AtomicU64::new(0)),
            published_total: 0,
        }
    }
}

// Publishers use `do_send`, which a full mailbox never refuses: a burst of events waits
// here, never in the stores that publish them.
impl Actor for NotificationActor {
    type Context = Context<Self>;
}

impl Handler<Subscribe> for NotificationActor {
    type Result = u64;

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Self::Context) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.subscribers
            .entry(msg.tenant_id)
            .or_default()
            .push(Subscriber {
                id,
                recipient: msg.subscriber,
                eviction: msg.eviction,
            });
        id
    }
}

impl Handler<Unsubscribe> for NotificationActor {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _ctx: &mut Self::Context) {
        if let Some(subs) = self.subscribers.get_mut(&msg.tenant_id) {
            subs.retain(|s| s.id != msg.id);
            if subs.is_empty() {
                self.subscribers.remove(&msg.tenant_id);
            }
        }
    }
}

impl Handler<Publish> for NotificationActor {
    type Result = ();

    fn handle(&mut self, msg: Publish, _ctx: &mut Self::Context) {
        if msg.events.is_empty() {
            return;
        }
        self.published_total += msg.events.len() as u64;
        if msg.relay {
            self.sinks.relay(&msg.events);
            self.sinks.outbox_ready();
        }
        for event in &msg.events {
            let Some(subs) = self.subscribers.get_mut(&event.tenant_id) else {
                continue;
            };
            let evicted_total = &self.evicted_total;
            subs.retain(|s| match s.recipient.try_send(Deliver(event.clone())) {
                Ok(()) => true,
                Err(SendError::Full(_)) => {
                    s.eviction.evicted.store(true, Ordering::Release);
                    evicted_total.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(subscriber = s.id, "event subscriber fell behind; dropped");
                    false
                }
                Err(SendError::Closed(_)) => false,
            });
            if subs.is_empty() {
                self.subscribers.remove(&event.tenant_id);
            }
        }
    }
}

impl Handler<GetStats> for NotificationActor {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _msg: GetStats, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(NotificationStats {
            subscribers: self.subscribers.values().map(Vec::len).sum(),
            evicted_total: self.evicted_total.load(Ordering::Relaxed),
            published_total: self.published_total,
        })
    }
}

/// Start turning system events into stored notifications: every `every`, up to `batch`
/// claimed events go through [`crate::notices::notice_for`] and are settled with what they
/// made; the `notification.created` events that come back are published like any other.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartNotices {
    pub store: Arc<dyn crate::notices::NoticeStore>,
    pub every: std::time::Duration,
    pub batch: usize,
}

impl Handler<StartNotices> for NotificationActor {
    type Result = ();

    fn handle(&mut self, msg: StartNotices, ctx: &mut Self::Context) {
        // One pass at a time: a slow database never piles passes up.
        let busy = Arc::new(AtomicBool::new(false));
        let batch = msg.batch.max(1);
        ctx.run_interval(msg.every, move |act, ctx| {
            if busy.swap(true, Ordering::AcqRel) {
                return;
            }
            let (store, busy) = (msg.store.clone(), busy.clone());
            ctx.spawn(
                async move {
                    let made = turn(store.as_ref(), batch).await;
                    busy.store(false, Ordering::Release);
                    made
                }
                .into_actor(act)
                .map(|made, _act, ctx| match made {
                    Ok(events) if !events.is_empty() => ctx.notify(Publish {
                        events,
                        relay: true,
                    }),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "turning events into notifications"),
                }),
            );
        });
    }
}

async fn turn(
    store: &dyn crate::notices::NoticeStore,
    batch: usize,
) -> anyhow::Result<Vec<Arc<StoredEvent>>> {
    let claimed = store.claim(batch).await?;
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let made = claimed
        .into_iter()
        .map(|e| {
            let notice = crate::notices::notice_for(&e);
            (e, notice)
        })
        .collect();
    store.settle(made).await
}
