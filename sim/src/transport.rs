//! How clients reach the simulator: an in-process transport (channels, no
//! sockets) and a loopback websocket listener for a simulator running as its
//! own process (`ws://127.0.0.1:PORT/ws/chat`).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::anyhow;
use async_trait::async_trait;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wacore::net::{DisconnectReason, Transport, TransportEvent, TransportFactory};

use crate::conn::{Outgoing, serve};
use crate::network::Simulator;

/// A `TransportFactory` whose connections go straight into a simulator in
/// the same process.
#[derive(Clone)]
pub struct InProcessTransportFactory {
    sim: Simulator,
}

impl InProcessTransportFactory {
    pub fn new(sim: Simulator) -> Self {
        Self { sim }
    }
}

struct InProcessTransport {
    /// Taken on disconnect: dropping the sender is how the server side
    /// learns that the client hung up.
    to_server: std::sync::Mutex<Option<mpsc::UnboundedSender<Bytes>>>,
    events: async_channel::Sender<TransportEvent>,
}

#[async_trait]
impl Transport for InProcessTransport {
    async fn send(&self, data: Bytes) -> anyhow::Result<()> {
        let guard = self
            .to_server
            .lock()
            .map_err(|_| anyhow!("transport lock poisoned"))?;
        guard
            .as_ref()
            .ok_or_else(|| anyhow!("transport disconnected"))?
            .send(data)
            .map_err(|_| anyhow!("simulator connection closed"))
    }

    async fn disconnect(&self) {
        if let Ok(mut guard) = self.to_server.lock() {
            guard.take();
        }
        // Like the websocket transport: the local close is reported on this
        // connection's channel before `disconnect` returns, and nothing after it.
        let _ = self
            .events
            .try_send(TransportEvent::Disconnected(DisconnectReason::Unknown));
        self.events.close();
    }
}

#[async_trait]
impl TransportFactory for InProcessTransportFactory {
    async fn create_transport(
        &self,
    ) -> anyhow::Result<(Arc<dyn Transport>, async_channel::Receiver<TransportEvent>)> {
        if !self.sim.admit_connection() {
            return Err(anyhow!("connection refused (simulated outage)"));
        }
        let (to_server, from_client) = mpsc::unbounded_channel::<Bytes>();
        let (to_client, mut from_server) = mpsc::unbounded_channel::<Outgoing>();
        let (events_tx, events_rx) = async_channel::unbounded();
        let transport = Arc::new(InProcessTransport {
            to_server: std::sync::Mutex::new(Some(to_server)),
            events: events_tx.clone(),
        });
        let _ = events_tx.send(TransportEvent::Connected).await;

        tokio::spawn(serve(self.sim.clone(), from_client, to_client));

        let watcher = transport.clone();
        tokio::spawn(async move {
            loop {
                match from_server.recv().await {
                    Some(Outgoing::Data(data)) => {
                        if events_tx
                            .send(TransportEvent::DataReceived(data))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Some(Outgoing::Close) | None => {
                        let _ = events_tx
                            .send(TransportEvent::Disconnected(DisconnectReason::StreamEnded))
                            .await;
                        break;
                    }
                }
            }
            if let Ok(mut guard) = watcher.to_server.lock() {
                guard.take();
            }
        });
        Ok((transport, events_rx))
    }
}

/// A running websocket listener.
pub struct WsListener {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl WsListener {
    /// The URL a whatsapp-rust websocket transport should dial.
    pub fn url(&self) -> String {
        format!("ws://{}/ws/chat", self.addr)
    }
}

impl Drop for WsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the simulator over websockets on `addr` (use port 0 for any).
/// Only loopback addresses are accepted: the simulator is never a public
/// service.
pub async fn listen_ws(sim: Simulator, addr: SocketAddr) -> anyhow::Result<WsListener> {
    if !addr.ip().is_loopback() {
        return Err(anyhow!(
            "the simulator only listens on loopback, not {addr}"
        ));
    }
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let sim = sim.clone();
            tokio::spawn(async move {
                if !sim.admit_connection() {
                    return;
                }
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let (mut sink, mut stream) = ws.split();
                let (to_server, from_client) = mpsc::unbounded_channel::<Bytes>();
                let (to_client, mut from_server) = mpsc::unbounded_channel::<Outgoing>();
                tokio::spawn(serve(sim, from_client, to_client));
                let writer = tokio::spawn(async move {
                    while let Some(out) = from_server.recv().await {
                        match out {
                            Outgoing::Data(d) => {
                                if sink.send(WsMessage::Binary(d)).await.is_err() {
                                    break;
                                }
                            }
                            Outgoing::Close => {
                                let _ = sink.close().await;
                                break;
                            }
                        }
                    }
                });
                while let Some(Ok(msg)) = stream.next().await {
                    let delivered = match msg {
                        WsMessage::Binary(b) => to_server.send(b).is_ok(),
                        WsMessage::Close(_) => false,
                        _ => true,
                    };
                    if !delivered {
                        break;
                    }
                }
                drop(to_server);
                let _ = writer.await;
            });
        }
    });
    Ok(WsListener { addr, task })
}
