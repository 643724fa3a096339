//! Events across nodes: with Redis configured, every event stored on one node is published on
//! a Redis channel and every other node hands it to its own `NotificationActor`, so a
//! WebSocket subscriber sees the events of sessions running anywhere in the fleet. Without
//! Redis there is one node and nothing to relay.

use std::sync::Arc;

use actix::Addr;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use wagate_actors::notification::{EventSinks, NotificationActor, Publish, StoredEvent};

use crate::kv::{Ephemeral, PubSub};

const CHANNEL: &str = "events";

#[derive(Serialize, Deserialize)]
struct Relayed {
    node: String,
    events: Vec<RelayedEvent>,
}

#[derive(Serialize, Deserialize)]
struct RelayedEvent {
    tenant_id: Uuid,
    id: i64,
    session_id: Option<Uuid>,
    kind: String,
    json: String,
}

/// The notification actor's way out: Redis for other nodes, a wake-up for the webhook workers.
pub struct Sinks {
    pub ephemeral: Arc<Ephemeral>,
    pub node: String,
    pub outbox: Arc<tokio::sync::Notify>,
}

impl EventSinks for Sinks {
    fn relay(&self, events: &[Arc<StoredEvent>]) {
        if !self.ephemeral.redis_configured() {
            return;
        }
        let message = Relayed {
            node: self.node.clone(),
            events: events
                .iter()
                .map(|e| RelayedEvent {
                    tenant_id: e.tenant_id,
                    id: e.id,
                    session_id: e.session_id,
                    kind: e.kind.clone(),
                    json: e.json.to_string(),
                })
                .collect(),
        };
        let Ok(payload) = serde_json::to_vec(&message) else {
            return;
        };
        let ephemeral = self.ephemeral.clone();
        tokio::spawn(async move {
            if let Err(e) = ephemeral.publish(CHANNEL, &payload).await {
                tracing::debug!(error = %e, "relaying events to other nodes");
            }
        });
    }

    fn outbox_ready(&self) {
        self.outbox.notify_one();
    }
}

/// Hands events stored on other nodes to this node's subscribers (only with Redis).
pub fn schedule(jobs: &mut crate::app::jobs::Jobs, state: &crate::app::AppState) {
    jobs.spawn(listen(
        state.ephemeral.clone(),
        state.node_id.clone(),
        state.events.notifier.clone(),
    ));
}

pub async fn listen(ephemeral: Arc<Ephemeral>, node: String, notifier: Addr<NotificationActor>) {
    if !ephemeral.redis_configured() {
        return;
    }
    let mut stream = match ephemeral.subscribe(CHANNEL).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "subscribing to other nodes' events");
            return;
        }
    };
    while let Some(payload) = stream.next().await {
        let Ok(message) = serde_json::from_slice::<Relayed>(&payload) else {
            continue;
        };
        if message.node == node {
            continue;
        }
        let events = message
            .events
            .into_iter()
            .map(|e| {
                Arc::new(StoredEvent {
                    tenant_id: e.tenant_id,
                    id: e.id,
                    session_id: e.session_id,
                    kind: e.kind,
                    json: e.json.into(),
                })
            })
            .collect();
        notifier.do_send(Publish {
            events,
            relay: false,
        });
    }
}
