//! The messages' background jobs: nudging this node's sessions that have queued messages
//! (accepted on another node, or a missed wake-up), and failing queued messages whose
//! session stayed unconnected too long.

use std::time::Duration;

use actix::Addr;
use chrono::Utc;
use uuid::Uuid;
use wagate_actors::RootSupervisor;
use wagate_actors::directory::SessionDirectory;
use wagate_actors::messaging::OutgoingMessage;
use wagate_actors::session::MessagesQueued;
use wagate_actors::supervisor::LocateSession;

use crate::app::AppState;
use crate::app::jobs::Jobs;
use crate::app::state::SessionsContext;
use crate::db::DbPool;
use crate::events::EventHub;

/// How often a node looks for queued messages its sessions have not picked up (accepted on
/// another node, or a missed wake-up).
pub const QUEUE_SWEEP_INTERVAL: Duration = Duration::from_secs(2);

pub fn schedule(jobs: &mut Jobs, state: &actix_web::web::Data<AppState>) {
    let nudger = state.clone();
    jobs.spawn(async move {
        loop {
            tokio::time::sleep(QUEUE_SWEEP_INTERVAL).await;
            if let Err(e) = nudge_queued(nudger.sessions()).await {
                tracing::warn!(error = %e, "looking for queued messages");
            }
        }
    });
    let state = state.clone();
    jobs.spawn(async move {
        let timeout = state.settings.messages.not_connected_timeout_secs;
        let window = chrono::Duration::seconds(timeout as i64);
        let every = Duration::from_secs((timeout / 10).clamp(1, 60));
        loop {
            tokio::time::sleep(every).await;
            match fail_stale(&state.db, &state.events, window).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    messages = n,
                    "queued messages failed: session not connected"
                ),
                Err(e) => tracing::warn!(error = %e, "failing stale queued messages"),
            }
        }
    });
}

/// Tells this node's connected sessions that have queued messages to send them: catches
/// messages accepted on another node and any wake-up that was missed, with one query per
/// node instead of one per session.
pub async fn nudge_queued(tree: SessionsContext<'_>) -> anyhow::Result<usize> {
    let mut conn = tree.db.get().await?;
    let sessions = super::store::sessions_with_queued(&mut conn, tree.node_id).await?;
    drop(conn);
    let mut nudged = 0;
    for id in sessions {
        nudged += usize::from(wake_sender(tree.supervisor, None, id, None).await);
    }
    Ok(nudged)
}

/// Counts messages the platform itself just queued (AI answers, automation) and wakes each
/// one's session to send it.
pub(crate) async fn wake_senders_of(
    supervisor: &Addr<RootSupervisor>,
    directory: &SessionDirectory,
    stored: Vec<super::store::MessageRow>,
) {
    crate::metrics::MESSAGES
        .with_label_values(&["out", "queued"])
        .inc_by(stored.len() as u64);
    for row in stored {
        let accepted = super::adapters::outgoing(&row).ok();
        wake_sender(supervisor, Some(directory), row.session_id, accepted).await;
    }
}

/// Tells the session's actor, if it lives on this node, that messages are queued for it
/// (`accepted`: the one just stored here).
pub(crate) async fn wake_sender(
    supervisor: &Addr<RootSupervisor>,
    directory: Option<&SessionDirectory>,
    session: Uuid,
    accepted: Option<OutgoingMessage>,
) -> bool {
    // The directory answers without a message to the supervisor (and from it to a pool).
    if let Some(handle) = directory.and_then(|d| d.get(session)) {
        handle.do_send(MessagesQueued { accepted });
        return true;
    }
    match supervisor.send(LocateSession(session)).await {
        Ok(Some(handle)) => {
            handle.do_send(MessagesQueued { accepted });
            true
        }
        _ => false,
    }
}

/// Fails queued messages whose session stayed unconnected longer than the configured
/// window, each with its `message.status` event. Runs on every node; each row moves once.
pub async fn fail_stale(
    db: &DbPool,
    events: &EventHub,
    window: chrono::Duration,
) -> anyhow::Result<usize> {
    let mut conn = db.get().await?;
    let stale = super::store::stale_queued(&mut conn, Utc::now() - window, 500).await?;
    drop(conn);
    let reason = format!(
        "session_not_connected: not connected within {} s",
        window.num_seconds()
    );
    let mut failed = 0;
    for m in stale {
        failed += super::adapters::move_status(
            db,
            events,
            super::store::Move::One(m.id),
            wagate_actors::messaging::DeliveryStatus::Failed,
            Some(reason.clone()),
        )
        .await?;
    }
    Ok(failed)
}
