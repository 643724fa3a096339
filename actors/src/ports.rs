//! Ports: what the actors need from the outside world, implemented by the server crate.
//!
//! Storage (session rows, leases, events, keys) and the WhatsApp network reach the
//! actors only through these traits, so this crate never sees SQL or sockets.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use uuid::Uuid;
use whatsapp_rust::bot::Bot;
use whatsapp_rust::types::events::Event;

use crate::messaging::{DeliveryStatus, InboundMessage, MessageChange, SendBatch};
use crate::runtime::ArbiterRuntime;
use crate::session::{SessionRecord, SessionSpec};
use crate::tier::Tier;

/// Wall-clock time, injectable so timing logic can be tested without sleeping.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

pub use crate::session::events::SessionEvent;

/// Where session state lives (Postgres in wagate).
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Takes the session's lease for this node, or keeps it if this node already holds it.
    /// `false`: another node holds a lease that has not expired. `state`, when given, is
    /// stored in the same write, and only if the lease is taken: a session takes its lease
    /// as it starts, and a resume of thousands saves a round trip each.
    async fn acquire_lease(
        &self,
        session: Uuid,
        state: Option<&SessionRecord>,
    ) -> anyhow::Result<bool>;

    /// Extends this node's leases on `sessions`; returns the ones it still holds.
    async fn renew_leases(&self, sessions: &[Uuid]) -> anyhow::Result<Vec<Uuid>>;

    /// Gives the lease up (clean stop, shutdown), so another node may take over at once.
    async fn release_lease(&self, session: Uuid) -> anyhow::Result<()>;

    /// Writes the session's state and, when given, the event describing the change, in one
    /// transaction. Writes only while this node holds the lease.
    async fn record(
        &self,
        session: &SessionSpec,
        record: &SessionRecord,
        event: Option<SessionEvent>,
    ) -> anyhow::Result<()>;

    /// Deletes the linked device's keys (after a logout: they can never log in again).
    async fn forget_device(&self, session: Uuid) -> anyhow::Result<()>;
}

/// Where messages live (Postgres in wagate). Every change that tenants hear about is stored
/// with its event (and its webhook deliveries) in one transaction.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// The oldest queued outgoing messages of the session (at most `limit`), and its rate.
    async fn queued(&self, session: &SessionSpec, limit: usize) -> anyhow::Result<SendBatch>;

    /// Moves an outgoing message on (`sent`, `failed` with `error`). Never moves back.
    async fn set_status(
        &self,
        session: &SessionSpec,
        id: Uuid,
        status: DeliveryStatus,
        error: Option<String>,
    ) -> anyhow::Result<()>;

    /// A contact's receipt (or WhatsApp's nack) for outgoing messages, by WhatsApp id.
    async fn receipt(
        &self,
        session: &SessionSpec,
        wa_ids: &[String],
        status: DeliveryStatus,
        error: Option<String>,
    ) -> anyhow::Result<()>;

    /// The bytes of a stored upload of the session, to send as media; `None` when it is gone.
    async fn media_bytes(
        &self,
        session: &SessionSpec,
        media_id: Uuid,
    ) -> anyhow::Result<Option<Vec<u8>>>;

    /// Stores a message a contact sent, once: a redelivery of a stored WhatsApp id is a
    /// no-op. `true` when it was new.
    async fn inbound(&self, session: &SessionSpec, message: InboundMessage)
    -> anyhow::Result<bool>;

    /// A contact edited or deleted (for everyone) one of its messages: the stored message
    /// changes and the tenant hears `message.edited` / `message.deleted`, once per change.
    async fn changed(&self, session: &SessionSpec, change: MessageChange) -> anyhow::Result<()>;

    /// Keeps, as received, a contact's message that failed to store `attempts` times, and
    /// reports it (`message.dead_lettered`), so it can be acked: withheld, WhatsApp would
    /// redeliver it at every login and it would fail again. An error here means nothing was
    /// kept, and the message must stay unacked.
    async fn dead_letter(
        &self,
        session: &SessionSpec,
        message: &InboundMessage,
        error: &str,
        attempts: u32,
    ) -> anyhow::Result<()>;
}

/// What the network tells a session about its contacts, kept beside the messages.
#[async_trait]
pub trait ContactStore: Send + Sync + 'static {
    /// A contact's presence or chat state changed: tell the tenant (`presence.update`).
    async fn presence(&self, session: &SessionSpec, change: PresenceChange) -> anyhow::Result<()>;

    /// What messages revealed about contacts: a LID's phone number, a push name. A chat
    /// kept under a LID alone becomes the number's chat once the number is known (its
    /// history moves with it, so it is never split).
    async fn learned(&self, session: &SessionSpec, facts: Vec<ContactFacts>) -> anyhow::Result<()>;

    /// Something happened to a group the session is in: tell the tenant (`group.*`).
    async fn group_changed(&self, session: &SessionSpec, change: GroupChange)
    -> anyhow::Result<()>;
}

pub use crate::session::contacts::{ContactFacts, PresenceChange};
pub use crate::session::groups::GroupChange;

/// Receives every event a session's client emits.
pub type ClientEventSink = Arc<dyn Fn(Arc<Event>) + Send + Sync>;

/// Receives why a connection to the network could not be opened (DNS, TCP, TLS, refused):
/// the client only logs it, and a session that cannot reach WhatsApp must say why.
pub type ConnectErrorSink = Arc<dyn Fn(String) + Send + Sync>;

/// Builds a whatsapp-rust client for a session: its key store, the network's transport,
/// and the runtime of the arbiter that hosts it.
#[async_trait]
pub trait WhatsAppConnector: Send + Sync + 'static {
    /// A client for `session`, on `runtime`, emitting to `events`; `inbound` must be its
    /// durability hook, so no contact's message is acked to WhatsApp before it is stored.
    /// Every failure to open a connection goes to `connect_errors`.
    async fn build(
        &self,
        session: Uuid,
        runtime: ArbiterRuntime,
        events: ClientEventSink,
        inbound: crate::session::DurableInbound,
        connect_errors: ConnectErrorSink,
    ) -> anyhow::Result<Bot>;
}

/// Counters the tree reports (Prometheus in wagate). Every method has a no-op default.
pub trait TreeObserver: Send + Sync + 'static {
    /// A session moved between states (`None`: it appeared or went away).
    fn status_changed(
        &self,
        _from: Option<crate::session::SessionStatus>,
        _to: Option<crate::session::SessionStatus>,
    ) {
    }
    fn reconnect_scheduled(&self) {}
    fn qr_code_shown(&self) {}
    fn actor_restarted(&self, _tier: Tier) {}
}

/// An observer that records nothing.
pub struct NoopObserver;
impl TreeObserver for NoopObserver {}

/// Everything a session actor reaches outside itself.
#[derive(Clone)]
pub struct SessionPorts {
    pub store: Arc<dyn SessionStore>,
    pub messages: Arc<dyn MessageStore>,
    pub contacts: Arc<dyn ContactStore>,
    pub connector: Arc<dyn WhatsAppConnector>,
    pub observer: Arc<dyn TreeObserver>,
    /// The node's send slots per tier, shared by every session.
    pub send_slots: Arc<crate::send_slots::SendSlots>,
    /// Where each session's actor lives, kept by the pools, read by anyone.
    pub directory: Arc<crate::directory::SessionDirectory>,
}
