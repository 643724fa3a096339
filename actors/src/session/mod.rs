//! `SessionActor`: one linked WhatsApp account, its whatsapp-rust client and its state
//! machine `stopped → starting → qr|pairing → connected → reconnecting → logged_out|failed`.
//!
//! The client's own reconnect loop is switched off: when a connection ends, the actor
//! decides (our backoff, our attempt limit, our events). Every client is built fresh from
//! the session's key store, so a reconnect is exactly what a process restart would do.

pub mod contacts;
pub mod events;
pub mod groups;
mod inbound;
mod send_queue;
mod status;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use serde::Serialize;
use uuid::Uuid;
use whatsapp_rust::Client;
use whatsapp_rust::types::events::Event;

pub use inbound::DurableInbound;
pub use send_queue::SEND_BATCH;
pub use status::{AtomicStatus, SessionStatus};

use crate::backoff;
use crate::ports::{ClientEventSink, ConnectErrorSink, SessionEvent, SessionPorts};
use crate::runtime::ArbiterRuntime;
use crate::tier::Tier;

/// How long a client may take to flush and close before we stop waiting for it.
pub const CLIENT_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A health check's ping must be answered within this (or the check interval, if shorter).
pub const HEALTH_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a failed save of the device state is retried before a new client loads it.
pub const DEVICE_FLUSH_ATTEMPTS: u32 = 10;

/// Which session, whose, and on which tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpec {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub tier: Tier,
}

/// Tunables of the state machine (from configuration).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub reconnect_base: Duration,
    pub reconnect_cap: Duration,
    /// After this many failed attempts in a row the session is `failed`. 0: never give up.
    pub reconnect_max_attempts: u32,
    pub health_check_interval: Duration,
    /// A QR code left unscanned this long stops the session.
    pub qr_timeout: Duration,
    /// At most one `session.qr` event per this interval (the QR itself is always current).
    pub qr_event_min_interval: Duration,
    /// While another node holds the lease, how often to try taking it.
    pub lease_retry_interval: Duration,
    /// A contact's "typing…" not repeated within this counts as stopped (WhatsApp's apps:
    /// about 25 s).
    pub chat_state_expiry: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            reconnect_base: Duration::from_secs(1),
            reconnect_cap: Duration::from_secs(300),
            reconnect_max_attempts: 10,
            health_check_interval: Duration::from_secs(30),
            qr_timeout: Duration::from_secs(300),
            qr_event_min_interval: Duration::from_secs(15),
            lease_retry_interval: Duration::from_secs(5),
            chat_state_expiry: contacts::CHAT_STATE_EXPIRY,
        }
    }
}

/// What is stored about a session's live state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionRecord {
    pub status: SessionStatus,
    pub phone: Option<String>,
    pub jid: Option<String>,
    pub reconnect_attempts: u32,
    pub last_error: Option<String>,
    pub qr: Option<String>,
    pub qr_expires_at: Option<SystemTime>,
    /// The session ended by itself (logged out, failed, QR never scanned, replaced): it is
    /// not to be resumed at boot or taken over.
    pub settled: bool,
}

impl SessionRecord {
    fn new() -> Self {
        Self {
            status: SessionStatus::Stopped,
            phone: None,
            jid: None,
            reconnect_attempts: 0,
            last_error: None,
            qr: None,
            qr_expires_at: None,
            settled: false,
        }
    }
}

/// What the pool and the admin tree read about a session without messaging it: cheap
/// atomics the actor keeps current.
#[derive(Debug)]
pub struct SessionShared {
    pub status: AtomicStatus,
    /// Messages sent to the actor and not yet handled.
    pub pending: AtomicUsize,
    pub started_at: Instant,
    pub restarts: AtomicU32,
}

impl SessionShared {
    /// One message left the mailbox (never below zero: not every sender counts).
    fn took_one(&self) {
        let _ = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    pub fn new(restarts: u32) -> Self {
        Self {
            status: AtomicStatus::new(SessionStatus::Stopped),
            pending: AtomicUsize::new(0),
            started_at: Instant::now(),
            restarts: AtomicU32::new(restarts),
        }
    }
}

/// Told to the pool when a session actor ends without being asked to (a panic, or its
/// arbiter died under it).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ChildExited {
    pub id: Uuid,
    pub incarnation: u64,
}

/// Reports an unrequested end of the actor from its destructor, which runs even when a
/// handler panics or the arbiter's runtime is torn down.
struct DeathWatch {
    id: Uuid,
    incarnation: u64,
    pool: Recipient<ChildExited>,
    armed: bool,
}

impl Drop for DeathWatch {
    fn drop(&mut self) {
        if self.armed {
            self.pool.do_send(ChildExited {
                id: self.id,
                incarnation: self.incarnation,
            });
        }
    }
}

/// The actor.
pub struct SessionActor {
    spec: SessionSpec,
    config: SessionConfig,
    ports: SessionPorts,
    shared: Arc<SessionShared>,
    record: SessionRecord,
    /// Bumped for every client built and on every stop: events and timers of an older
    /// client are recognised and ignored.
    generation: u64,
    client: Option<Arc<Client>>,
    /// The operator wants this session running.
    desired: bool,
    lease: bool,
    acquiring: bool,
    qr_since: Option<Instant>,
    last_qr_event: Option<Instant>,
    paired_in_run: bool,
    steps: Rc<RefCell<Steps>>,
    send_queue: send_queue::SendQueue,
    contacts: contacts::ContactMemory,
    watch: DeathWatch,
}

/// Work that must run in order, before the next message.
#[derive(Default)]
struct Steps {
    queue: VecDeque<Pin<Box<dyn Future<Output = ()>>>>,
    draining: bool,
}

impl SessionActor {
    pub fn new(
        spec: SessionSpec,
        config: SessionConfig,
        ports: SessionPorts,
        shared: Arc<SessionShared>,
        pool: Recipient<ChildExited>,
        incarnation: u64,
    ) -> Self {
        let watch = DeathWatch {
            id: spec.id,
            incarnation,
            pool,
            armed: true,
        };
        Self {
            spec,
            config,
            ports,
            shared,
            record: SessionRecord::new(),
            generation: 0,
            client: None,
            desired: false,
            lease: false,
            acquiring: false,
            qr_since: None,
            last_qr_event: None,
            paired_in_run: false,
            steps: Rc::new(RefCell::new(Steps::default())),
            send_queue: send_queue::SendQueue::default(),
            contacts: contacts::ContactMemory::default(),
            watch,
        }
    }

    fn set_status(&mut self, status: SessionStatus) {
        let old = self.record.status;
        if old != status {
            self.record.status = status;
            self.shared.status.store(status);
            self.ports.observer.status_changed(Some(old), Some(status));
        }
    }

    /// Moves to `status` and stores the new state (and `event`) before handling anything
    /// else, so stored states and events keep their order.
    fn transition(
        &mut self,
        ctx: &mut Context<Self>,
        status: SessionStatus,
        event: Option<SessionEvent>,
    ) {
        self.set_status(status);
        self.persist(ctx, event);
    }

    fn persist(&mut self, ctx: &mut Context<Self>, event: Option<SessionEvent>) {
        if !self.lease {
            return;
        }
        let store = self.ports.store.clone();
        let spec = self.spec.clone();
        let record = self.record.clone();
        self.step(ctx, async move {
            tracing::debug!(session = %spec.id, status = %record.status, "storing the state");
            if let Err(e) = store.record(&spec, &record, event).await {
                tracing::warn!(session = %spec.id, error = %e, "storing the session state");
            }
        });
    }

    /// Queues `work` to run before the actor handles anything else, after the work queued
    /// before it. (`ctx.wait` alone polls the most recently added future first, which would
    /// store a state after releasing the lease it needs.)
    fn step(&mut self, ctx: &mut Context<Self>, work: impl Future<Output = ()> + 'static) {
        let mut steps = self.steps.borrow_mut();
        steps.queue.push_back(Box::pin(work));
        if steps.draining {
            return;
        }
        steps.draining = true;
        let shared = self.steps.clone();
        ctx.wait(
            async move {
                loop {
                    let next = shared.borrow_mut().queue.pop_front();
                    match next {
                        Some(work) => work.await,
                        None => {
                            shared.borrow_mut().draining = false;
                            break;
                        }
                    }
                }
            }
            .into_actor(self),
        );
    }

    fn begin(&mut self, ctx: &mut Context<Self>) {
        self.desired = true;
        if self.client.is_some() || self.acquiring {
            return;
        }
        if self.lease {
            self.connect(ctx, false);
        } else {
            self.try_acquire(ctx);
        }
    }

    fn try_acquire(&mut self, ctx: &mut Context<Self>) {
        self.acquiring = true;
        let store = self.ports.store.clone();
        let id = self.spec.id;
        // The state `connect` is about to store, stored with the lease instead.
        let starting = (self.record.status != SessionStatus::Reconnecting).then(|| SessionRecord {
            status: SessionStatus::Starting,
            settled: false,
            ..self.record.clone()
        });
        let state_stored = starting.is_some();
        ctx.spawn(
            async move { store.acquire_lease(id, starting.as_ref()).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    act.acquiring = false;
                    if !act.desired {
                        if matches!(res, Ok(true)) {
                            if state_stored {
                                // Stopped while the lease was being taken with `starting`:
                                // store the state the stop left, then give the lease up.
                                act.lease = true;
                                act.persist(ctx, None);
                            }
                            act.release_lease(ctx);
                        }
                        return;
                    }
                    match res {
                        Ok(true) => {
                            act.lease = true;
                            act.connect(ctx, state_stored);
                        }
                        Ok(false) => {
                            tracing::debug!(session = %act.spec.id, "another node holds the lease; standing by");
                            act.retry_acquire_later(ctx);
                        }
                        Err(e) => {
                            tracing::warn!(session = %act.spec.id, error = %e, "taking the lease");
                            act.retry_acquire_later(ctx);
                        }
                    }
                }),
        );
    }

    fn retry_acquire_later(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(self.config.lease_retry_interval, |act, ctx| {
            if act.desired && !act.lease && !act.acquiring {
                act.try_acquire(ctx);
            }
        });
    }

    fn release_lease(&mut self, ctx: &mut Context<Self>) {
        self.lease = false;
        let store = self.ports.store.clone();
        let id = self.spec.id;
        self.step(ctx, async move {
            if let Err(e) = store.release_lease(id).await {
                tracing::warn!(session = %id, error = %e, "releasing the lease");
            }
        });
    }

    /// Builds a fresh client from the key store and runs it. `state_stored`: the lease was
    /// just taken with the `starting` state, which is then not stored again.
    fn connect(&mut self, ctx: &mut Context<Self>, state_stored: bool) {
        self.generation += 1;
        let generation = self.generation;
        self.paired_in_run = false;
        self.send_queue.reset();
        self.record.settled = false;
        if self.record.status != SessionStatus::Reconnecting {
            if state_stored {
                self.set_status(SessionStatus::Starting);
            } else {
                self.transition(ctx, SessionStatus::Starting, None);
            }
        }
        let addr = ctx.address();
        let shared = self.shared.clone();
        let sink: ClientEventSink = Arc::new(move |event| {
            shared.pending.fetch_add(1, Ordering::Relaxed);
            addr.do_send(ClientEvent { generation, event });
        });
        let addr = ctx.address();
        let shared = self.shared.clone();
        let connect_errors: ConnectErrorSink = Arc::new(move |error| {
            shared.pending.fetch_add(1, Ordering::Relaxed);
            addr.do_send(ConnectFailed { generation, error });
        });
        let runtime = ArbiterRuntime::new(Arbiter::current());
        let connector = self.ports.connector.clone();
        let id = self.spec.id;
        let inbound = DurableInbound {
            store: self.ports.messages.clone(),
            spec: self.spec.clone(),
        };
        ctx.spawn(
            async move {
                connector
                    .build(id, runtime, sink, inbound, connect_errors)
                    .await
            }
            .into_actor(self)
            .map(move |built, act, ctx| {
                if generation != act.generation || !act.desired {
                    return;
                }
                match built {
                    Ok(bot) => {
                        let client = bot.client();
                        // Our backoff, our attempt limit: the client must not retry
                        // by itself.
                        client.enable_auto_reconnect.store(false, Ordering::Relaxed);
                        let handle = bot.spawn();
                        let addr = ctx.address();
                        let shared = act.shared.clone();
                        actix::spawn(async move {
                            handle.await;
                            shared.pending.fetch_add(1, Ordering::Relaxed);
                            addr.do_send(RunEnded { generation });
                        });
                        act.client = Some(client);
                    }
                    Err(e) => {
                        act.record.last_error = Some(format!("building the client: {e:#}"));
                        act.schedule_reconnect(ctx);
                    }
                }
            }),
        );
    }

    fn schedule_reconnect(&mut self, ctx: &mut Context<Self>) {
        self.record.reconnect_attempts += 1;
        let attempt = self.record.reconnect_attempts;
        let max = self.config.reconnect_max_attempts;
        if max > 0 && attempt > max {
            self.desired = false;
            self.record.reconnect_attempts = max;
            self.record.settled = true;
            let event = Some(SessionEvent::ReconnectFailed {
                attempts: max,
                last_error: self.record.last_error.clone(),
            });
            self.transition(ctx, SessionStatus::Failed, event);
            self.release_lease(ctx);
            return;
        }
        let delay = backoff::delay(
            attempt,
            self.config.reconnect_base,
            self.config.reconnect_cap,
        );
        self.ports.observer.reconnect_scheduled();
        let event = Some(SessionEvent::Reconnecting {
            attempt,
            delay_ms: delay.as_millis() as u64,
            last_error: self.record.last_error.clone(),
        });
        self.transition(ctx, SessionStatus::Reconnecting, event);
        let generation = self.generation;
        ctx.run_later(delay, move |act, ctx| {
            if act.generation == generation && act.desired && act.client.is_none() {
                act.connect(ctx, false);
            }
        });
    }

    /// Closes the client (flushing its state to the key store) and waits for it.
    fn close_client(&mut self, ctx: &mut Context<Self>) {
        if let Some(client) = self.client.take() {
            let id = self.spec.id;
            self.step(ctx, async move {
                tracing::debug!(session = %id, "closing the client");
                let closed = tokio::time::timeout(CLIENT_CLOSE_TIMEOUT, client.disconnect()).await;
                tracing::debug!(session = %id, in_time = closed.is_ok(), "client closed");
                // The next client loads the device from the store (right after pairing that
                // is the whole pairing): retry a save that failed under load.
                let device = client.persistence_manager();
                // A background save may hold the dirty flag with its write still in flight,
                // and `flush` would then return at once: mark the device dirty and save it
                // here, to be sure it is stored before anyone loads it.
                device.modify_device(|_| ()).await;
                for attempt in 1..=DEVICE_FLUSH_ATTEMPTS {
                    match device.flush().await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(session = %id, attempt, error = %e, "saving the device state");
                            tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                        }
                    }
                }
            });
        }
    }

    /// Ends the session here: no client, no reconnect. `release`: give the lease up.
    fn halt(
        &mut self,
        ctx: &mut Context<Self>,
        status: SessionStatus,
        event: Option<SessionEvent>,
        release: bool,
    ) {
        self.desired = false;
        self.generation += 1;
        self.qr_since = None;
        self.record.qr = None;
        self.record.qr_expires_at = None;
        self.close_client(ctx);
        if self.lease {
            self.transition(ctx, status, event);
        } else {
            self.set_status(status);
        }
        if release && self.lease {
            self.release_lease(ctx);
        }
    }

    /// The session ended by itself and is not to be resumed: stop it and give the lease up.
    fn settle_stopped(&mut self, ctx: &mut Context<Self>, error: String, event: SessionEvent) {
        self.record.last_error = Some(error);
        self.record.settled = true;
        self.halt(ctx, SessionStatus::Stopped, Some(event), true);
    }

    fn on_logged_out(&mut self, ctx: &mut Context<Self>, reason: String) {
        let event = Some(SessionEvent::LoggedOut {
            reason: reason.clone(),
        });
        self.record.last_error = Some(format!("logged out: {reason}"));
        self.record.settled = true;
        self.halt(ctx, SessionStatus::LoggedOut, None, false);
        self.forget_device(ctx);
        self.record.phone = None;
        self.record.jid = None;
        self.transition(ctx, SessionStatus::LoggedOut, event);
        self.release_lease(ctx);
    }

    fn forget_device(&mut self, ctx: &mut Context<Self>) {
        let store = self.ports.store.clone();
        let id = self.spec.id;
        self.step(ctx, async move {
            if let Err(e) = store.forget_device(id).await {
                tracing::warn!(session = %id, error = %e, "deleting the device keys");
            }
        });
    }

    fn handle_client_event(&mut self, ctx: &mut Context<Self>, event: &Event) {
        match event {
            Event::PairingQrCode(qr) => {
                let now = Instant::now();
                self.record.qr = Some(qr.code.clone());
                self.record.qr_expires_at = Some(SystemTime::now() + qr.timeout);
                self.ports.observer.qr_code_shown();
                if self.qr_since.is_none() {
                    self.qr_since = Some(now);
                    let generation = self.generation;
                    tracing::debug!(session = %self.spec.id, timeout = ?self.config.qr_timeout, "showing a QR code");
                    ctx.run_later(self.config.qr_timeout, move |act, ctx| {
                        tracing::debug!(session = %act.spec.id, status = %act.record.status, same = act.generation == generation, "QR timeout check");
                        if act.generation == generation
                            && act.record.status == SessionStatus::Qr
                        {
                            let secs = act.config.qr_timeout.as_secs();
                            act.settle_stopped(
                                ctx,
                                format!("qr_timeout: no scan within {secs} s"),
                                SessionEvent::QrTimeout {
                                    after_secs: Some(secs),
                                },
                            );
                        }
                    });
                }
                let emit = self
                    .last_qr_event
                    .is_none_or(|t| now.duration_since(t) >= self.config.qr_event_min_interval);
                let event = if emit {
                    self.last_qr_event = Some(now);
                    Some(SessionEvent::Qr {
                        qr: qr.code.clone(),
                        expires_in_secs: qr.timeout.as_secs(),
                    })
                } else {
                    None
                };
                self.transition(ctx, SessionStatus::Qr, event);
            }
            Event::PairingCode(_) => {
                self.transition(ctx, SessionStatus::Pairing, None);
            }
            Event::PairSuccess(p) => {
                self.paired_in_run = true;
                self.qr_since = None;
                self.record.qr = None;
                self.record.qr_expires_at = None;
                self.record.phone = Some(format!("+{}", p.id.user));
                self.record.jid = Some(p.id.to_string());
                self.transition(
                    ctx,
                    SessionStatus::Pairing,
                    Some(SessionEvent::Paired {
                        phone: self.record.phone.clone(),
                        jid: self.record.jid.clone(),
                    }),
                );
            }
            Event::PairError(p) => {
                self.record.last_error = Some(format!("pairing failed: {}", p.error));
            }
            Event::Connected(_) => {
                if let Some(client) = &self.client
                    && let Some(pn) = client.pn()
                {
                    self.record.phone = Some(format!("+{}", pn.user));
                    self.record.jid = Some(pn.to_string());
                }
                self.record.reconnect_attempts = 0;
                self.record.last_error = None;
                self.record.qr = None;
                self.record.qr_expires_at = None;
                self.qr_since = None;
                let event = Some(SessionEvent::Connected {
                    phone: self.record.phone.clone(),
                    jid: self.record.jid.clone(),
                });
                self.transition(ctx, SessionStatus::Connected, event);
                self.pump_send_queue(ctx);
            }
            Event::Disconnected(d) => {
                let reason = format!("{:?}", d.reason);
                self.record.last_error = Some(format!("disconnected: {reason}"));
                self.persist(ctx, Some(SessionEvent::Disconnected { reason }));
            }
            Event::LoggedOut(l) => {
                self.on_logged_out(ctx, format!("{:?}", l.reason));
            }
            Event::StreamReplaced(_) => {
                self.settle_stopped(
                    ctx,
                    "replaced by another connection".into(),
                    SessionEvent::Replaced {},
                );
            }
            Event::PairingQrCodesExhausted(_) => {
                self.settle_stopped(
                    ctx,
                    "qr_timeout: every QR code expired".into(),
                    SessionEvent::QrTimeout { after_secs: None },
                );
            }
            Event::TemporaryBan(b) => {
                self.record.last_error = Some(format!("temporarily banned: {:?}", b.code));
            }
            Event::ConnectFailure(f) => {
                self.record.last_error = Some(format!("connect failure: {:?}", f.reason));
            }
            Event::ClientOutdated(_) => {
                self.record.last_error = Some("client version outdated".into());
            }
            Event::Messages(batch) => {
                self.store_inbound(ctx, batch);
                self.learn_contacts(batch.iter());
            }
            Event::Presence(update) => self.on_presence(ctx, update),
            Event::ChatPresence(update) => self.on_chat_presence(ctx, update),
            Event::GroupUpdate(update) => self.on_group_update(update),
            Event::Receipt(receipt) => self.store_receipt(receipt),
            Event::ServerAck(ack) => self.store_nack(ack),
            _ => {}
        }
    }

    fn health(&self) -> SessionHealth {
        let connected = self.client.as_ref().is_some_and(|c| c.is_connected());
        let logged_in = self.client.as_ref().is_some_and(|c| c.is_logged_in());
        SessionHealth {
            owner: self.lease,
            status: self.record.status,
            healthy: self.record.status == SessionStatus::Connected && connected && logged_in,
            connected,
            logged_in,
            reconnect_attempts: self.record.reconnect_attempts,
            last_error: self.record.last_error.clone(),
            uptime: self.shared.started_at.elapsed(),
        }
    }

    /// A connected session must answer a ping round trip, not only believe it is connected:
    /// a connection that silently stopped carrying traffic fails here.
    fn check_health(&mut self, ctx: &mut Context<Self>) {
        if self.record.status != SessionStatus::Connected {
            return;
        }
        let health = self.health();
        let Some(client) = self.client.clone().filter(|_| health.healthy) else {
            let reason = if !health.connected {
                "not connected"
            } else {
                "not logged in"
            };
            self.health_check_failed(ctx, reason);
            return;
        };
        let generation = self.generation;
        let deadline = self.config.health_check_interval.min(HEALTH_PING_TIMEOUT);
        ctx.spawn(
            async move {
                let ping = wacore::iq::keepalive::KeepaliveSpec::with_timeout(deadline);
                matches!(
                    tokio::time::timeout(deadline, client.execute(ping)).await,
                    Ok(Ok(_))
                )
            }
            .into_actor(self)
            .map(move |answered, act, ctx| {
                if !answered
                    && act.generation == generation
                    && act.record.status == SessionStatus::Connected
                {
                    act.health_check_failed(ctx, "no answer to a ping");
                }
            }),
        );
    }

    fn health_check_failed(&mut self, ctx: &mut Context<Self>, reason: &'static str) {
        self.record.last_error = Some(format!("health check failed: {reason}"));
        self.persist(
            ctx,
            Some(SessionEvent::HealthCheckFailed {
                reason: reason.to_owned(),
            }),
        );
        // Closing the client ends its run; RunEnded then reconnects with backoff.
        if let Some(client) = self.client.clone() {
            actix::spawn(async move { client.disconnect().await });
        }
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.ports
            .observer
            .status_changed(None, Some(self.record.status));
        ctx.run_interval(self.config.health_check_interval, |act, ctx| {
            act.check_health(ctx)
        });
    }
}

impl Drop for SessionActor {
    fn drop(&mut self) {
        // Here rather than in `stopped`, which a panic or a dead arbiter skips.
        self.ports
            .observer
            .status_changed(Some(self.record.status), None);
        // A panic or a dead arbiter drops the actor without `stopped`: its client must not
        // live on as a zombie connection, so it is closed from the system arbiter.
        if let Some(client) = self.client.take() {
            let closing = async move {
                let _ = tokio::time::timeout(CLIENT_CLOSE_TIMEOUT, client.disconnect()).await;
            };
            let _ = System::try_current().map(|s| s.arbiter().spawn(closing));
        }
    }
}

/// Start (or keep running) the session. Idempotent: returns the current status.
#[derive(Message, Debug)]
#[rtype(result = "SessionStatus")]
pub struct Start;

impl Handler<Start> for SessionActor {
    type Result = MessageResult<Start>;

    fn handle(&mut self, _msg: Start, ctx: &mut Self::Context) -> Self::Result {
        self.shared.took_one();
        if !self.desired {
            self.record.reconnect_attempts = 0;
        }
        self.begin(ctx);
        MessageResult(self.record.status)
    }
}

/// Stop the session without logging it out (its keys stay; it can start again with no
/// QR). `release`: give the lease up too (the actor is going away).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Stop {
    pub release: bool,
    /// Mark the actor's end as asked for, so the pool does not restart it.
    pub final_stop: bool,
}

/// Completes only after the work queued before it with `step` (closing the client, storing
/// the state): a spawned future is not polled while the context waits.
fn after_queued_work() -> ResponseActFuture<SessionActor, ()> {
    Box::pin(actix::fut::wrap_future(tokio::task::yield_now()))
}

impl Handler<Stop> for SessionActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Stop, ctx: &mut Self::Context) -> Self::Result {
        self.shared.took_one();
        let was_running = self.desired || self.client.is_some();
        let event = was_running.then_some(SessionEvent::Stopped {});
        let status = match self.record.status {
            SessionStatus::LoggedOut | SessionStatus::Failed if !was_running => self.record.status,
            _ => SessionStatus::Stopped,
        };
        self.halt(ctx, status, event, msg.release);
        if msg.final_stop {
            self.watch.armed = false;
        }
        Box::pin(after_queued_work().map(move |_, _act, ctx| {
            if msg.final_stop {
                ctx.stop();
            }
        }))
    }
}

/// Unlink the device: the phone forgets it, its keys are deleted, the next start shows a
/// new QR.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Logout;

impl Handler<Logout> for SessionActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: Logout, _ctx: &mut Self::Context) -> Self::Result {
        self.shared.took_one();
        // Stale client events (its own LoggedOut among them) are ignored from here on.
        self.generation += 1;
        self.desired = false;
        let client = self.client.take();
        Box::pin(
            async move {
                if let Some(client) = client {
                    let _ = tokio::time::timeout(CLIENT_CLOSE_TIMEOUT, client.logout()).await;
                }
            }
            .into_actor(self)
            .map(|_, act, ctx| {
                if !act.lease {
                    // Not connected here: still forget the keys so nothing can log in.
                    act.forget_device(ctx);
                    act.record.phone = None;
                    act.record.jid = None;
                    act.set_status(SessionStatus::LoggedOut);
                    return;
                }
                act.on_logged_out(ctx, "requested".into());
            })
            .then(|_, _act, _ctx| after_queued_work()),
        )
    }
}

/// Ask WhatsApp for an 8-character code to type on the phone instead of scanning.
#[derive(Message, Debug)]
#[rtype(result = "Result<String, SessionCommandError>")]
pub struct RequestPairCode {
    /// Digits only, country code first.
    pub phone: String,
}

/// Why a command could not be carried out.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SessionCommandError {
    #[error("the session is {0}, not waiting for a QR scan")]
    NotInQrState(SessionStatus),
    #[error("WhatsApp refused: {0}")]
    Upstream(String),
    #[error("the session is {0}, not connected")]
    NotConnected(SessionStatus),
    #[error("{0} is not on WhatsApp")]
    NotOnWhatsApp(String),
    /// The request cannot be made as asked (a subject too long, not a group JID…).
    #[error("{0}")]
    Invalid(String),
    /// WhatsApp answered with an error code (403 not an admin, 404 no such group, 406 a
    /// revoked invite…).
    #[error("WhatsApp refused ({code} {text})")]
    Refused { code: u16, text: String },
}

impl Handler<RequestPairCode> for SessionActor {
    type Result = ResponseActFuture<Self, Result<String, SessionCommandError>>;

    fn handle(&mut self, msg: RequestPairCode, _ctx: &mut Self::Context) -> Self::Result {
        self.shared.took_one();
        let status = self.record.status;
        let client = match (&self.client, status) {
            (Some(c), SessionStatus::Qr | SessionStatus::Pairing) => c.clone(),
            _ => {
                return Box::pin(actix::fut::ready(Err(SessionCommandError::NotInQrState(
                    status,
                ))));
            }
        };
        Box::pin(
            async move {
                client
                    .pair_with_code(wacore::pair_code::PairCodeOptions {
                        phone_number: msg.phone,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| SessionCommandError::Upstream(e.to_string()))
            }
            .into_actor(self)
            .map(|res, act, ctx| {
                if res.is_ok() && act.record.status == SessionStatus::Qr {
                    act.transition(ctx, SessionStatus::Pairing, None);
                }
                res
            }),
        )
    }
}

/// The session's health as its actor sees it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionHealth {
    /// This node holds the session's lease (else it only stands by).
    pub owner: bool,
    pub status: SessionStatus,
    pub healthy: bool,
    pub connected: bool,
    pub logged_in: bool,
    pub reconnect_attempts: u32,
    pub last_error: Option<String>,
    #[serde(serialize_with = "secs")]
    pub uptime: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// Ask for [`SessionHealth`].
#[derive(Message, Debug)]
#[rtype(result = "SessionHealth")]
pub struct GetHealth;

impl Handler<GetHealth> for SessionActor {
    type Result = MessageResult<GetHealth>;

    fn handle(&mut self, _msg: GetHealth, _ctx: &mut Self::Context) -> Self::Result {
        self.shared.took_one();
        MessageResult(self.health())
    }
}

/// This node no longer holds the lease (it expired, another node took it): close the
/// client without touching stored state, and stand by to take it back.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct LeaseLost;

impl Handler<LeaseLost> for SessionActor {
    type Result = ();

    fn handle(&mut self, _msg: LeaseLost, ctx: &mut Self::Context) {
        self.shared.took_one();
        if !self.lease || self.acquiring {
            return;
        }
        // The renewal may have raced with our own acquisition: ask again before closing
        // anything. Taking the lease succeeds while it is ours or nobody else's.
        self.acquiring = true;
        let store = self.ports.store.clone();
        let id = self.spec.id;
        ctx.spawn(
            async move { store.acquire_lease(id, None).await }
                .into_actor(self)
                .map(|res, act, ctx| {
                    act.acquiring = false;
                    // Only a definite "another node holds it" closes the connection; a
                    // database hiccup does not take sessions down.
                    if !matches!(res, Ok(false)) || !act.lease {
                        return;
                    }
                    tracing::warn!(session = %act.spec.id, "lease lost; closing the connection");
                    act.lease = false;
                    act.generation += 1;
                    act.close_client(ctx);
                    if act.desired {
                        act.retry_acquire_later(ctx);
                    }
                }),
        );
    }
}

/// An event from the session's client.
#[derive(Message)]
#[rtype(result = "()")]
struct ClientEvent {
    generation: u64,
    event: Arc<Event>,
}

impl Handler<ClientEvent> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: ClientEvent, ctx: &mut Self::Context) {
        self.shared.took_one();
        if msg.generation == self.generation {
            self.handle_client_event(ctx, &msg.event);
        }
    }
}

/// The client could not open a connection to the network; its run ends right after.
#[derive(Message, Debug)]
#[rtype(result = "()")]
struct ConnectFailed {
    generation: u64,
    error: String,
}

impl Handler<ConnectFailed> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: ConnectFailed, _ctx: &mut Self::Context) {
        self.shared.took_one();
        if msg.generation == self.generation {
            // Stored with the `reconnecting` state the run's end moves to.
            self.record.last_error = Some(format!("cannot reach WhatsApp: {}", msg.error));
        }
    }
}

/// The client's run loop ended (connection closed, connect failed, 515 after pairing).
#[derive(Message, Debug)]
#[rtype(result = "()")]
struct RunEnded {
    generation: u64,
}

impl Handler<RunEnded> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: RunEnded, ctx: &mut Self::Context) {
        self.shared.took_one();
        if msg.generation != self.generation {
            return;
        }
        // The pairing's own event may still be in the mailbox: the client knows its number.
        let just_paired = self.paired_in_run
            || (matches!(
                self.record.status,
                SessionStatus::Qr | SessionStatus::Pairing
            ) && self.client.as_ref().is_some_and(|c| c.pn().is_some()));
        // Flush what the old client holds before a new one loads the same store.
        self.close_client(ctx);
        if !self.desired || !self.lease {
            return;
        }
        if just_paired {
            // WhatsApp restarts the stream right after pairing: connect again at once.
            self.connect(ctx, false);
        } else {
            self.schedule_reconnect(ctx);
        }
    }
}

/// New messages were queued for this session: send them (at the session's pace).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct MessagesQueued {
    /// The message just accepted on this node, already stored: saves reading it back when
    /// the session's queue is otherwise known. `None`: read the store (messages accepted
    /// elsewhere, or a sweep).
    pub accepted: Option<crate::messaging::OutgoingMessage>,
}

impl Handler<MessagesQueued> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: MessagesQueued, ctx: &mut Self::Context) {
        self.shared.took_one();
        self.send_queue.queued(msg.accepted);
        self.pump_send_queue(ctx);
    }
}

/// Test-only faults, to prove the tree restarts what dies.
#[cfg(feature = "fault-injection")]
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub enum Fault {
    /// Panic inside this message's handler.
    PanicInHandler,
    /// Stop the arbiter hosting the session, killing every session on it.
    KillArbiter,
}

#[cfg(feature = "fault-injection")]
impl Handler<Fault> for SessionActor {
    type Result = ();

    #[allow(clippy::panic)]
    fn handle(&mut self, msg: Fault, _ctx: &mut Self::Context) {
        self.shared.took_one();
        match msg {
            Fault::PanicInHandler => panic!("injected fault in session {}", self.spec.id),
            Fault::KillArbiter => {
                Arbiter::current().stop();
            }
        }
    }
}

/// A session actor's address with its shared view; counts what it sends so the admin
/// tree can show mailbox lengths.
#[derive(Clone)]
pub struct SessionHandle {
    pub addr: Addr<SessionActor>,
    pub shared: Arc<SessionShared>,
}

impl SessionHandle {
    pub async fn send<M>(&self, msg: M) -> Result<M::Result, MailboxError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        SessionActor: Handler<M>,
    {
        self.shared.pending.fetch_add(1, Ordering::Relaxed);
        self.addr.send(msg).await
    }

    pub fn do_send<M>(&self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        SessionActor: Handler<M>,
    {
        self.shared.pending.fetch_add(1, Ordering::Relaxed);
        self.addr.do_send(msg);
    }
}
