//! Which WhatsApp network this build talks to.
//!
//! A default build knows only the real WhatsApp network and verifies its
//! certificates. A `sandbox` build knows only the built-in simulator: the
//! real network is compiled out, not switched off, so no setting can point a
//! sandbox build (whose client skips the certificate check) at WhatsApp.

use std::sync::Arc;

use wagate_actors::whatsapp_rust::TokioRuntime;
#[cfg(feature = "sandbox")]
use wagate_actors::whatsapp_rust::download::MediaHost;
use wagate_actors::whatsapp_rust::download::{MediaDownloader, MediaRoute};
#[cfg(feature = "sandbox")]
pub use wagate_sim::Simulator;

/// The network sessions connect to.
#[derive(Clone)]
pub enum WhatsAppNetwork {
    /// WhatsApp itself (`wss://web.whatsapp.com/ws/chat`), certificates verified.
    #[cfg(not(feature = "sandbox"))]
    Live,
    /// The in-process simulator.
    #[cfg(feature = "sandbox")]
    Sandbox(Simulator),
    /// A simulator in another process, on a loopback websocket (`sandbox.simulator_url`),
    /// with its media servers at `media` (`sandbox.simulator_media_url`) when given.
    #[cfg(feature = "sandbox")]
    SandboxRemote { ws: String, media: Option<String> },
}

impl WhatsAppNetwork {
    /// The only network this build can reach.
    pub fn for_this_build() -> Self {
        #[cfg(not(feature = "sandbox"))]
        {
            Self::Live
        }
        #[cfg(feature = "sandbox")]
        {
            Self::Sandbox(Simulator::new())
        }
    }

    /// This build's network as the settings configure it: in a sandbox build, the
    /// in-process simulator, kept in the data directory unless `sandbox.persist_network`
    /// is off.
    pub fn from_settings(settings: &crate::configuration::Settings) -> anyhow::Result<Self> {
        #[cfg(feature = "sandbox")]
        if settings.sandbox.persist_network {
            let dir = settings.application.data_dir.join("sandbox-network");
            return Ok(Self::Sandbox(Simulator::persistent(&dir)?));
        }
        let _ = settings;
        Ok(Self::for_this_build())
    }

    /// Saves what the network still holds in memory (a persistent simulator's last
    /// changes) before the process exits; nothing to do for any other network.
    pub async fn flush(&self) {
        #[cfg(feature = "sandbox")]
        if let Self::Sandbox(sim) = self
            && let Err(e) = sim.persist_changes().await
        {
            tracing::error!(error = %format!("{e:#}"), "saving the simulated network");
        }
    }

    /// `live` or `sandbox`, as `/health` reports it.
    pub fn mode(&self) -> &'static str {
        match self {
            #[cfg(not(feature = "sandbox"))]
            Self::Live => "live",
            #[cfg(feature = "sandbox")]
            Self::Sandbox(_) | Self::SandboxRemote { .. } => "sandbox",
        }
    }

    /// Whether this build was compiled with the sandbox.
    pub const fn sandbox_build() -> bool {
        cfg!(feature = "sandbox")
    }

    /// whatsapp-rust's HTTP side on this network: media upload and download.
    pub fn http_client(&self) -> anyhow::Result<NetworkHttpClient> {
        Ok(match self {
            #[cfg(not(feature = "sandbox"))]
            Self::Live => NetworkHttpClient::Reqwest(ReqwestHttpClient::new(None)?),
            #[cfg(feature = "sandbox")]
            Self::Sandbox(sim) => {
                NetworkHttpClient::Simulator(wagate_sim::SimHttpClient::new(sim.clone()))
            }
            #[cfg(feature = "sandbox")]
            Self::SandboxRemote {
                media: Some(url), ..
            } => NetworkHttpClient::Reqwest(ReqwestHttpClient::new(Some((
                format!("https://{}", wagate_sim::MEDIA_HOST),
                url.trim_end_matches('/').to_owned(),
            )))?),
            #[cfg(feature = "sandbox")]
            Self::SandboxRemote { media: None, .. } => NetworkHttpClient::Offline,
        })
    }

    /// Downloads received media straight from the network's media servers. The CDN
    /// checks the message's signed path, not a session credential, so any node can serve a
    /// download, whoever holds the session and whether or not it is connected.
    pub fn media_downloader(&self, http: NetworkHttpClient) -> MediaDownloader {
        #[cfg(not(feature = "sandbox"))]
        let route = MediaRoute::default_hosts();
        #[cfg(feature = "sandbox")]
        let route = MediaRoute::unauthenticated(vec![MediaHost::new(wagate_sim::MEDIA_HOST)]);
        MediaDownloader::new(Arc::new(http), Arc::new(TokioRuntime), route)
    }
}

/// whatsapp-rust's HTTP client for the network this build reaches.
#[derive(Clone)]
pub enum NetworkHttpClient {
    Reqwest(ReqwestHttpClient),
    /// The in-process simulator's media servers.
    #[cfg(feature = "sandbox")]
    Simulator(wagate_sim::SimHttpClient),
    /// A simulator in another process with no media URL configured: media fails as offline.
    #[cfg(feature = "sandbox")]
    Offline,
}

#[async_trait::async_trait]
impl wacore::net::HttpClient for NetworkHttpClient {
    async fn execute(
        &self,
        request: wacore::net::HttpRequest,
    ) -> anyhow::Result<wacore::net::HttpResponse> {
        match self {
            Self::Reqwest(c) => c.execute(request).await,
            #[cfg(feature = "sandbox")]
            Self::Simulator(c) => c.execute(request).await,
            #[cfg(feature = "sandbox")]
            Self::Offline => wagate_sim::client::OfflineHttpClient.execute(request).await,
        }
    }
}

/// whatsapp-rust's HTTP side (version lookup, media) on reqwest. In a sandbox build with a
/// simulator in another process, requests to the simulator's media host go to the URL it
/// serves its media on instead (`rewrite`: from prefix, to prefix); nothing else is reachable.
#[derive(Clone)]
pub struct ReqwestHttpClient {
    client: reqwest::Client,
    rewrite: Option<(String, String)>,
}

impl ReqwestHttpClient {
    pub fn new(rewrite: Option<(String, String)>) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()?,
            rewrite,
        })
    }

    fn url(&self, url: &str) -> anyhow::Result<String> {
        match &self.rewrite {
            None => Ok(url.to_owned()),
            Some((from, to)) => url
                .strip_prefix(from.as_str())
                .map(|rest| format!("{to}{rest}"))
                .ok_or_else(|| anyhow::anyhow!("no HTTP behind the WhatsApp simulator ({url})")),
        }
    }
}

#[async_trait::async_trait]
impl wacore::net::HttpClient for ReqwestHttpClient {
    async fn execute(
        &self,
        request: wacore::net::HttpRequest,
    ) -> anyhow::Result<wacore::net::HttpResponse> {
        let method = reqwest::Method::from_bytes(request.method.as_bytes())?;
        let mut builder = self.client.request(method, self.url(&request.url)?);
        for (k, v) in &request.headers {
            builder = builder.header(k, v);
        }
        if let Some(body) = request.body {
            builder = builder.body(body.to_vec());
        }
        let res = builder.send().await?;
        let status_code = res.status().as_u16();
        let body = res.bytes().await?.to_vec();
        Ok(wacore::net::HttpResponse { status_code, body })
    }
}
