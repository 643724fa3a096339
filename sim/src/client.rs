//! A real whatsapp-rust client wired to a simulator, with its events
//! recorded so tests and benchmarks can wait on them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail};
use async_trait::async_trait;
use tokio::sync::Notify;
use wacore::net::{HttpClient, HttpRequest, HttpResponse, TransportFactory};
use wacore::store::traits::Backend;
use whatsapp_rust::Client;
use whatsapp_rust::bot::{Bot, BotHandle};
use whatsapp_rust::types::events::Event;

/// The WhatsApp Web version the client announces. Given explicitly: without
/// it the client fetches the current version over HTTP, which fails offline.
pub const CLIENT_VERSION: (u32, u32, u32) = (2, 3000, 1_027_000_000);

/// The client's HTTP side when nothing serves it (version lookups, media without a
/// simulator): there is no internet behind the simulator.
pub struct OfflineHttpClient;

#[async_trait]
impl HttpClient for OfflineHttpClient {
    async fn execute(&self, request: HttpRequest) -> anyhow::Result<HttpResponse> {
        Err(anyhow!(
            "no HTTP behind the WhatsApp simulator ({} {})",
            request.method,
            request.url
        ))
    }
}

/// Every event a client emitted, in order, with a way to wait for more.
#[derive(Default)]
pub struct EventLog {
    events: Mutex<Vec<Arc<Event>>>,
    threads: Mutex<std::collections::BTreeSet<String>>,
    notify: Notify,
}

impl EventLog {
    fn push(&self, event: Arc<Event>) {
        if let Ok(mut threads) = self.threads.lock() {
            let current = std::thread::current();
            let name = current.name().unwrap_or("<unnamed>");
            // Events are many and threads few: allocate only for a new name.
            if !threads.contains(name) {
                threads.insert(name.to_string());
            }
        }
        if let Ok(mut events) = self.events.lock() {
            events.push(event);
        }
        self.notify.notify_waiters();
    }

    /// Names of the threads the client's event handlers ran on: shows where
    /// the client's runtime put its tasks.
    pub fn threads(&self) -> Vec<String> {
        self.threads
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The position after the last event so far: wait from here to ignore
    /// what already happened.
    pub fn mark(&self) -> usize {
        self.events.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Whether any event recorded so far, from `from` on, matches: for
    /// asserting that something did not happen up to a point another event
    /// already proved was reached.
    pub fn seen(&self, from: usize, matches: impl Fn(&Event) -> bool) -> bool {
        self.events
            .lock()
            .map(|events| events.iter().skip(from).any(|e| matches(e)))
            .unwrap_or(false)
    }

    /// Waits for the first event at or after `from` for which `pick` returns
    /// something.
    pub async fn wait<T>(
        &self,
        from: usize,
        timeout: Duration,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut next = from;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let events = self
                    .events
                    .lock()
                    .map_err(|_| anyhow!("event log poisoned"))?;
                while next < events.len() {
                    if let Some(found) = pick(&events[next]) {
                        return Ok(found);
                    }
                    next += 1;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!("timed out after {timeout:?} waiting for a client event");
            }
        }
    }
}

/// Options for a simulated client.
pub struct SimClientOptions {
    pub push_name: String,
    /// The simulator whose media servers the client's HTTP side reaches (uploads and
    /// downloads); without one, media transfer fails as it would offline.
    pub media: Option<crate::Simulator>,
}

impl Default for SimClientOptions {
    fn default() -> Self {
        Self {
            push_name: "wagate".into(),
            media: None,
        }
    }
}

/// A running whatsapp-rust client.
pub struct SimClient {
    pub client: Arc<Client>,
    pub events: Arc<EventLog>,
    backend: Arc<dyn Backend>,
    handle: Option<BotHandle>,
}

impl SimClient {
    /// Starts a client over `transport` with `backend` as its store (reuse a
    /// backend to come back as the same linked device).
    pub async fn start(
        transport: impl TransportFactory + 'static,
        backend: Arc<dyn Backend>,
        options: SimClientOptions,
    ) -> anyhow::Result<Self> {
        Self::start_on(
            transport,
            backend,
            options,
            whatsapp_rust::runtime_impl::TokioRuntime,
        )
        .await
    }

    /// Like [`start`](Self::start), with the client's tasks on `runtime`.
    pub async fn start_on(
        transport: impl TransportFactory + 'static,
        backend: Arc<dyn Backend>,
        options: SimClientOptions,
        runtime: impl wacore::runtime::Runtime,
    ) -> anyhow::Result<Self> {
        let events = Arc::new(EventLog::default());
        let log = events.clone();
        let builder = Bot::builder()
            .with_backend_arc(backend.clone())
            .with_transport_factory(transport);
        let builder = match options.media {
            Some(sim) => builder.with_http_client(crate::SimHttpClient::new(sim)),
            None => builder.with_http_client(OfflineHttpClient),
        };
        let bot = builder
            .with_runtime(runtime)
            .with_version(CLIENT_VERSION)
            .with_push_name(options.push_name)
            .skip_history_sync()
            .on_event(move |event, _client| {
                log.push(event);
                async {}
            })
            .build()
            .await
            .map_err(|e| anyhow!("building the client: {e}"))?;
        let client = bot.client();
        let handle = bot.spawn();
        Ok(Self {
            client,
            events,
            backend,
            handle: Some(handle),
        })
    }

    /// A never-paired client on the simulator's in-process transport: it
    /// connects and shows QR codes.
    pub async fn start_unpaired(sim: &crate::Simulator) -> anyhow::Result<Self> {
        Self::start(
            crate::InProcessTransportFactory::new(sim.clone()),
            Self::fresh_backend(),
            SimClientOptions {
                media: Some(sim.clone()),
                ..SimClientOptions::default()
            },
        )
        .await
    }

    /// A fresh in-memory store, as a never-paired device has.
    pub fn fresh_backend() -> Arc<dyn Backend> {
        Arc::new(wacore::store::InMemoryBackend::new())
    }

    pub fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    /// The next QR code payload the client shows (from `from` on).
    pub async fn wait_qr(&self, from: usize, timeout: Duration) -> anyhow::Result<String> {
        self.events
            .wait(from, timeout, |e| match e {
                Event::PairingQrCode(qr) => Some(qr.code.clone()),
                _ => None,
            })
            .await
    }

    /// Waits for an incoming text equal to `body` (from `from` on); returns
    /// its sender.
    pub async fn wait_text(
        &self,
        from: usize,
        timeout: Duration,
        body: &str,
    ) -> anyhow::Result<whatsapp_rust::Jid> {
        self.events
            .wait(from, timeout, |e| match e {
                Event::Messages(batch) => batch.iter().find_map(|m| {
                    (m.message.conversation.as_deref() == Some(body))
                        .then(|| m.info.source.sender.clone())
                }),
                _ => None,
            })
            .await
    }

    /// Waits until the client reports `Connected` (from `from` on).
    pub async fn wait_connected(&self, from: usize, timeout: Duration) -> anyhow::Result<()> {
        self.events
            .wait(from, timeout, |e| {
                matches!(e, Event::Connected(_)).then_some(())
            })
            .await
    }

    /// Stops the client gracefully and hands back its store.
    pub async fn stop(mut self) -> Arc<dyn Backend> {
        if let Some(handle) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), handle.shutdown()).await;
        }
        self.backend.clone()
    }
}

impl Drop for SimClient {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}
