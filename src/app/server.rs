//! Building and running the server: database (configured or private), migrations, Redis or its
//! fallback, the supervision tree, the HTTP server (`routes.rs`) and the background jobs
//! (`jobs.rs`). `Application::build` binds the port and
//! returns it, so tests can start the real server on port 0.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use actix_web::dev::{Server, ServerHandle};
use actix_web::web;
use anyhow::Context;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use wagate_actors::RootSupervisor;
use wagate_actors::supervisor::Shutdown;

use super::jobs::Jobs;
use crate::app::AppState;
use crate::events::EventHub;
use crate::whatsapp_network::WhatsAppNetwork;
use wagate_actors::notification::NotificationActor;

use crate::auth::cache::CredentialCache;
use crate::auth::jwt::JwtKeys;
use crate::configuration::Settings;
use crate::db;
use crate::db::private_cluster::PrivateCluster;
use crate::kv::Ephemeral;
use crate::sessions::adapters::{NetworkConnector, PgSessionStore, PrometheusObserver};
use crate::telemetry;
use wagate_actors::pool::PoolConfig;
use wagate_actors::ports::SessionPorts;
use wagate_actors::send_slots::SendSlots;
use wagate_actors::session::SessionConfig;
use wagate_actors::supervisor::TreeConfig;
use wagate_actors::tier::Tier;

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    supervisor: Addr<RootSupervisor>,
    cluster: Option<PrivateCluster>,
    shutdown_timeout: Duration,
}

/// How the process is wired to the outside.
#[derive(Clone)]
pub struct RunOptions {
    /// Stop gracefully on SIGTERM/SIGINT (the binary); tests stop servers through their handle.
    pub handle_signals: bool,
    /// The WhatsApp network to use instead of this build's own (tests run several gateways
    /// on one simulator).
    pub network: Option<WhatsAppNetwork>,
}

/// The supervision tree's configuration, from settings.
fn tree_config(settings: &Settings) -> TreeConfig {
    let s = &settings.sessions;
    let session = SessionConfig {
        reconnect_base: Duration::from_millis(s.reconnect_base_ms),
        reconnect_cap: Duration::from_secs(s.reconnect_cap_secs),
        reconnect_max_attempts: s.reconnect_max_attempts,
        health_check_interval: Duration::from_secs(s.health_check_interval_secs),
        qr_timeout: Duration::from_secs(s.qr_timeout_secs),
        qr_event_min_interval: Duration::from_secs(s.qr_event_min_interval_secs),
        lease_retry_interval: Duration::from_secs(s.lease_renew_interval_secs),
        chat_state_expiry: Duration::from_millis(s.chat_state_expiry_ms),
    };
    let pools = [
        (Tier::Standard, s.pools.standard),
        (Tier::Professional, s.pools.professional),
        (Tier::Enterprise, s.pools.enterprise),
    ]
    .into_iter()
    .map(|(tier, p)| PoolConfig {
        sessions_per_arbiter: p.sessions_per_arbiter,
        idle_reclaim: Duration::from_secs(p.idle_reclaim_secs),
        lease_renew_interval: Duration::from_secs(s.lease_renew_interval_secs),
        ..PoolConfig::defaults_for(tier)
    })
    .collect();
    TreeConfig { session, pools }
}

impl Application {
    pub async fn build(settings: Settings, options: RunOptions) -> anyhow::Result<Application> {
        crate::metrics::init();
        let settings = crate::local_secrets::fill(settings)?;
        let jwt_secret = settings
            .auth
            .jwt_secret
            .as_ref()
            .context("auth.jwt_secret is required")?
            .expose_secret()
            .to_owned();
        let admin_key = settings
            .auth
            .admin_key
            .as_ref()
            .context("auth.admin_key is required")?
            .expose_secret()
            .to_owned();
        telemetry::set_phone_hash_key(&Sha256::digest(format!("wagate-phone-log:{jwt_secret}")));

        let (db_url, cluster) = match &settings.database.url {
            Some(url) => (url.expose_secret().to_owned(), None),
            None => {
                let cluster = PrivateCluster::start(&settings.application.data_dir).await?;
                (cluster.url(), Some(cluster))
            }
        };
        let applied = db::run_migrations(&db_url).await?;
        if !applied.is_empty() {
            tracing::info!(?applied, "database migrated");
        }
        let pool = db::build_pool(
            &db_url,
            settings.database.pool_size,
            Duration::from_secs(settings.database.connect_timeout_secs),
        )
        .await?;

        let ephemeral = match &settings.redis.url {
            Some(url) => Ephemeral::with_redis(
                url.expose_secret(),
                Duration::from_millis(settings.redis.op_timeout_ms),
                Duration::from_secs(settings.redis.retry_interval_secs),
            )?,
            None => Ephemeral::in_memory(),
        };
        if ephemeral.redis_configured() && !matches!(ephemeral.ping_redis().await, Some(Ok(()))) {
            tracing::warn!(
                "Redis is configured but not answering; starting on the in-memory fallback"
            );
        }

        let node_id = settings.sessions.node_id();
        let network = match (&options.network, &settings.sandbox.simulator_url) {
            (Some(network), _) => network.clone(),
            #[cfg(feature = "sandbox")]
            (None, Some(url)) => WhatsAppNetwork::SandboxRemote {
                ws: url.clone(),
                media: settings.sandbox.simulator_media_url.clone(),
            },
            _ => WhatsAppNetwork::from_settings(&settings)?,
        };
        let http = network.http_client(settings.media.max_download_bytes)?;
        let store_cipher = Arc::new(crate::keystore::StoreCipher::new(
            &settings
                .store
                .key_bytes()
                .context("store.encryption_key is required")?,
        ));
        let ephemeral = Arc::new(ephemeral);
        let webhook_wake = Arc::new(tokio::sync::Notify::new());
        let sinks = Arc::new(crate::events::relay::Sinks {
            ephemeral: ephemeral.clone(),
            node: node_id.clone(),
            outbox: webhook_wake.clone(),
        });
        // Its own thread: fan-out to thousands of subscribers never competes with the tree.
        let notifier =
            NotificationActor::start_in_arbiter(&actix::Arbiter::new().handle(), move |_| {
                NotificationActor::new(sinks)
            });
        let hub = EventHub { notifier };
        let directory = Arc::new(wagate_actors::directory::SessionDirectory::default());
        let ports = SessionPorts {
            directory: directory.clone(),
            messages: Arc::new(crate::messages::adapters::PgMessageStore::start(
                pool.clone(),
                hub.clone(),
                settings.messages.clone(),
            )),
            contacts: Arc::new(crate::contacts::adapters::PgContactStore {
                db: pool.clone(),
                hub: hub.clone(),
            }),
            store: Arc::new(PgSessionStore {
                hub: hub.clone(),
                db: pool.clone(),
                node: node_id.clone(),
                lease_ttl: Duration::from_secs(settings.sessions.lease_ttl_secs),
            }),
            connector: Arc::new(NetworkConnector {
                network: network.clone(),
                http: http.clone(),
                db: pool.clone(),
                cipher: store_cipher.clone(),
                entries: crate::keystore::EntryWriter::start(pool.clone()),
            }),
            observer: Arc::new(PrometheusObserver),
            send_slots: {
                let s = settings.messages.send_slots;
                Arc::new(SendSlots::new(
                    s.standard as usize,
                    s.professional as usize,
                    s.enterprise as usize,
                ))
            },
        };
        let supervisor = RootSupervisor::with_sessions(tree_config(&settings), ports).start();
        let ai = crate::ai::start(
            &settings,
            &pool,
            &hub,
            &store_cipher,
            &supervisor,
            &directory,
        )?;
        let automation = crate::automation::start(&settings, &pool, &hub, &supervisor, &directory)?;
        let listener = TcpListener::bind((
            settings.application.host.as_str(),
            settings.application.port,
        ))
        .with_context(|| {
            format!(
                "binding {}:{}",
                settings.application.host, settings.application.port
            )
        })?;
        let port = listener.local_addr()?.port();
        let shutdown_timeout = Duration::from_secs(settings.shutdown.timeout_secs);
        let tls = load_tls(&settings)?;
        let media_downloader = Arc::new(network.media_downloader(http));
        let state = web::Data::new(AppState {
            media_downloader,
            jwt: JwtKeys::new(jwt_secret.as_bytes(), settings.auth.jwt_ttl_secs),
            credentials: CredentialCache::new(settings.auth.credential_cache_entries, db_url),
            admin_key,
            db: pool,
            ephemeral,
            supervisor: supervisor.clone(),
            directory,
            network,
            node_id,
            events: hub,
            webhook_wake,
            reports_wakeup: Arc::new(tokio::sync::Notify::new()),
            cipher: store_cipher,
            ai,
            automation,
            audit: crate::audit::AuditLog::new(settings.audit.buffer),
            settings,
        });
        // The TriggerActor reaches agents and media through the handlers' state.
        let _ = state
            .automation
            .app
            .set(std::sync::Arc::downgrade(&state.clone().into_inner()));
        let accepts = web::Data::new(crate::messages::accepts::AcceptWriter::start(
            state.db.clone(),
            i64::from(state.settings.messages.max_queued_per_tenant),
        ));
        let server = super::routes::http_server(state.clone(), accepts, listener, tls, &options)?;
        Ok(Application {
            port,
            server,
            state,
            supervisor,
            cluster,
            shutdown_timeout,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// The shared state (tests reach the tree and the network through it).
    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// Serves until the server is stopped (signal or handle), then shuts down in order: the
    /// HTTP server finishes in-flight requests, the actor tree stops, the private database stops.
    /// The whole sequence is bounded by `shutdown.timeout_secs`.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Application {
            server,
            state,
            supervisor,
            cluster,
            shutdown_timeout,
            ..
        } = self;
        // Every background job is scheduled by its own module; dropping them aborts them.
        let jobs = start_jobs(&state);
        let served = server.await.context("HTTP server");
        // What the last requests recorded is written before the writer stops.
        state.audit.flush(Duration::from_secs(5)).await;
        drop(jobs);
        served?;
        tracing::info!("HTTP server stopped; stopping the actor tree");
        let stop_tree = async {
            let _ = supervisor.send(Shutdown).await;
        };
        if tokio::time::timeout(shutdown_timeout, stop_tree)
            .await
            .is_err()
        {
            tracing::warn!("the actor tree did not stop in time");
        }
        state.network.flush().await;
        if let Some(cluster) = cluster {
            let stopped = tokio::time::timeout(
                shutdown_timeout,
                tokio::task::spawn_blocking(move || cluster.stop()),
            )
            .await;
            match stopped {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "stopping the private database"),
                Ok(Err(e)) => tracing::warn!(error = %e, "stopping the private database"),
                Err(_) => tracing::warn!("the private database did not stop in time"),
            }
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// Every background job of this node, each scheduled by its own module.
fn start_jobs(state: &web::Data<AppState>) -> Jobs {
    let mut jobs = Jobs::default();
    crate::sessions::jobs::schedule(&mut jobs, state);
    crate::messages::jobs::schedule(&mut jobs, state);
    crate::media::jobs::schedule(&mut jobs, state);
    crate::webhooks::worker::schedule(&mut jobs, state);
    crate::events::relay::schedule(&mut jobs, state);
    crate::auth::cache::schedule(&mut jobs, state);
    crate::audit::schedule(&mut jobs, state);
    crate::crm::jobs::schedule(&mut jobs, state);
    crate::notifications::schedule(&mut jobs, state);
    crate::stats::jobs::schedule(&mut jobs, state);
    crate::stats::reports::schedule(&mut jobs, state);
    jobs
}

fn load_tls(settings: &Settings) -> anyhow::Result<Option<rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (
        &settings.application.tls_cert_path,
        &settings.application.tls_key_path,
    ) else {
        return Ok(None);
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key in {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("the TLS certificate and key do not fit together")?;
    Ok(Some(config))
}
