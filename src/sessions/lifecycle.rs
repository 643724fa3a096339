//! What the API asks of sessions, carried out through the supervision tree: start, stop,
//! restart, logout, health, pairing codes, tier moves, and resuming sessions at boot or
//! after another node died.

use std::time::Duration;

use uuid::Uuid;
use wagate_actors::session::{
    GetHealth, Logout, RequestPairCode, SessionCommandError, SessionHandle, SessionSpec,
    SessionStatus,
};
use wagate_actors::supervisor::{
    LocateSession, RestartSession, StartSession, StopSession, TreeError,
};
use wagate_actors::tier::Tier;

use super::store::{self, SessionRow};
use crate::app::state::SessionsContext;
use crate::error::{ApiError, ErrorCode};
use crate::events::{EventPayload, SessionEvent};

fn tree_error(e: TreeError) -> ApiError {
    match e {
        TreeError::ShuttingDown => ApiError::Unavailable("sessions (shutting down)"),
        TreeError::NoPools | TreeError::PoolUnavailable => ApiError::Unavailable("sessions"),
    }
}

fn mailbox_error(_: actix::MailboxError) -> ApiError {
    ApiError::Unavailable("sessions")
}

pub fn spec(id: Uuid, tenant_id: Uuid, tier: Tier) -> SessionSpec {
    SessionSpec {
        id,
        tenant_id,
        tier,
    }
}

/// Marks the session running and hosts it in its tier's pool. Idempotent.
pub async fn start(ctx: SessionsContext<'_>, row: &SessionRow, tier: Tier) -> Result<(), ApiError> {
    {
        let mut conn = ctx.db.get().await?;
        store::set_desired(&mut conn, row.id, true).await?;
    }
    ctx.supervisor
        .send(StartSession(spec(row.id, row.tenant_id, tier)))
        .await
        .map_err(mailbox_error)?
        .map_err(tree_error)?;
    Ok(())
}

/// Marks the session stopped and stops it here (no logout). A session held by another node
/// stops there when its lease renewal finds it no longer wanted.
pub async fn stop(ctx: SessionsContext<'_>, id: Uuid) -> Result<(), ApiError> {
    {
        let mut conn = ctx.db.get().await?;
        store::set_desired(&mut conn, id, false).await?;
    }
    let hosted = ctx
        .supervisor
        .send(StopSession(id))
        .await
        .map_err(mailbox_error)?;
    if !hosted {
        let mut conn = ctx.db.get().await?;
        if let Some((row, _)) = store::get_session(&mut conn, id).await?
            && !matches!(
                row.session_status()?,
                SessionStatus::LoggedOut | SessionStatus::Failed | SessionStatus::Stopped
            )
        {
            store::set_idle_status(&mut conn, id, SessionStatus::Stopped, false).await?;
        }
    }
    Ok(())
}

/// A fresh actor and client for the session (same device, no QR); starts it if it was not
/// running here.
pub async fn restart(
    ctx: SessionsContext<'_>,
    row: &SessionRow,
    tier: Tier,
) -> Result<(), ApiError> {
    let restarted = ctx
        .supervisor
        .send(RestartSession(row.id))
        .await
        .map_err(mailbox_error)?;
    if !restarted {
        start(ctx, row, tier).await?;
    }
    Ok(())
}

/// Unlinks the device (through its live client when there is one) and deletes its keys.
pub async fn logout(ctx: SessionsContext<'_>, id: Uuid) -> Result<(), ApiError> {
    {
        let mut conn = ctx.db.get().await?;
        store::set_desired(&mut conn, id, false).await?;
    }
    let located = ctx
        .supervisor
        .send(LocateSession(id))
        .await
        .map_err(mailbox_error)?;
    if let Some(handle) = located {
        handle.send(Logout).await.map_err(mailbox_error)?;
        let _ = ctx.supervisor.send(StopSession(id)).await;
    }
    let mut conn = ctx.db.get().await?;
    store::delete_keys(&mut conn, &[id]).await?;
    if let Some((row, _)) = store::get_session(&mut conn, id).await?
        && row.session_status()? != SessionStatus::LoggedOut
    {
        store::set_idle_status(&mut conn, id, SessionStatus::LoggedOut, true).await?;
        if let Ok(event) = crate::events::insert_event(
            &mut conn,
            row.tenant_id,
            Some(id),
            &EventPayload::Session(SessionEvent::LoggedOut {
                reason: "requested".into(),
            }),
        )
        .await
        {
            ctx.events.publish([event]);
        }
    }
    Ok(())
}

/// The session's health: asked of its actor when it lives here, else read from its row.
pub async fn health(ctx: SessionsContext<'_>, row: &SessionRow) -> Result<SessionHealth, ApiError> {
    let located = ctx
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
        return Ok(SessionHealth {
            healthy: h.healthy,
            status: h.status,
            connected: h.connected,
            logged_in: Some(h.logged_in),
            reconnect_attempts: i64::from(h.reconnect_attempts),
            last_error: h.last_error,
            uptime_secs: Some(h.uptime.as_secs()),
            node: Some(ctx.node_id.to_owned()),
        });
    }
    let lease_live = row.lease_expires_at.is_some_and(|t| t > chrono::Utc::now());
    let status = row.session_status()?;
    let connected = status == SessionStatus::Connected && lease_live;
    Ok(SessionHealth {
        healthy: connected,
        status,
        connected,
        logged_in: None,
        reconnect_attempts: i64::from(row.reconnect_attempts),
        last_error: row.last_error.clone(),
        uptime_secs: None,
        node: row.owner_node.clone(),
    })
}

/// A session's health report.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SessionHealth {
    /// Connected, logged in and answering.
    pub healthy: bool,
    pub status: SessionStatus,
    pub connected: bool,
    /// Asked of the live session only (absent when read from its stored state).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logged_in: Option<bool>,
    pub reconnect_attempts: i64,
    pub last_error: Option<String>,
    /// Asked of the live session only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<u64>,
    /// The node holding the session.
    pub node: Option<String>,
}

/// Asks the session's client for a pairing code.
pub async fn pair_code(
    ctx: SessionsContext<'_>,
    row: &SessionRow,
    phone: String,
) -> Result<String, ApiError> {
    let not_in_qr = |status: &str| ApiError::Conflict {
        code: ErrorCode::SessionNotInQrState,
        message: format!(
            "the session is {status}; start it and ask for a code while it waits to be linked"
        ),
    };
    let handle = ctx
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
            SessionCommandError::NotInQrState(s) | SessionCommandError::NotConnected(s) => {
                not_in_qr(s.as_str())
            }
            SessionCommandError::NotOnWhatsApp(_) => ApiError::Unavailable("whatsapp"),
            SessionCommandError::Upstream(m)
            | SessionCommandError::Invalid(m)
            | SessionCommandError::Refused { text: m, .. } => {
                tracing::warn!(session = %row.id, error = %m, "pair code refused");
                ApiError::Unavailable("whatsapp")
            }
        })?;
    Ok(format_pair_code(&code))
}

/// Asks the session's live client something WhatsApp answers at once: presence, typing,
/// number checks, profiles, blocking ([`LiveCommand`]), its groups ([`GroupCommand`]).
pub async fn live<C, A>(ctx: SessionsContext<'_>, row: &SessionRow, cmd: C) -> Result<A, ApiError>
where
    C: actix::Message<Result = Result<A, SessionCommandError>> + Send + 'static,
    A: Send + 'static,
    wagate_actors::session::SessionActor: actix::Handler<C>,
{
    let not_connected = |status: &str| ApiError::Conflict {
        code: ErrorCode::SessionNotConnected,
        message: format!("the session is {status}; this needs it connected"),
    };
    let Some(handle) = ctx
        .supervisor
        .send(LocateSession(row.id))
        .await
        .map_err(mailbox_error)?
    else {
        return Err(if row.status == SessionStatus::Connected.as_str() {
            ApiError::Conflict {
                code: ErrorCode::SessionNotRunning,
                message: "the session is connected through another node; send this to the node \
                          that holds it"
                    .into(),
            }
        } else {
            not_connected(&row.status)
        });
    };
    handle
        .send(cmd)
        .await
        .map_err(mailbox_error)?
        .map_err(|e| live_error(row, e, not_connected))
}

/// What the tenant is told when a live request fails.
fn live_error(
    row: &SessionRow,
    e: SessionCommandError,
    not_connected: impl Fn(&str) -> ApiError,
) -> ApiError {
    use actix_web::http::StatusCode;
    match e {
        SessionCommandError::NotConnected(s) | SessionCommandError::NotInQrState(s) => {
            not_connected(s.as_str())
        }
        SessionCommandError::NotOnWhatsApp(peer) => ApiError::Rejected {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: ErrorCode::NotOnWhatsapp,
            message: format!("+{} is not on WhatsApp", peer.trim_start_matches('+')),
        },
        SessionCommandError::Invalid(m) => ApiError::validation("request", m),
        // WhatsApp's own refusals keep their meaning: not allowed (401/403), no such thing
        // (404), refused as asked (a revoked invite, a conflict: 406, 409, …).
        SessionCommandError::Refused { code, text } => {
            let (status, error) = match code {
                401 | 403 => (StatusCode::FORBIDDEN, ErrorCode::WhatsappRefused),
                404 => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
                _ => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::WhatsappRefused),
            };
            ApiError::Rejected {
                status,
                code: error,
                message: format!("WhatsApp refused it: {code} {text}"),
            }
        }
        SessionCommandError::Upstream(m) => {
            tracing::info!(session = %row.id, error = %m, "a live request failed upstream");
            ApiError::Rejected {
                status: StatusCode::BAD_GATEWAY,
                code: ErrorCode::WhatsappFailed,
                message: format!("WhatsApp did not do it: {m}"),
            }
        }
    }
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
    ctx: SessionsContext<'_>,
    tenant_id: Uuid,
    tier: Tier,
) -> Result<usize, ApiError> {
    let mut conn = ctx.db.get().await?;
    let ids = store::tenant_session_ids(&mut conn, tenant_id).await?;
    drop(conn);
    let mut moved = 0;
    for id in ids {
        let located = ctx.supervisor.send(LocateSession(id)).await.ok().flatten();
        if located.is_some() {
            ctx.supervisor
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
    ctx: SessionsContext<'_>,
    tenant_id: Uuid,
) -> Result<Vec<Uuid>, ApiError> {
    let mut conn = ctx.db.get().await?;
    let ids = store::tenant_session_ids(&mut conn, tenant_id).await?;
    drop(conn);
    for id in &ids {
        let _ = ctx.supervisor.send(StopSession(*id)).await;
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
    ctx: SessionsContext<'_>,
    per_second: u32,
    concurrency: u32,
) -> anyhow::Result<usize> {
    let mut conn = ctx.db.get().await?;
    let claimable = store::claimable_sessions(&mut conn, ctx.node_id, 100_000).await?;
    drop(conn);
    let mut started = 0usize;
    let pace = (per_second > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(per_second)));
    let mut next = tokio::time::Instant::now();
    let window = concurrency.max(1) as usize;
    let mut connecting: Vec<(SessionHandle, tokio::time::Instant)> = Vec::with_capacity(window);
    for (id, tenant_id, tier) in claimable {
        let Some(tier) = Tier::parse(&tier) else {
            tracing::error!(session = %id, tier, "unknown tier in database: not resumed");
            continue;
        };
        let already = ctx.supervisor.send(LocateSession(id)).await.ok().flatten();
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
        match ctx
            .supervisor
            .send(StartSession(spec(id, tenant_id, tier)))
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
