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

    /// whatsapp-rust's HTTP side on this network: media upload and download, no answer
    /// read past `max_body` bytes.
    pub fn http_client(&self, max_body: u64) -> anyhow::Result<NetworkHttpClient> {
        Ok(match self {
            #[cfg(not(feature = "sandbox"))]
            Self::Live => NetworkHttpClient::Reqwest(ReqwestHttpClient::new(None, max_body)?),
            #[cfg(feature = "sandbox")]
            Self::Sandbox(sim) => {
                NetworkHttpClient::Simulator(wagate_sim::SimHttpClient::new(sim.clone()))
            }
            #[cfg(feature = "sandbox")]
            Self::SandboxRemote {
                media: Some(url), ..
            } => NetworkHttpClient::Reqwest(ReqwestHttpClient::new(
                Some((
                    format!("https://{}", wagate_sim::MEDIA_HOST),
                    url.trim_end_matches('/').to_owned(),
                )),
                max_body,
            )?),
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

/// whatsapp-rust's HTTP side (version lookup, media) on reqwest. Only WhatsApp's own hosts
/// are reached, over https (whatsapp-rust builds media URLs from what a sender chose), and
/// no answer is read past `max_body` bytes. In a sandbox build with a simulator in another
/// process, requests to the simulator's media host go to the URL it serves its media on
/// instead (`rewrite`: from prefix, to prefix); nothing else is reachable.
#[derive(Clone)]
pub struct ReqwestHttpClient {
    client: reqwest::Client,
    rewrite: Option<(String, String)>,
    max_body: u64,
}

/// Whether a host is one of WhatsApp's (`*.whatsapp.net`, `*.whatsapp.com`).
fn is_whatsapp_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    ["whatsapp.net", "whatsapp.com"]
        .iter()
        .any(|d| host == *d || host.ends_with(&format!(".{d}")))
}

impl ReqwestHttpClient {
    pub fn new(rewrite: Option<(String, String)>, max_body: u64) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            rewrite,
            max_body,
        })
    }

    fn url(&self, url: &str) -> anyhow::Result<String> {
        let parsed = reqwest::Url::parse(url)?;
        match &self.rewrite {
            None => {
                let host = parsed.host_str().unwrap_or_default();
                anyhow::ensure!(
                    parsed.scheme() == "https"
                        && is_whatsapp_host(host)
                        && parsed.username().is_empty()
                        && parsed.password().is_none()
                        && parsed.port().is_none(),
                    "not a WhatsApp server: {host}"
                );
                Ok(url.to_owned())
            }
            Some((from, to)) => url
                .strip_prefix(from.as_str())
                .filter(|rest| rest.starts_with('/'))
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
        let mut res = builder.send().await?;
        let status_code = res.status().as_u16();
        let too_large = || anyhow::anyhow!("the answer is larger than {} bytes", self.max_body);
        if res.content_length().is_some_and(|n| n > self.max_body) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await? {
            if (body.len() + chunk.len()) as u64 > self.max_body {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(wacore::net::HttpResponse { status_code, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wacore::net::HttpClient as _;

    #[test]
    fn only_whatsapp_hosts_are_reached() {
        let live = ReqwestHttpClient::new(None, 1 << 20).unwrap();
        for ok in [
            "https://mmg.whatsapp.net/v/t62.7118-24/abc.enc?ccb=11-4&token=x",
            "https://media-fra3-1.cdn.whatsapp.net/v/x",
            "https://web.whatsapp.com/check-update?version=1",
        ] {
            assert!(live.url(ok).is_ok(), "{ok}");
        }
        for refused in [
            "https://mmg.whatsapp.net.evil.tld/x",
            "https://mmg.whatsapp.net@evil.tld/x",
            "https://evilwhatsapp.net/x",
            "http://mmg.whatsapp.net/x",
            "https://mmg.whatsapp.net:8443/x",
            "https://127.0.0.1/x",
        ] {
            assert!(live.url(refused).is_err(), "{refused}");
        }
        let sandbox = ReqwestHttpClient::new(
            Some(("https://mmg.sim".into(), "http://127.0.0.1:9".into())),
            1 << 20,
        )
        .unwrap();
        assert_eq!(
            sandbox.url("https://mmg.sim/v/x").unwrap(),
            "http://127.0.0.1:9/v/x"
        );
        assert!(sandbox.url("https://mmg.sim.evil.tld/v/x").is_err());
    }

    /// An answer is read in chunks and abandoned past the cap, declared or not.
    #[tokio::test]
    async fn an_answer_past_the_cap_is_not_read_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for chunked in [false, true] {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                let body = vec![b'x'; 5000];
                let head = if chunked {
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned()
                } else {
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                };
                let _ = sock.write_all(head.as_bytes()).await;
                if chunked {
                    for part in body.chunks(1000) {
                        let _ = sock
                            .write_all(format!("{:x}\r\n", part.len()).as_bytes())
                            .await;
                        let _ = sock.write_all(part).await;
                        let _ = sock.write_all(b"\r\n").await;
                    }
                    let _ = sock.write_all(b"0\r\n\r\n").await;
                } else {
                    let _ = sock.write_all(&body).await;
                }
            }
        });
        let client = ReqwestHttpClient::new(
            Some(("https://mmg.sim".into(), format!("http://127.0.0.1:{port}"))),
            2000,
        )
        .unwrap();
        for _ in 0..2 {
            let err = client
                .execute(wacore::net::HttpRequest {
                    url: "https://mmg.sim/v/x".into(),
                    method: "GET".into(),
                    headers: Default::default(),
                    body: None,
                })
                .await
                .expect_err("refused");
            assert!(err.to_string().contains("larger than 2000"), "{err}");
        }
    }
}
