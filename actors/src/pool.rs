//! `ConnectionPoolActor`: one per tier. Places session actors on arbiters (up to N per
//! shared arbiter, or one per dedicated arbiter), notices when one dies — a panic in a
//! handler, or its whole arbiter gone — and restarts what it hosted with backoff.
//! actix's `Supervisor` does not catch panics, so this is the tree's restart logic.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;
use uuid::Uuid;

use crate::backoff;
use crate::ports::SessionPorts;
use crate::session::{
    ChildExited, LeaseLost, SessionActor, SessionConfig, SessionHandle, SessionShared, SessionSpec,
    SessionStatus, Start, Stop,
};
use crate::tier::Tier;

/// How a pool packs and watches its sessions.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub tier: Tier,
    /// Sessions per arbiter; 1 is a dedicated arbiter per session.
    pub sessions_per_arbiter: usize,
    /// An empty shared arbiter is stopped after this long.
    pub idle_reclaim: Duration,
    /// How often dead actors and arbiters are looked for (deaths are also reported at once
    /// by the actor's destructor; the sweep catches what that cannot).
    pub sweep_interval: Duration,
    pub lease_renew_interval: Duration,
    pub restart_base: Duration,
    pub restart_cap: Duration,
}

impl PoolConfig {
    /// The product brief's tier pools: 10 per arbiter (30 min idle), 3 (15 min), dedicated.
    pub fn defaults_for(tier: Tier) -> Self {
        let (per, idle) = match tier {
            Tier::Standard => (10, Duration::from_secs(30 * 60)),
            Tier::Professional => (3, Duration::from_secs(15 * 60)),
            Tier::Enterprise => (1, Duration::ZERO),
        };
        Self {
            tier,
            sessions_per_arbiter: per,
            idle_reclaim: idle,
            sweep_interval: Duration::from_secs(1),
            lease_renew_interval: Duration::from_secs(10),
            restart_base: Duration::from_millis(100),
            restart_cap: Duration::from_secs(30),
        }
    }
}

struct ArbiterSlot {
    id: u64,
    arbiter: Arbiter,
    sessions: BTreeSet<Uuid>,
    empty_since: Option<Instant>,
    started_at: Instant,
}

struct Hosted {
    spec: SessionSpec,
    arbiter: u64,
    handle: SessionHandle,
    incarnation: u64,
    restarts: u32,
    /// Started by the operator (restart it after a crash).
    running: bool,
    restart_pending: bool,
    recent_restarts: Vec<Instant>,
}

/// The pool actor.
pub struct ConnectionPoolActor {
    config: PoolConfig,
    session_config: SessionConfig,
    ports: SessionPorts,
    arbiters: Vec<ArbiterSlot>,
    next_arbiter_id: u64,
    sessions: HashMap<Uuid, Hosted>,
    incarnations: u64,
    restarts_total: u64,
}

impl ConnectionPoolActor {
    pub fn new(config: PoolConfig, session_config: SessionConfig, ports: SessionPorts) -> Self {
        Self {
            config,
            session_config,
            ports,
            arbiters: Vec::new(),
            next_arbiter_id: 0,
            sessions: HashMap::new(),
            incarnations: 0,
            restarts_total: 0,
        }
    }

    fn new_slot(&mut self) -> u64 {
        self.next_arbiter_id += 1;
        let id = self.next_arbiter_id;
        self.arbiters.push(ArbiterSlot {
            id,
            arbiter: Arbiter::new(),
            sessions: BTreeSet::new(),
            empty_since: None,
            started_at: Instant::now(),
        });
        id
    }

    /// The fullest arbiter with room (packing keeps the thread count low), or a new one.
    fn place(&mut self) -> u64 {
        let per = self.config.sessions_per_arbiter.max(1);
        let best = self
            .arbiters
            .iter()
            .filter(|s| s.sessions.len() < per)
            .max_by_key(|s| s.sessions.len())
            .map(|s| s.id);
        best.unwrap_or_else(|| self.new_slot())
    }

    fn slot_mut(&mut self, id: u64) -> Option<&mut ArbiterSlot> {
        self.arbiters.iter_mut().find(|s| s.id == id)
    }

    fn spawn_actor(
        &mut self,
        ctx: &mut Context<Self>,
        spec: SessionSpec,
        arbiter_id: u64,
        restarts: u32,
        start: bool,
    ) -> Option<SessionHandle> {
        self.incarnations += 1;
        let incarnation = self.incarnations;
        let slot = self.slot_mut(arbiter_id)?;
        slot.sessions.insert(spec.id);
        slot.empty_since = None;
        let arbiter = slot.arbiter.handle();
        let shared = Arc::new(SessionShared::new(restarts));
        let pool = ctx.address().recipient();
        let (actor_spec, config, ports, actor_shared) = (
            spec.clone(),
            self.session_config.clone(),
            self.ports.clone(),
            shared.clone(),
        );
        let addr = SessionActor::start_in_arbiter(&arbiter, move |_| {
            SessionActor::new(actor_spec, config, ports, actor_shared, pool, incarnation)
        });
        let handle = SessionHandle { addr, shared };
        self.ports.directory.insert(spec.id, handle.clone());
        if start {
            handle.do_send(Start);
        }
        let (running, recent_restarts) = match self.sessions.get(&spec.id) {
            Some(prev) => (start || prev.running, prev.recent_restarts.clone()),
            None => (start, Vec::new()),
        };
        self.sessions.insert(
            spec.id,
            Hosted {
                spec,
                arbiter: arbiter_id,
                handle: handle.clone(),
                incarnation,
                restarts,
                running,
                restart_pending: false,
                recent_restarts,
            },
        );
        Some(handle)
    }

    fn host(
        &mut self,
        ctx: &mut Context<Self>,
        spec: SessionSpec,
        start: bool,
    ) -> Option<SessionHandle> {
        if let Some(h) = self.sessions.get_mut(&spec.id) {
            if start {
                h.running = true;
                h.handle.do_send(Start);
            }
            return Some(h.handle.clone());
        }
        let arbiter = self.place();
        self.spawn_actor(ctx, spec, arbiter, 0, start)
    }

    fn arbiter_alive(slot: &ArbiterSlot) -> bool {
        slot.arbiter.spawn(async {})
    }

    /// A hosted actor ended without being asked to: count it and restart it after a backoff
    /// that grows with how often it died lately.
    fn on_death(&mut self, ctx: &mut Context<Self>, id: Uuid) {
        let tier = self.config.tier;
        let Some(h) = self.sessions.get_mut(&id) else {
            return;
        };
        if h.restart_pending {
            return;
        }
        h.restart_pending = true;
        h.restarts += 1;
        h.handle
            .shared
            .restarts
            .store(h.restarts, Ordering::Relaxed);
        let now = Instant::now();
        h.recent_restarts
            .retain(|t| now.duration_since(*t) < Duration::from_secs(60));
        h.recent_restarts.push(now);
        let delay = backoff::delay(
            h.recent_restarts.len() as u32,
            self.config.restart_base,
            self.config.restart_cap,
        );
        self.restarts_total += 1;
        self.ports.observer.actor_restarted(tier);
        tracing::warn!(session = %id, tier = tier.as_str(), ?delay, "session actor died; restarting");
        ctx.run_later(delay, move |act, ctx| act.respawn(ctx, id));
    }

    fn respawn(&mut self, ctx: &mut Context<Self>, id: Uuid) {
        let Some(h) = self.sessions.get(&id) else {
            return;
        };
        tracing::debug!(session = %id, pending = h.restart_pending, arbiter = h.arbiter, "respawn");
        if !h.restart_pending {
            return;
        }
        let (spec, arbiter_id, restarts) = (h.spec.clone(), h.arbiter, h.restarts);
        let status = h.handle.shared.status.load();
        let start =
            h.running && !matches!(status, SessionStatus::LoggedOut | SessionStatus::Failed);
        let alive = self
            .arbiters
            .iter()
            .find(|s| s.id == arbiter_id)
            .is_some_and(Self::arbiter_alive);
        if !alive {
            // Its neighbours are marked for restart too and follow on the new arbiter.
            self.replace_arbiter(ctx, arbiter_id);
        }
        self.spawn_actor(ctx, spec, arbiter_id, restarts, start);
    }

    /// The arbiter's thread is gone: give the slot a new one and restart every session it
    /// hosted there.
    fn replace_arbiter(&mut self, ctx: &mut Context<Self>, arbiter_id: u64) {
        let Some(slot) = self.slot_mut(arbiter_id) else {
            return;
        };
        tracing::warn!(
            arbiter = arbiter_id,
            "arbiter died; restarting its sessions on a new one"
        );
        slot.arbiter = Arbiter::new();
        slot.started_at = Instant::now();
        let hosted: Vec<Uuid> = slot.sessions.iter().copied().collect();
        for id in hosted {
            let pending = self.sessions.get(&id).is_some_and(|h| h.restart_pending);
            if !pending {
                self.on_death(ctx, id);
            }
        }
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let dead_arbiters: Vec<u64> = self
            .arbiters
            .iter()
            .filter(|s| !Self::arbiter_alive(s))
            .map(|s| s.id)
            .collect();
        for id in dead_arbiters {
            self.replace_arbiter(ctx, id);
        }
        let dead: Vec<Uuid> = self
            .sessions
            .iter()
            .filter(|(_, h)| !h.restart_pending && !h.handle.addr.connected())
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.on_death(ctx, id);
        }
        let idle = self.config.idle_reclaim;
        self.arbiters.retain(|s| {
            let reclaim =
                s.sessions.is_empty() && s.empty_since.is_some_and(|t| t.elapsed() >= idle);
            if reclaim {
                tracing::debug!(arbiter = s.id, "reclaiming an idle arbiter");
                s.arbiter.stop();
            }
            !reclaim
        });
    }

    fn renew_leases(&mut self, ctx: &mut Context<Self>) {
        let ids: Vec<Uuid> = self
            .sessions
            .values()
            .filter(|h| h.running && !h.restart_pending)
            .map(|h| h.spec.id)
            .collect();
        if ids.is_empty() {
            return;
        }
        let store = self.ports.store.clone();
        ctx.spawn(
            async move {
                let held = store.renew_leases(&ids).await;
                (ids, held)
            }
            .into_actor(self)
            .map(|(ids, held), act, _| match held {
                Ok(held) => {
                    let held: BTreeSet<Uuid> = held.into_iter().collect();
                    for id in ids.iter().filter(|id| !held.contains(id)) {
                        if let Some(h) = act.sessions.get(id) {
                            h.handle.do_send(LeaseLost);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "renewing session leases"),
            }),
        );
    }

    /// Removes a session from the pool; the returned handle is still to be stopped.
    fn unhost(&mut self, id: Uuid) -> Option<SessionHandle> {
        let h = self.sessions.remove(&id)?;
        self.ports.directory.remove(id, &h.handle);
        if let Some(slot) = self.slot_mut(h.arbiter) {
            slot.sessions.remove(&id);
            if slot.sessions.is_empty() {
                slot.empty_since = Some(Instant::now());
            }
        }
        Some(h.handle)
    }

    fn snapshot(&self) -> PoolSnapshot {
        let arbiters = self
            .arbiters
            .iter()
            .map(|slot| ArbiterSnapshot {
                id: slot.id,
                alive: Self::arbiter_alive(slot),
                uptime_secs: slot.started_at.elapsed().as_secs(),
                idle_secs: slot.empty_since.map(|t| t.elapsed().as_secs()),
                sessions: slot
                    .sessions
                    .iter()
                    .filter_map(|id| self.sessions.get(id))
                    .map(|h| SessionNode {
                        id: h.spec.id,
                        tenant_id: h.spec.tenant_id,
                        status: h.handle.shared.status.load(),
                        alive: h.handle.addr.connected(),
                        mailbox_len: h.handle.shared.pending.load(Ordering::Relaxed),
                        restarts: h.restarts,
                        uptime_secs: h.handle.shared.started_at.elapsed().as_secs(),
                    })
                    .collect(),
            })
            .collect();
        PoolSnapshot {
            tier: self.config.tier,
            sessions_per_arbiter: self.config.sessions_per_arbiter,
            restarts_total: self.restarts_total,
            arbiters,
        }
    }
}

impl Actor for ConnectionPoolActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.config.sweep_interval, |act, ctx| act.sweep(ctx));
        ctx.run_interval(self.config.lease_renew_interval, |act, ctx| {
            act.renew_leases(ctx)
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for slot in &self.arbiters {
            slot.arbiter.stop();
        }
    }
}

impl Handler<ChildExited> for ConnectionPoolActor {
    type Result = ();

    fn handle(&mut self, msg: ChildExited, ctx: &mut Self::Context) {
        let current = self
            .sessions
            .get(&msg.id)
            .is_some_and(|h| h.incarnation == msg.incarnation);
        tracing::debug!(session = %msg.id, incarnation = msg.incarnation, current, "child exited");
        if current {
            self.on_death(ctx, msg.id);
        }
    }
}

/// Host a session here (placing its actor on an arbiter); `start` it too. Idempotent.
#[derive(Message, Debug)]
#[rtype(result = "Option<SessionHandle>")]
pub struct Host {
    pub spec: SessionSpec,
    pub start: bool,
}

impl Handler<Host> for ConnectionPoolActor {
    type Result = Option<SessionHandle>;

    fn handle(&mut self, msg: Host, ctx: &mut Self::Context) -> Self::Result {
        self.host(ctx, msg.spec, msg.start)
    }
}

/// The session's actor, when this pool hosts it.
#[derive(Message, Debug)]
#[rtype(result = "Option<SessionHandle>")]
pub struct Locate(pub Uuid);

impl Handler<Locate> for ConnectionPoolActor {
    type Result = Option<SessionHandle>;

    fn handle(&mut self, msg: Locate, _ctx: &mut Self::Context) -> Self::Result {
        self.sessions.get(&msg.0).map(|h| h.handle.clone())
    }
}

/// Stop a session (no logout) and remove its actor. `release`: give the lease up.
#[derive(Message, Debug)]
#[rtype(result = "bool")]
pub struct Evict {
    pub id: Uuid,
    pub release: bool,
}

impl Handler<Evict> for ConnectionPoolActor {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, msg: Evict, _ctx: &mut Self::Context) -> Self::Result {
        let handle = self.unhost(msg.id);
        Box::pin(async move {
            match handle {
                Some(h) => {
                    let _ = h
                        .send(Stop {
                            release: msg.release,
                            final_stop: true,
                        })
                        .await;
                    true
                }
                None => false,
            }
        })
    }
}

/// Restart session actors gracefully (stop, then a fresh actor that reconnects from the key
/// store): one (`Some(id)`) or every one in the pool. Replies with how many.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct RestartSessions(pub Option<Uuid>);

impl Handler<RestartSessions> for ConnectionPoolActor {
    type Result = ResponseActFuture<Self, usize>;

    fn handle(&mut self, msg: RestartSessions, _ctx: &mut Self::Context) -> Self::Result {
        let ids: Vec<Uuid> = match msg.0 {
            Some(id) => self
                .sessions
                .contains_key(&id)
                .then_some(id)
                .into_iter()
                .collect(),
            None => self.sessions.keys().copied().collect(),
        };
        let mut stopping = Vec::new();
        for id in &ids {
            if let Some(h) = self.sessions.get_mut(id) {
                // The old actor's end is asked for: not a crash.
                h.restart_pending = true;
                let handle = h.handle.clone();
                stopping.push(async move {
                    let _ = handle
                        .send(Stop {
                            release: false,
                            final_stop: true,
                        })
                        .await;
                });
            }
        }
        Box::pin(
            futures::future::join_all(stopping)
                .into_actor(self)
                .map(move |_, act, ctx| {
                    let tier = act.config.tier;
                    for id in &ids {
                        if let Some(h) = act.sessions.get_mut(id) {
                            h.restarts += 1;
                            act.restarts_total += 1;
                            act.ports.observer.actor_restarted(tier);
                            let (spec, arbiter, restarts, running) =
                                (h.spec.clone(), h.arbiter, h.restarts, h.running);
                            let alive = act
                                .arbiters
                                .iter()
                                .find(|s| s.id == arbiter)
                                .is_some_and(Self::arbiter_alive);
                            let arbiter = if alive { arbiter } else { act.place() };
                            act.spawn_actor(ctx, spec, arbiter, restarts, running);
                        }
                    }
                    ids.len()
                }),
        )
    }
}

/// Stop every session (no logout) and the pool's arbiters: shutdown. `release`: give the
/// leases up so other nodes may take over at once (a clean shutdown does; a simulated crash
/// does not).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct StopAll {
    pub release: bool,
}

impl Handler<StopAll> for ConnectionPoolActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: StopAll, _ctx: &mut Self::Context) -> Self::Result {
        let ids: Vec<Uuid> = self.sessions.keys().copied().collect();
        let handles: Vec<SessionHandle> =
            ids.into_iter().filter_map(|id| self.unhost(id)).collect();
        let release = msg.release;
        let stops = handles.into_iter().map(move |h| async move {
            let _ = h
                .send(Stop {
                    release,
                    final_stop: true,
                })
                .await;
        });
        Box::pin(
            futures::future::join_all(stops)
                .into_actor(self)
                .map(|_, _act, ctx| ctx.stop()),
        )
    }
}

/// What the admin tree shows of a pool.
#[derive(Message, Debug)]
#[rtype(result = "PoolSnapshot")]
pub struct Snapshot;

impl Handler<Snapshot> for ConnectionPoolActor {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.snapshot())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolSnapshot {
    pub tier: Tier,
    pub sessions_per_arbiter: usize,
    pub restarts_total: u64,
    pub arbiters: Vec<ArbiterSnapshot>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArbiterSnapshot {
    pub id: u64,
    pub alive: bool,
    pub uptime_secs: u64,
    /// How long it has been empty (reclaimed after the pool's idle period).
    pub idle_secs: Option<u64>,
    pub sessions: Vec<SessionNode>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionNode {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub status: SessionStatus,
    pub alive: bool,
    pub mailbox_len: usize,
    pub restarts: u32,
    pub uptime_secs: u64,
}
