//! The root of the supervision tree. It owns the children (connection pools, AI, triggers,
//! notifications, as they are added) and stops them in order on shutdown.

use std::time::{Duration, Instant};

use actix::prelude::*;

/// How long the tree may take to stop its children before it gives up on them.
pub const CHILD_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The root supervisor.
#[derive(Debug)]
pub struct RootSupervisor {
    started_at: Option<Instant>,
    stopping: bool,
}

impl RootSupervisor {
    pub fn new() -> Self {
        Self {
            started_at: None,
            stopping: false,
        }
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
        tracing::info!("supervision tree started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        tracing::info!("supervision tree stopped");
    }
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

/// Stop the whole tree in order (children first, the root last). Replies when done.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for RootSupervisor {
    type Result = ();

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Self::Context) {
        self.stopping = true;
        // Children are stopped here in reverse start order as they join the tree.
        ctx.stop();
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
