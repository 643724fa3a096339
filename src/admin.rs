//! Admin routes: the live supervision tree, restarts, and deleting a tenant for good.
//! Tenant keys get 403 on all of them.

use actix_web::{HttpResponse, get, post, web};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wagate_actors::supervisor::{GetTree, RestartPool, RestartSession};
use wagate_actors::tier::Tier;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::http::openapi::CommonErrors;
use crate::schema::{
    api_keys, chats, events, media, messages, sandbox_phones, sessions, tenants, wa_store_devices,
    wa_store_entries, webhook_deliveries, webhooks,
};
use crate::sessions::SessionPath;
use crate::sessions::lifecycle;

/// The live supervision tree of this node.
#[derive(Debug, Serialize, ToSchema)]
pub struct TreeView {
    /// This node's name in the fleet.
    pub node: String,
    pub uptime_secs: u64,
    /// The tree is shutting down.
    pub stopping: bool,
    /// Per tier: its arbiters, and per arbiter its sessions (state, mailbox length,
    /// restarts, uptime).
    #[schema(value_type = Vec<Object>)]
    pub pools: Vec<wagate_actors::pool::PoolSnapshot>,
}

/// One session's actor was restarted.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionRestarted {
    pub restarted: bool,
    pub session_id: Uuid,
}

/// A pool's sessions were restarted.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolRestarted {
    pub tier: Tier,
    /// How many sessions.
    pub restarted: usize,
}

/// A tenant deleted for good, with the proof.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantNuked {
    pub tenant_id: Uuid,
    /// What there was, table by table.
    pub deleted: TenantRemains,
    /// What is left: all zero.
    pub remaining: TenantRemains,
    pub verified: bool,
}

/// The live tree: pools → arbiters → sessions (state, mailbox length, restarts, uptime).
#[utoipa::path(
    tag = "admin",
    responses((status = 200, description = "The supervision tree", body = TreeView), CommonErrors),
    security(("api_key" = []))
)]
#[get("/admin/actors")]
pub async fn actors(caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let tree = state
        .supervisor
        .send(GetTree)
        .await
        .map_err(|_| ApiError::Unavailable("supervision tree"))?;
    Ok(HttpResponse::Ok().json(TreeView {
        node: state.node_id.clone(),
        uptime_secs: tree.uptime_secs,
        stopping: tree.stopping,
        pools: tree.pools,
    }))
}

/// Restart one session's actor (its client reconnects from the key store: no QR).
#[utoipa::path(
    tag = "admin",
    params(SessionPath),
    responses((status = 200, description = "Restarted", body = SessionRestarted), CommonErrors),
    security(("api_key" = []))
)]
#[post("/admin/sessions/{session_id}/restart")]
pub async fn restart_session(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<SessionPath>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let (row, _) = crate::sessions::load_for(&state, &caller, path.session_id).await?;
    let restarted = state
        .supervisor
        .send(RestartSession(row.id))
        .await
        .map_err(|_| ApiError::Unavailable("supervision tree"))?;
    if !restarted {
        return Err(ApiError::Conflict {
            code: ErrorCode::SessionNotRunning,
            message: "the session has no actor on this node to restart".into(),
        });
    }
    Ok(HttpResponse::Ok().json(SessionRestarted {
        restarted: true,
        session_id: row.id,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PoolPath {
    /// `standard`, `professional` or `enterprise`.
    pub tier: String,
}

/// Restart every session of one pool; the other pools are untouched.
#[utoipa::path(
    tag = "admin",
    params(PoolPath),
    responses((status = 200, description = "How many were restarted", body = PoolRestarted), CommonErrors),
    security(("api_key" = []))
)]
#[post("/admin/pools/{tier}/restart")]
pub async fn restart_pool(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<PoolPath>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let tier = Tier::parse(&path.tier).ok_or_else(|| {
        ApiError::validation("tier", "must be standard, professional or enterprise")
    })?;
    let restarted = state
        .supervisor
        .send(RestartPool(tier))
        .await
        .map_err(|_| ApiError::Unavailable("supervision tree"))?
        .map_err(|_| ApiError::Unavailable("connection pool"))?;
    Ok(HttpResponse::Ok().json(PoolRestarted { tier, restarted }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantIdPath {
    pub tenant_id: Uuid,
}

/// Sweeps of a nuked tenant's keys after the deletion, and the pause between them.
const NUKE_KEY_SWEEPS: usize = 10;
const NUKE_KEY_SWEEP_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// What is left of a tenant, table by table.
#[derive(Debug, Serialize, ToSchema, Default, PartialEq, Eq)]
pub struct TenantRemains {
    pub tenant: i64,
    pub api_keys: i64,
    pub sessions: i64,
    pub events: i64,
    pub session_keys: i64,
    pub messages: i64,
    pub chats: i64,
    pub webhooks: i64,
    pub webhook_deliveries: i64,
    pub media: i64,
    /// Simulated phone numbers the tenant's sandbox sessions linked.
    pub sandbox_phones: i64,
}

impl TenantRemains {
    pub fn is_empty(&self) -> bool {
        *self == TenantRemains::default()
    }
}

async fn remains(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    session_ids: &[Uuid],
) -> QueryResult<TenantRemains> {
    Ok(TenantRemains {
        tenant: tenants::table
            .find(tenant_id)
            .count()
            .get_result(conn)
            .await?,
        api_keys: api_keys::table
            .filter(api_keys::tenant_id.eq(tenant_id))
            .count()
            .get_result(conn)
            .await?,
        sessions: sessions::table
            .filter(sessions::tenant_id.eq(tenant_id))
            .count()
            .get_result(conn)
            .await?,
        events: events::table
            .filter(events::tenant_id.eq(tenant_id))
            .count()
            .get_result(conn)
            .await?,
        session_keys: wa_store_entries::table
            .filter(wa_store_entries::store_id.eq_any(session_ids))
            .count()
            .get_result::<i64>(conn)
            .await?
            + wa_store_devices::table
                .filter(wa_store_devices::store_id.eq_any(session_ids))
                .count()
                .get_result::<i64>(conn)
                .await?,
        messages: messages::table
            .filter(messages::tenant_id.eq(tenant_id))
            .count()
            .get_result(conn)
            .await?,
        chats: chats::table
            .filter(chats::tenant_id.eq(tenant_id))
            .count()
            .get_result(conn)
            .await?,
        webhooks: webhooks::table
            .filter(webhooks::tenant_id.eq(tenant_id))
            .count()
            .get_result(conn)
            .await?,
        webhook_deliveries: webhook_deliveries::table
            .filter(webhook_deliveries::tenant_id.eq(tenant_id))
            .count()
            .get_result(conn)
            .await?,
        media: media::table
            .filter(media::tenant_id.eq(tenant_id))
            .count()
            .get_result(conn)
            .await?,
        sandbox_phones: sandbox_phones::table
            .filter(sandbox_phones::tenant_id.eq(tenant_id))
            .count()
            .get_result(conn)
            .await?,
    })
}

/// Stop every session of the tenant and delete all of its data; the answer carries a
/// verification (a count, table by table, of what is left: all zero).
#[utoipa::path(
    tag = "admin",
    params(TenantIdPath),
    responses((status = 200, description = "Deleted, with the verification", body = TenantNuked), CommonErrors),
    security(("api_key" = []))
)]
#[post("/admin/tenants/{tenant_id}/nuke")]
pub async fn nuke_tenant(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<TenantIdPath>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let tenant_id = path.tenant_id;
    let ids = lifecycle::stop_tenant_sessions(state.sessions(), tenant_id).await?;
    let mut conn = state.db.get().await?;
    let before = remains(&mut conn, tenant_id, &ids).await?;
    if before.tenant == 0 {
        return Err(ApiError::NotFound("tenant"));
    }
    let ids_tx = ids.clone();
    let change = state.credentials.change(tenant_id);
    conn.transaction(async move |conn| {
        crate::sessions::store::delete_keys(conn, &ids_tx).await?;
        diesel::delete(events::table.filter(events::tenant_id.eq(tenant_id)))
            .execute(conn)
            .await?;
        // Sessions and API keys go with the tenant (ON DELETE CASCADE).
        diesel::delete(tenants::table.find(tenant_id))
            .execute(conn)
            .await?;
        Ok::<_, diesel::result::Error>(())
    })
    .await?;
    state.credentials.changed(change).await;
    // A client that was just stopped can still finish a key-store write its library had in
    // flight: sweep the keys again until a quiet interval finds none (bounded).
    let mut after = remains(&mut conn, tenant_id, &ids).await?;
    let mut quiet = 0;
    for _ in 0..NUKE_KEY_SWEEPS {
        if after.session_keys == 0 {
            quiet += 1;
            if quiet == 2 {
                break;
            }
        } else {
            quiet = 0;
            crate::sessions::store::delete_keys(&mut conn, &ids).await?;
        }
        tokio::time::sleep(NUKE_KEY_SWEEP_PAUSE).await;
        after = remains(&mut conn, tenant_id, &ids).await?;
    }
    tracing::warn!(tenant_id = %tenant_id, "tenant nuked");
    let verified = after.is_empty();
    Ok(HttpResponse::Ok().json(TenantNuked {
        tenant_id,
        deleted: before,
        remaining: after,
        verified,
    }))
}

/// Test-only fault injection: proves the tree restarts what dies.
#[cfg(feature = "test-hooks")]
pub mod faults {
    use super::*;
    use wagate_actors::session::Fault;
    use wagate_actors::supervisor::LocateSession;

    #[derive(Debug, Deserialize)]
    pub struct FaultBody {
        /// `panic` or `kill_arbiter`.
        pub kind: String,
    }

    #[post("/sessions/{session_id}/fault")]
    pub async fn inject(
        caller: Caller,
        state: web::Data<AppState>,
        path: web::Path<SessionPath>,
        body: web::Json<FaultBody>,
    ) -> Result<HttpResponse, ApiError> {
        caller.require_admin()?;
        let fault = match body.kind.as_str() {
            "panic" => Fault::PanicInHandler,
            "kill_arbiter" => Fault::KillArbiter,
            _ => return Err(ApiError::validation("kind", "panic or kill_arbiter")),
        };
        let handle = state
            .supervisor
            .send(LocateSession(path.session_id))
            .await
            .ok()
            .flatten()
            .ok_or(ApiError::NotFound("session"))?;
        handle.do_send(fault);
        Ok(HttpResponse::Accepted().finish())
    }
}

/// The admin's views of the running system.
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(actors)
        .service(restart_session)
        .service(restart_pool)
        .service(nuke_tenant);
}
