//! The state every handler shares. A leaf: it names the parts a request may reach and
//! imports no handler, so no handler module depends on start-up.

use std::sync::Arc;

use actix::Addr;
use wagate_actors::RootSupervisor;
use wagate_actors::whatsapp_rust::download::MediaDownloader;

use crate::auth::cache::CredentialCache;
use crate::auth::jwt::JwtKeys;
use crate::configuration::Settings;
use crate::db::DbPool;
use crate::events::EventHub;
use crate::kv::Ephemeral;
use crate::whatsapp_network::WhatsAppNetwork;

/// Everything a handler may need, shared by all workers.
pub struct AppState {
    pub settings: Settings,
    pub db: DbPool,
    pub ephemeral: Arc<Ephemeral>,
    pub jwt: JwtKeys,
    /// Verified credentials, dropped on every node when one is revoked.
    pub credentials: Arc<CredentialCache>,
    pub admin_key: String,
    pub supervisor: Addr<RootSupervisor>,
    /// Where each session's actor lives on this node, without asking the supervisor.
    pub directory: Arc<wagate_actors::directory::SessionDirectory>,
    /// The WhatsApp network sessions reach: the real one, or in a sandbox
    /// build the in-process simulator.
    pub network: WhatsAppNetwork,
    /// This process's name in the fleet: the owner written into session leases.
    pub node_id: String,
    /// Stored events go here to reach WebSocket subscribers (and other nodes).
    pub events: EventHub,
    /// Wakes the webhook workers (new deliveries, replays).
    pub webhook_wake: Arc<tokio::sync::Notify>,
    /// Seals and opens secrets at rest (tenants' AI keys) with the store key.
    pub cipher: Arc<crate::keystore::StoreCipher>,
    /// Every model call goes through it; it runs the reply pipeline.
    pub ai: Addr<wagate_actors::ai::AiActor>,
    /// Where mutating requests are recorded (written in batches by a job).
    pub audit: crate::audit::AuditLog,
    /// The TriggerActor: triggers, flows and their executions.
    pub automation: crate::automation::AutomationHandle,
    /// Fetches received media from the network's media servers, for any session.
    pub media_downloader: Arc<MediaDownloader>,
    /// Wakes this node's report worker (a report was asked for).
    pub reports_wakeup: Arc<tokio::sync::Notify>,
}

/// The part of the state the session lifecycle reaches: the store, this node's supervision
/// tree, the node's name (the owner written into leases) and the event hub. Lifecycle
/// functions and the resume job take this, not the whole state.
#[derive(Clone, Copy)]
pub struct SessionsContext<'a> {
    pub db: &'a DbPool,
    pub supervisor: &'a Addr<RootSupervisor>,
    pub node_id: &'a str,
    pub events: &'a EventHub,
}

impl AppState {
    pub fn sessions(&self) -> SessionsContext<'_> {
        SessionsContext {
            db: &self.db,
            supervisor: &self.supervisor,
            node_id: &self.node_id,
            events: &self.events,
        }
    }
}
