//! Which WhatsApp network this build talks to.
//!
//! A default build knows only the real WhatsApp network and verifies its
//! certificates. A `sandbox` build knows only the built-in simulator: the
//! real network is compiled out, not switched off, so no setting can point a
//! sandbox build (whose client skips the certificate check) at WhatsApp.

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
    /// A simulator in another process, on a loopback websocket (`sandbox.simulator_url`).
    #[cfg(feature = "sandbox")]
    SandboxRemote(String),
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

    /// `live` or `sandbox`, as `/health` reports it.
    pub fn mode(&self) -> &'static str {
        match self {
            #[cfg(not(feature = "sandbox"))]
            Self::Live => "live",
            #[cfg(feature = "sandbox")]
            Self::Sandbox(_) | Self::SandboxRemote(_) => "sandbox",
        }
    }

    /// Whether this build was compiled with the sandbox.
    pub const fn sandbox_build() -> bool {
        cfg!(feature = "sandbox")
    }
}

/// whatsapp-rust's HTTP side (version lookup, media) on reqwest, for the real network.
#[cfg(not(feature = "sandbox"))]
pub struct ReqwestHttpClient {
    client: reqwest::Client,
}

#[cfg(not(feature = "sandbox"))]
impl ReqwestHttpClient {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()?,
        })
    }
}

#[cfg(not(feature = "sandbox"))]
#[async_trait::async_trait]
impl wacore::net::HttpClient for ReqwestHttpClient {
    async fn execute(
        &self,
        request: wacore::net::HttpRequest,
    ) -> anyhow::Result<wacore::net::HttpResponse> {
        let method = reqwest::Method::from_bytes(request.method.as_bytes())?;
        let mut builder = self.client.request(method, &request.url);
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
