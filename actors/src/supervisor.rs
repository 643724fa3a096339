//! The root of the supervision tree. It owns one connection pool per tier (and, as they are
//! added, the AI, trigger and notification actors), knows which pool hosts which session,
//! and stops everything in order on shutdown.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;
use uuid::Uuid;

use crate::pool::{self, ConnectionPoolActor, PoolConfig, PoolSnapshot};
use crate::ports::SessionPorts;
use crate::session::{SessionConfig, SessionHandle, SessionSpec};
use crate::tier::Tier;

/// How long the tree may take to stop its children before it gives up on them.
pub const CHILD_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The tree's configuration.
#[derive(Debug, Clone)]
pub struct TreeConfig {
    pub session: SessionConfig,
    pub pools: Vec<PoolConfig>,
}

impl Default for TreeConfig {
    fn default() -> Self {
        Self {
            session: SessionConfig::default(),
            pools: Tier::ALL
                .into_iter()
                .map(PoolConfig::defaults_for)
                .collect(),
        }
    }
}

/// The root supervisor.
pub struct RootSupervisor {
    started_at: Option<Instant>,
    stopping: bool,
    config: TreeConfig,
    ports: Option<SessionPorts>,
    pools: HashMap<Tier, Addr<ConnectionPoolActor>>,
    /// Which pool hosts each session.
    directory: HashMap<Uuid, Tier>,
}

impl RootSupervisor {
    /// A tree with no session pools (the server spine before sessions are wired in).
    pub fn new() -> Self {
        Self {
            started_at: None,
            stopping: false,
            config: TreeConfig::default(),
            ports: None,
            pools: HashMap::new(),
            directory: HashMap::new(),
        }
    }

    /// A tree with a pool per tier, reaching storage and WhatsApp through `ports`.
    pub fn with_sessions(config: TreeConfig, ports: SessionPorts) -> Self {
        Self {
            config,
            ports: Some(ports),
            ..Self::new()
        }
    }

    fn pool(&self, tier: Tier) -> Result<Addr<ConnectionPoolActor>, TreeError> {
        if self.stopping {
            return Err(TreeError::ShuttingDown);
        }
        self.pools.get(&tier).cloned().ok_or(TreeError::NoPools)
    }
}

impl RootSupervisor {
    /// The pool hosting `session`, if any.
    fn pool_of(&self, session: Uuid) -> Option<Addr<ConnectionPoolActor>> {
        self.directory
            .get(&session)
            .and_then(|t| self.pools.get(t).cloned())
    }
}

impl Default for RootSupervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Actor for RootSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        self.started_at = Some(Instant::now());
        if let Some(ports) = &self.ports {
            for pool_config in &self.config.pools {
                let pool = ConnectionPoolActor::new(
                    pool_config.clone(),
                    self.config.session.clone(),
                    ports.clone(),
                )
                .start();
                self.pools.insert(pool_config.tier, pool);
            }
        }
        tracing::info!(pools = self.pools.len(), "supervision tree started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        tracing::info!("supervision tree stopped");
    }
}

/// Why the tree could not do what was asked.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("the supervision tree is shutting down")]
    ShuttingDown,
    #[error("this tree hosts no sessions")]
    NoPools,
    #[error("the connection pool did not answer")]
    PoolUnavailable,
}

/// Liveness probe: answered by the root when its arbiter is alive and its mailbox drains.
#[derive(Message, Debug)]
#[rtype(result = "TreeStatus")]
pub struct Ping;

/// What the root reports about the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeStatus {
    pub uptime: Duration,
    pub stopping: bool,
}

impl Handler<Ping> for RootSupervisor {
    type Result = MessageResult<Ping>;

    fn handle(&mut self, _msg: Ping, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(TreeStatus {
            uptime: self.started_at.map(|t| t.elapsed()).unwrap_or_default(),
            stopping: self.stopping,
        })
    }
}

/// Host and start a session in its tier's pool. A session already hosted by another pool
/// (its tenant changed tier) is stopped there first, keeping its lease and keys, and starts
/// again in the new pool: no new QR, and queued messages wait in storage meanwhile.
#[derive(Message, Debug)]
#[rtype(result = "Result<SessionHandle, TreeError>")]
pub struct StartSession(pub SessionSpec);

impl Handler<StartSession> for RootSupervisor {
    type Result = ResponseFuture<Result<SessionHandle, TreeError>>;

    fn handle(&mut self, msg: StartSession, _ctx: &mut Self::Context) -> Self::Result {
        let spec = msg.0;
        let target = match self.pool(spec.tier) {
            Ok(p) => p,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let previous = self
            .directory
            .insert(spec.id, spec.tier)
            .filter(|t| *t != spec.tier)
            .and_then(|t| self.pools.get(&t).cloned());
        Box::pin(async move {
            if let Some(old) = previous {
                let _ = old
                    .send(pool::Evict {
                        id: spec.id,
                        release: false,
                    })
                    .await;
            }
            target
                .send(pool::Host { spec, start: true })
                .await
                .ok()
                .flatten()
                .ok_or(TreeError::PoolUnavailable)
        })
    }
}

/// The session's actor on this node, if any.
#[derive(Message, Debug)]
#[rtype(result = "Option<SessionHandle>")]
pub struct LocateSession(pub Uuid);

impl Handler<LocateSession> for RootSupervisor {
    type Result = ResponseFuture<Option<SessionHandle>>;

    fn handle(&mut self, msg: LocateSession, _ctx: &mut Self::Context) -> Self::Result {
        let pool = self.pool_of(msg.0);
        Box::pin(async move {
            match pool {
                Some(p) => p.send(pool::Locate(msg.0)).await.ok().flatten(),
                None => None,
            }
        })
    }
}

/// Stop a session on this node (no logout), remove its actor and release its lease.
/// Replies whether it was hosted here.
#[derive(Message, Debug)]
#[rtype(result = "bool")]
pub struct StopSession(pub Uuid);

impl Handler<StopSession> for RootSupervisor {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, msg: StopSession, _ctx: &mut Self::Context) -> Self::Result {
        let pool = self
            .directory
            .remove(&msg.0)
            .and_then(|t| self.pools.get(&t).cloned());
        Box::pin(async move {
            match pool {
                Some(p) => p
                    .send(pool::Evict {
                        id: msg.0,
                        release: true,
                    })
                    .await
                    .unwrap_or(false),
                None => false,
            }
        })
    }
}

/// Restart one session's actor (admin). Replies whether it was hosted here.
#[derive(Message, Debug)]
#[rtype(result = "bool")]
pub struct RestartSession(pub Uuid);

impl Handler<RestartSession> for RootSupervisor {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, msg: RestartSession, _ctx: &mut Self::Context) -> Self::Result {
        let pool = self.pool_of(msg.0);
        Box::pin(async move {
            match pool {
                Some(p) => {
                    p.send(pool::RestartSessions(Some(msg.0)))
                        .await
                        .unwrap_or(0)
                        > 0
                }
                None => false,
            }
        })
    }
}

/// Restart every session of one pool (admin). Replies with how many.
#[derive(Message, Debug)]
#[rtype(result = "Result<usize, TreeError>")]
pub struct RestartPool(pub Tier);

impl Handler<RestartPool> for RootSupervisor {
    type Result = ResponseFuture<Result<usize, TreeError>>;

    fn handle(&mut self, msg: RestartPool, _ctx: &mut Self::Context) -> Self::Result {
        let pool = self.pool(msg.0);
        Box::pin(async move {
            pool?
                .send(pool::RestartSessions(None))
                .await
                .map_err(|_| TreeError::PoolUnavailable)
        })
    }
}

/// The live tree: pools → arbiters → sessions.
#[derive(Message, Debug)]
#[rtype(result = "TreeSnapshot")]
pub struct GetTree;

#[derive(Debug, Clone, Serialize)]
pub struct TreeSnapshot {
    pub uptime_secs: u64,
    pub stopping: bool,
    pub pools: Vec<PoolSnapshot>,
}

impl Handler<GetTree> for RootSupervisor {
    type Result = ResponseFuture<TreeSnapshot>;

    fn handle(&mut self, _msg: GetTree, _ctx: &mut Self::Context) -> Self::Result {
        let mut pools: Vec<(Tier, Addr<ConnectionPoolActor>)> =
            self.pools.iter().map(|(t, a)| (*t, a.clone())).collect();
        pools.sort_by_key(|(t, _)| *t);
        let uptime_secs = self.started_at.map(|t| t.elapsed().as_secs()).unwrap_or(0);
        let stopping = self.stopping;
        Box::pin(async move {
            let mut snapshots = Vec::new();
            for (_, pool) in pools {
                if let Ok(s) = pool.send(pool::Snapshot).await {
                    snapshots.push(s);
                }
            }
            TreeSnapshot {
                uptime_secs,
                stopping,
                pools: snapshots,
            }
        })
    }
}

/// Stop the whole tree in order: every session closed (not logged out) and its lease
/// released, then the pools, then the root. Replies when done.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for RootSupervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: Shutdown, _ctx: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        let pools: Vec<Addr<ConnectionPoolActor>> = self.pools.values().cloned().collect();
        Box::pin(
            async move {
                let stops = pools
                    .iter()
                    .map(|p| p.send(pool::StopAll { release: true }));
                let _ = tokio::time::timeout(CHILD_STOP_TIMEOUT, futures::future::join_all(stops))
                    .await;
            }
            .into_actor(self)
            .map(|_, _act, ctx| ctx.stop()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix::test]
    async fn answers_ping_and_stops_on_shutdown() {
        let root = RootSupervisor::new().start();
        let status = root.send(Ping).await.expect("root answers");
        assert!(!status.stopping);
        root.send(Shutdown).await.expect("shutdown delivered");
        // After Shutdown the actor is gone: its mailbox refuses new messages.
        let after = root.send(Ping).await;
        assert!(after.is_err(), "a stopped root no longer answers");
    }
}
