//! Where a benchmark's gateway finds WhatsApp: the simulator in the benchmark's own process,
//! or (`BENCH_REMOTE_SIM=1`) in a child process (this benchmark binary again) reached over
//! loopback websockets, as the gateway reaches WhatsApp, so that the gateway's CPU and memory
//! can be read apart from the simulated phones'. Shared by the gateway's benchmarks
//! (`#[path]`-included).

#![allow(dead_code)]

use serde_json::{Value, json};
use wagate::whatsapp_network::{Simulator, WhatsAppNetwork};

use super::processes::rss_kib_of;

/// Set in the child process that serves the simulator for `BENCH_REMOTE_SIM=1`.
pub const ROLE_ENV: &str = "WAGATE_BENCH_ROLE";

/// Where the gateway's WhatsApp is: in this process, or a simulator in a child process.
pub enum Network {
    InProcess(Simulator),
    Remote {
        child: std::process::Child,
        ws: String,
        control: String,
        http: reqwest::Client,
    },
}

impl Network {
    pub fn start() -> Self {
        if !std::env::var("BENCH_REMOTE_SIM").is_ok_and(|v| v == "1") {
            return Self::InProcess(Simulator::new());
        }
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .env(ROLE_ENV, "simulator")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ports: Value = serde_json::from_str(&line).unwrap();
        Self::Remote {
            child,
            ws: ports["ws"].as_str().unwrap().to_owned(),
            control: ports["control"].as_str().unwrap().to_owned(),
            http: reqwest::Client::new(),
        }
    }

    pub fn for_gateway(&self) -> WhatsAppNetwork {
        match self {
            Self::InProcess(sim) => WhatsAppNetwork::Sandbox(sim.clone()),
            Self::Remote { ws, control, .. } => WhatsAppNetwork::SandboxRemote {
                ws: ws.clone(),
                media: Some(control.clone()),
            },
        }
    }

    pub async fn scan_qr(&self, qr: &str, phone: &str) -> Result<(), String> {
        match self {
            Self::InProcess(sim) => sim
                .scan_qr(qr, phone)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Self::Remote { control, http, .. } => {
                let res = http
                    .post(format!("{control}/control/scan"))
                    .json(&json!({"qr": qr, "phone": phone}))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if res.status().is_success() {
                    Ok(())
                } else {
                    Err(res.text().await.unwrap_or_default())
                }
            }
        }
    }

    pub async fn drop_all_connections(&self) {
        match self {
            Self::InProcess(sim) => {
                sim.drop_all_connections();
            }
            Self::Remote { control, http, .. } => {
                let res = http
                    .post(format!("{control}/control/connections/drop"))
                    .send()
                    .await
                    .unwrap();
                assert!(res.status().is_success());
            }
        }
    }

    pub async fn connections_total(&self) -> u64 {
        match self {
            Self::InProcess(sim) => sim.counters().connections_total,
            Self::Remote { control, http, .. } => {
                let v = json_of(http.get(format!("{control}/control/counters"))).await;
                v["connections_total"].as_u64().unwrap()
            }
        }
    }

    /// The simulator process's RSS, when it has its own.
    pub fn simulator_rss_mib(&self) -> Option<f64> {
        match self {
            Self::InProcess(_) => None,
            Self::Remote { child, .. } => Some(rss_kib_of(child.id()) / 1024.0),
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Self::Remote { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The child process of `BENCH_REMOTE_SIM=1`: the simulator's websocket and control API on
/// loopback ports, printed as the first line of stdout. It exits when its parent closes stdin.
pub async fn serve_simulator() {
    let sim = Simulator::new();
    let ws = wagate_sim::listen_ws(sim.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (server, control) =
        wagate_sim::control::serve(sim, "127.0.0.1:0".parse().unwrap()).unwrap();
    println!("{}", json!({"ws": ws.url(), "control": control}));
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    server.await.unwrap();
    drop(ws);
}

impl Network {
    /// Whether the simulator runs in a child process.
    pub fn is_remote(&self) -> bool {
        matches!(self, Self::Remote { .. })
    }

    /// The simulator process's id (this process's when it is in-process).
    pub fn pid(&self) -> u32 {
        match self {
            Self::InProcess(_) => std::process::id(),
            Self::Remote { child, .. } => child.id(),
        }
    }

    /// The websocket and control URLs of a simulator in a child process.
    pub fn remote_urls(&self) -> Option<(String, String)> {
        match self {
            Self::InProcess(_) => None,
            Self::Remote { ws, control, .. } => Some((ws.clone(), control.clone())),
        }
    }

    /// A contact's text to an account, as the contact's phone sends it (the simulator
    /// encrypts it for every device of the account).
    pub async fn inject_text(&self, from: &str, to: &str, text: &str) -> Result<String, String> {
        match self {
            Self::InProcess(sim) => sim
                .inject_text(from, to, text)
                .await
                .map_err(|e| e.to_string()),
            Self::Remote { control, http, .. } => {
                let res = http
                    .post(format!("{control}/control/inject"))
                    .json(&json!({"from": from, "to": to, "text": text}))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !res.status().is_success() {
                    return Err(res.text().await.unwrap_or_default());
                }
                let v: Value = res.json().await.map_err(|e| e.to_string())?;
                Ok(v["id"].as_str().unwrap_or_default().to_owned())
            }
        }
    }

    /// How a contact behaves (receipts after a delay, or none).
    pub async fn set_contact_behaviour(
        &self,
        phone: &str,
        deliver_after_ms: Option<u64>,
        read_after_ms: Option<u64>,
    ) {
        match self {
            Self::InProcess(sim) => sim
                .set_contact_behaviour(
                    phone,
                    wagate_sim::network::ContactBehaviour {
                        deliver_after_ms,
                        read_after_ms,
                    },
                )
                .unwrap(),
            Self::Remote { control, http, .. } => {
                let res = http
                    .put(format!("{control}/control/contacts/{phone}/behaviour"))
                    .json(&json!({"deliver_after_ms": deliver_after_ms, "read_after_ms": read_after_ms}))
                    .send()
                    .await
                    .unwrap();
                assert!(res.status().is_success(), "{:?}", res.text().await);
            }
        }
    }
}

/// Sends a request and reads its JSON answer (a benchmark has no failure to recover from).
pub async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}
