//! The WhatsApp simulator as its own process: a websocket endpoint for
//! gateways (`ws://ADDR/ws/chat`) and the HTTP control API (`/control/...`).
//!
//! Usage: `wagate-sim [--ws 127.0.0.1:7400] [--control 127.0.0.1:7401]`

use std::net::SocketAddr;

use wagate_sim::{Simulator, control, listen_ws};

fn arg(name: &str, default: &str) -> anyhow::Result<SocketAddr> {
    let args: Vec<String> = std::env::args().collect();
    let value = args
        .windows(2)
        .find(|w| w[0] == name)
        .map(|w| w[1].clone())
        .unwrap_or_else(|| default.to_string());
    value
        .parse()
        .map_err(|e| anyhow::anyhow!("{name} {value}: {e}"))
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Logs go to stderr: stdout's first line is the machine-readable port announcement.
        .with_writer(std::io::stderr)
        .init();
    let ws_addr = arg("--ws", "127.0.0.1:7400")?;
    let control_addr = arg("--control", "127.0.0.1:7401")?;
    let sim = Simulator::new();
    let ws = listen_ws(sim.clone(), ws_addr).await?;
    let (server, control) = control::serve(sim, control_addr)?;
    // Machine-readable first line, so a parent process can find the ports.
    println!(
        "{}",
        serde_json::json!({ "ws": ws.url(), "control": control })
    );
    server.await?;
    drop(ws);
    Ok(())
}
