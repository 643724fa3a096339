//! The actors' ports, implemented on Postgres, the WhatsApp network and Prometheus.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;
use wacore::net::TransportFactory;
use wagate_actors::ports::{
    ClientEventSink, ConnectErrorSink, SessionEvent, SessionStore, TreeObserver, WhatsAppConnector,
};
use wagate_actors::runtime::ArbiterRuntime;
use wagate_actors::session::{DurableInbound, SessionRecord, SessionSpec, SessionStatus};
use wagate_actors::tier::Tier;
use wagate_actors::whatsapp_rust::bot::Bot;

use super::store::{self, SessionStateChange};
use crate::db::DbPool;
use crate::keystore::{PgKeyStore, StoreCipher};
use crate::whatsapp_network::{NetworkHttpClient, WhatsAppNetwork};

/// Session rows, leases and events in Postgres, on behalf of one node.
pub struct PgSessionStore {
    pub db: DbPool,
    pub hub: crate::events::EventHub,
    pub node: String,
    pub lease_ttl: Duration,
}

impl PgSessionStore {
    async fn conn(
        &self,
    ) -> anyhow::Result<
        bb8::PooledConnection<
            '_,
            diesel_async::pooled_connection::AsyncDieselConnectionManager<
                diesel_async::AsyncPgConnection,
            >,
        >,
    > {
        Ok(self.db.get().await?)
    }
}

#[async_trait]
impl SessionStore for PgSessionStore {
    async fn acquire_lease(
        &self,
        session: Uuid,
        state: Option<&SessionRecord>,
    ) -> anyhow::Result<bool> {
        let change = state.map(state_change);
        let mut conn = self.conn().await?;
        Ok(store::acquire_lease(
            &mut conn,
            session,
            &self.node,
            self.lease_ttl.as_secs_f64(),
            change.as_ref(),
        )
        .await?)
    }

    async fn renew_leases(&self, sessions: &[Uuid]) -> anyhow::Result<Vec<Uuid>> {
        let mut conn = self.conn().await?;
        Ok(store::renew_leases(
            &mut conn,
            sessions,
            &self.node,
            self.lease_ttl.as_secs_f64(),
        )
        .await?)
    }

    async fn release_lease(&self, session: Uuid) -> anyhow::Result<()> {
        let mut conn = self.conn().await?;
        Ok(store::release_lease(&mut conn, session, &self.node).await?)
    }

    async fn record(
        &self,
        session: &SessionSpec,
        record: &SessionRecord,
        event: Option<SessionEvent>,
    ) -> anyhow::Result<()> {
        let change = state_change(record);
        let mut conn = self.conn().await?;
        let stored = store::record_state(
            &mut conn,
            session.id,
            session.tenant_id,
            &self.node,
            store::StateWrite {
                change: &change,
                // A fresh actor (a resume, a restart) knows the number only once connected:
                // until then the stored one stands; only a logout forgets it.
                identity: (record.phone.is_some() || record.status == SessionStatus::LoggedOut)
                    .then(|| (record.phone.clone(), record.jid.clone())),
                settled: record.settled,
            },
            event.map(crate::events::EventPayload::Session).as_ref(),
        )
        .await?;
        if let Some(stored) = stored {
            crate::metrics::session_event(&stored.kind);
            self.hub.publish([stored]);
        }
        Ok(())
    }

    async fn forget_device(&self, session: Uuid) -> anyhow::Result<()> {
        let mut conn = self.conn().await?;
        Ok(store::delete_keys(&mut conn, &[session]).await?)
    }
}

/// The columns that store a session's state as its actor reports it.
fn state_change(record: &SessionRecord) -> SessionStateChange {
    SessionStateChange {
        status: record.status.as_str().to_owned(),
        reconnect_attempts: i32::try_from(record.reconnect_attempts).unwrap_or(i32::MAX),
        last_error: record.last_error.clone(),
        qr_code: record.qr.clone(),
        qr_expires_at: record.qr_expires_at.map(DateTime::<Utc>::from),
        updated_at: Utc::now(),
    }
}

/// Builds a session's client: keys in Postgres (encrypted), the build's network, the
/// arbiter's runtime.
pub struct NetworkConnector {
    pub network: WhatsAppNetwork,
    /// One HTTP client for every session: a reqwest client with its TLS config and
    /// session cache costs about 22 KiB, which per session was a fifth of its footprint.
    pub http: NetworkHttpClient,
    pub db: DbPool,
    pub cipher: Arc<StoreCipher>,
    /// Every session's key-store entries, written in groups.
    pub entries: crate::keystore::EntryWriter,
}

#[async_trait]
impl WhatsAppConnector for NetworkConnector {
    async fn build(
        &self,
        session: Uuid,
        runtime: ArbiterRuntime,
        events: ClientEventSink,
        inbound: DurableInbound,
        connect_errors: ConnectErrorSink,
    ) -> anyhow::Result<Bot> {
        let backend = Arc::new(
            PgKeyStore::new(self.db.clone(), session, self.cipher.clone())
                .with_writer(self.entries.clone()),
        );
        let on_event = move |event, _client| {
            events(event);
            async {}
        };
        let builder = Bot::builder()
            .with_backend_arc(backend)
            .with_runtime(runtime)
            .with_push_name("wagate")
            .skip_history_sync()
            .with_inbound_durability_hook(inbound)
            .on_event(on_event);
        let builder = builder.with_http_client(self.http.clone());
        let bot = match &self.network {
            #[cfg(feature = "sandbox")]
            WhatsAppNetwork::Sandbox(sim) => {
                builder
                    .with_transport_factory(ReportingTransportFactory {
                        inner: wagate_sim::InProcessTransportFactory::new(sim.clone()),
                        connect_errors,
                    })
                    .with_version(wagate_sim::client::CLIENT_VERSION)
                    .build()
                    .await
            }
            #[cfg(feature = "sandbox")]
            WhatsAppNetwork::SandboxRemote { ws, .. } => {
                builder
                    .with_transport_factory(ReportingTransportFactory {
                        inner: whatsapp_rust_tokio_transport::TokioWebSocketTransportFactory::new()
                            .with_url(ws.clone()),
                        connect_errors,
                    })
                    .with_version(wagate_sim::client::CLIENT_VERSION)
                    .build()
                    .await
            }
            #[cfg(not(feature = "sandbox"))]
            WhatsAppNetwork::Live => {
                builder
                    .with_transport_factory(ReportingTransportFactory {
                        inner: whatsapp_rust_tokio_transport::TokioWebSocketTransportFactory::new(),
                        connect_errors,
                    })
                    .build()
                    .await
            }
        };
        bot.map_err(|e| anyhow::anyhow!("building the WhatsApp client: {e}"))
    }
}

/// A network's transport factory that also reports every connection it could not open.
struct ReportingTransportFactory<F> {
    inner: F,
    connect_errors: ConnectErrorSink,
}

#[async_trait::async_trait]
impl<F: TransportFactory> TransportFactory for ReportingTransportFactory<F> {
    async fn create_transport(
        &self,
    ) -> anyhow::Result<(
        Arc<dyn wacore::net::Transport>,
        async_channel::Receiver<wacore::net::TransportEvent>,
    )> {
        let created = self.inner.create_transport().await;
        if let Err(e) = &created {
            (self.connect_errors)(format!("{e:#}"));
        }
        created
    }
}

/// The tree's counters, in Prometheus.
pub struct PrometheusObserver;

impl TreeObserver for PrometheusObserver {
    fn status_changed(&self, from: Option<SessionStatus>, to: Option<SessionStatus>) {
        crate::metrics::session_status_moved(from.map(|s| s.as_str()), to.map(|s| s.as_str()));
    }

    fn reconnect_scheduled(&self) {
        crate::metrics::SESSION_RECONNECTS.inc();
    }

    fn qr_code_shown(&self) {
        crate::metrics::SESSION_QR_CODES.inc();
    }

    fn actor_restarted(&self, tier: Tier) {
        crate::metrics::ACTOR_RESTARTS
            .with_label_values(&[tier.as_str()])
            .inc();
    }
}
