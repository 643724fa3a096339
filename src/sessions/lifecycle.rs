//! What the API asks of sessions, carried out through the supervision tree: start, stop,
//! restart, logout, health, pairing codes, tier moves, and resuming sessions at boot or
//! after another node died.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;
use wagate_actors::session::{
    GetHealth, Logout, RequestPairCode, SessionCommandError, SessionHandle, SessionSpec,
    SessionStatus,
};
use wagate_actors::supervisor::{
    LocateSession, RestartSession, StartSession, StopSession, TreeError,
};
use wagate_actors::tier::Tier as TreeTier;

use super::store::{self, SessionRow};
use crate::app::AppState;
use crate::error::ApiError;

fn tree_error(e: TreeError) -> ApiError {
    match e {
        TreeError::ShuttingDown => ApiError::Unavailable("sessions (shutting down)"),
        TreeError::NoPools | TreeError::PoolUnavailable => ApiError::Unavailable("sessions"),
    }
}

fn mailbox_error(_: actix::MailboxError) -> ApiError {
    ApiError::Unavailable("sessions")
}

pub fn spec(id: Uuid, tenant_id: Uuid, tier: &str) -> SessionSpec {
    SessionSpec {
        id,
        tenant_id,
        tier: TreeTier::parse(tier).unwrap_or(TreeTier::Standard),
    }
}

/// Marks the session running and hosts it in its tier's pool. Idempotent.
pub async fn start(state: &AppState, row: &SessionRow, tier: &str) -> Result<(), ApiError> {
    {
        let mut conn = state.db.get().await?;
        store::set_desired(&mut conn, row.id, true).await?;
    }
    state
        .supervisor
        .send(StartSession(spec(row.id, row.tenant_id, tier)))
        .await
        .map_err(mailbox_error)?
        .map_err(tree_error)?;
    Ok(())
}

/// Marks the session stopped and stops it here (no logout). A session held by another node
/// stops there when its lease renewal finds it no longer wanted.
pub async fn stop(state: &AppState, id: Uuid) -> Result<(), ApiError> {
    {
        let mut conn = state.db.get().await?;
        store::set_desired(&mut conn, id, false).await?;
    }
    let hosted = state
        .supervisor
        .send(StopSession(id))
        .await
        .map_err(mailbox_error)?;
    if !hosted {
        let mut conn = state.db.get().await?;
        if let Some((row, _)) = store::get_session(&mut conn, id).await?
            && !matches!(row.status.as_str(), "logged_out" | "failed" | "stopped")
        {
            store::set_idle_status(&mut conn, id, "stopped", false).await?;
        }
    }
    Ok(())
}

/// A fresh actor and client for the session (same device, no QR); starts it if it was not
/// running here.
pub async fn restart(state: &AppState, row: &SessionRow, tier: &str) -> Result<(), ApiError> {
    let restarted = state
        .supervisor
        .send(RestartSession(row.id))
        .await
        .map_err(mailbox_error)?;
    if !restarted {
        start(state, row, tier).await?;
    }
    Ok(())
}

/// Unlinks the device (through its live client when there is one) and deletes its keys.
pub async fn logout(state: &AppState, id: Uuid) -> Result<(), ApiError> {
    {
        let mut conn = state.db.get().await?;
        store::set_desired(&mut conn, id, false).await?;
    }
    let located = state
        .supervisor
        .send(LocateSession(id))
        .await
        .map_err(mailbox_error)?;
    if let Some(handle) = located {
        handle.send(Logout).await.map_err(mailbox_error)?;
        let _ = state.supervisor.send(StopSession(id)).await;
    }
    let mut conn = state.db.get().await?;
    store::delete_keys(&mut conn, &[id]).await?;
    if let Some((row, _)) = store::get_session(&mut conn, id).await?
        && row.status != "logged_out"
    {
        store::set_idle_status(&mut conn, id, "logged_out", true).await?;
        if let Ok(event) = store::insert_event(
            &mut conn,
            row.tenant_id,
            Some(id),
            "session.logged_out",
            json!({"reason": "requested"}),
        )
        .await
        {
            state.events.publish([event]);
        }
    }
    Ok(())
}

/// The session's health: asked of its actor when it lives here, else read from its row.
pub async fn health(state: &AppState, row: &SessionRow) -> Value {
    let located = state
        .supervisor
        .send(LocateSession(row.id))
        .await
        .ok()
        .flatten();
    if let Some(handle) = located
        && let Ok(Ok(h)) =
            tokio::time::timeout(Duration::from_secs(5), handle.send(GetHealth)).await
        && h.owner
    {
        return json!({
            "healthy": h.healthy,
            "status": h.status,
            "connected": h.connected,
            "logged_in": h.logged_in,
            "reconnect_attempts": h.reconnect_attempts,
            "last_error": h.last_error,
            "uptime_secs": h.uptime.as_secs(),
            "node": state.node_id,
        });
    }
    let lease_live = row.lease_expires_at.is_some_and(|t| t > chrono::Utc::now());
    json!({
        "healthy": row.status == "connected" && lease_live,
        "status": row.status,
        "connected": row.status == "connected" && lease_live,
        "reconnect_attempts": row.reconnect_attempts,
        "last_error": row.last_error,
        "node": row.owner_node,
    })
}

/// Asks the session's client for a pairing code.
pub async fn pair_code(
    state: &AppState,
    row: &SessionRow,
    phone: String,
) -> Result<String, ApiError> {
    let not_in_qr = |status: &str| ApiError::Conflict {
        code: "session_not_in_qr_state",
        message: format!(
            "the session is {status}; start it and ask for a code while it waits to be linked"
        ),
    };
    let handle = state
        .supervisor
        .send(LocateSession(row.id))
        .await
        .map_err(mailbox_error)?
        .ok_or_else(|| not_in_qr(&row.status))?;
    let code = handle
        .send(RequestPairCode { phone })
        .await
        .map_err(mailbox_error)?
        .map_err(|e| match e {
            SessionCommandError::NotInQrState(s) => not_in_qr(s.as_str()),
            SessionCommandError::Upstream(m) => {
                tracing::warn!(session = %row.id, error = %m, "pair code refused");
                ApiError::Unavailable("whatsapp")
            }
        })?;
    Ok(format_pair_code(&code))
}

/// `ABCDEFGH` → `ABCD-EFGH`, as the phone shows it.
pub fn format_pair_code(code: &str) -> String {
    let clean: String = code.chars().filter(|c| *c != '-').collect();
    if clean.len() == 8 {
        format!("{}-{}", &clean[..4], &clean[4..])
    } else {
        clean
    }
}

/// A tenant's tier changed: its running sessions move to the new pool (same device, no QR).
pub async fn move_tenant_sessions(
    state: &AppState,
    tenant_id: Uuid,
    tier: &str,
) -> Result<usize, ApiError> {
    let mut conn = state.db.get().await?;
    let ids = store::tenant_session_ids(&mut conn, tenant_id).await?;
    drop(conn);
    let mut moved = 0;
    for id in ids {
        let located = state
            .supervisor
            .send(LocateSession(id))
            .await
            .ok()
            .flatten();
        if located.is_some() {
            state
                .supervisor
                .send(StartSession(spec(id, tenant_id, tier)))
                .await
                .map_err(mailbox_error)?
                .map_err(tree_error)?;
            moved += 1;
        }
    }
    Ok(moved)
}

/// Stops every session of a tenant here (no logout: used before deleting it all).
pub async fn stop_tenant_sessions(
    state: &AppState,
    tenant_id: Uuid,
) -> Result<Vec<Uuid>, ApiError> {
    let mut conn = state.db.get().await?;
    let ids = store::tenant_session_ids(&mut conn, tenant_id).await?;
    drop(conn);
    for id in &ids {
        let _ = state.supervisor.send(StopSession(*id)).await;
    }
    Ok(ids)
}

/// How long a resumed session may take to connect before the resume stops waiting for it
/// (it goes on connecting; it just no longer holds a place in the window).
const RESUME_CONNECT_WAIT: Duration = Duration::from_secs(20);

/// How often the resume looks at the sessions it is waiting for.
const RESUME_POLL: Duration = Duration::from_millis(10);

/// Starts every running session this node may take (none owned, its own, or an owner whose
/// lease expired), at most `per_second` a second and at most `concurrency` connecting at a
/// time. Returns how many were started.
pub async fn resume_claimable(
    state: &AppState,
    per_second: u32,
    concurrency: u32,
) -> anyhow::Result<usize> {
    let mut conn = state.db.get().await?;
    let claimable = store::claimable_sessions(&mut conn, &state.node_id, 100_000).await?;
    drop(conn);
    let mut started = 0usize;
    let pace = (per_second > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(per_second)));
    let mut next = tokio::time::Instant::now();
    let window = concurrency.max(1) as usize;
    let mut connecting: Vec<(SessionHandle, tokio::time::Instant)> = Vec::with_capacity(window);
    for (id, tenant_id, tier) in claimable {
        let already = state
            .supervisor
            .send(LocateSession(id))
            .await
            .ok()
            .flatten();
        if already.is_some() {
            continue;
        }
        // Unthrottled or not, never more than `concurrency` sessions mid-connect: ten thousand
        // at once would queue their key-store reads behind each other until they time out.
        loop {
            connecting.retain(|(h, since)| {
                still_connecting(h.shared.status.load()) && since.elapsed() < RESUME_CONNECT_WAIT
            });
            if connecting.len() < window {
                break;
            }
            tokio::time::sleep(RESUME_POLL).await;
        }
        if let Some(pace) = pace {
            tokio::time::sleep_until(next).await;
            next += pace;
        }
        match state
            .supervisor
            .send(StartSession(spec(id, tenant_id, &tier)))
            .await
        {
            Ok(Ok(handle)) => {
                started += 1;
                connecting.push((handle, tokio::time::Instant::now()));
            }
            Ok(Err(TreeError::ShuttingDown)) | Err(_) => break,
            Ok(Err(e)) => tracing::warn!(session = %id, error = %e, "resuming a session"),
        }
    }
    Ok(started)
}

/// A resumed session is still on its way up (not connected, not given up or parked).
fn still_connecting(status: SessionStatus) -> bool {
    matches!(status, SessionStatus::Stopped | SessionStatus::Starting)
}
