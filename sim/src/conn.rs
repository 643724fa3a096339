//! One client connection, whatever carries its bytes: handshake, then
//! stanzas in and out until either side closes.

use std::time::Duration;

use anyhow::{anyhow, bail};
use bytes::Bytes;
use tokio::sync::mpsc;
use wacore_binary::Node;

use crate::network::{ConnCmd, Simulator, registration_from_payload};
use crate::wire::{FrameReader, TransportCipher, XxResponder};

/// A client that connects and never finishes the handshake is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// After a stream error the client hangs up itself (and reconnects if the
/// error says so). Closing from our side as well races its reconnect and can
/// leave it with two sockets, so we only close if it has not within this time.
const STREAM_ERROR_GRACE: Duration = Duration::from_secs(5);

/// Bytes towards the client, or the end of the connection.
pub enum Outgoing {
    Data(Bytes),
    Close,
}

/// Serves one connection until it ends. `inbound` yields what the client
/// wrote; `outbound` carries what the server writes.
pub async fn serve(
    sim: Simulator,
    mut inbound: mpsc::UnboundedReceiver<Bytes>,
    outbound: mpsc::UnboundedSender<Outgoing>,
) {
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
    let conn = sim.open_conn(cmd_tx);
    let result = run(&sim, conn, &mut inbound, &outbound, &mut cmd_rx).await;
    if let Err(e) = result {
        tracing::debug!(conn, error = %e, "sim: connection ended");
    }
    sim.close_conn(conn);
    let _ = outbound.send(Outgoing::Close);
}

async fn next_frame(
    sim: &Simulator,
    reader: &mut FrameReader,
    inbound: &mut mpsc::UnboundedReceiver<Bytes>,
) -> anyhow::Result<Vec<u8>> {
    loop {
        if let Some(frame) = reader.next_frame() {
            sim.count_frame_in();
            return Ok(frame);
        }
        let data = inbound
            .recv()
            .await
            .ok_or_else(|| anyhow!("client closed the connection"))?;
        reader.feed(&data)?;
    }
}

async fn run(
    sim: &Simulator,
    conn: u64,
    inbound: &mut mpsc::UnboundedReceiver<Bytes>,
    outbound: &mpsc::UnboundedSender<Outgoing>,
    cmds: &mut mpsc::UnboundedReceiver<ConnCmd>,
) -> anyhow::Result<()> {
    let mut reader = FrameReader::default();

    let handshake = async {
        let hello = next_frame(sim, &mut reader, inbound).await?;
        let (responder, server_hello) =
            XxResponder::accept_hello(&hello, sim.server_static(), sim.cert_chain())?;
        send_raw(sim, outbound, Bytes::from(server_hello)).await?;
        let finish = next_frame(sim, &mut reader, inbound).await?;
        responder.finish(&finish)
    };
    let done = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| anyhow!("handshake timed out"))??;
    let mut cipher = done.cipher;

    match (done.payload.username, done.payload.device) {
        (Some(username), device) => {
            let device = u16::try_from(device.unwrap_or(0))?;
            match sim.login(conn, username, device, done.client_static) {
                Ok(success) => send_node(sim, outbound, &mut cipher, &success).await?,
                Err(failure) => {
                    send_node(sim, outbound, &mut cipher, &failure).await?;
                    return Ok(());
                }
            }
        }
        (None, _) => {
            let registration = registration_from_payload(done.client_static, &done.payload)?;
            sim.begin_registration(conn, registration);
        }
    }

    let mut hang_up_by: Option<tokio::time::Instant> = None;
    loop {
        let grace = async {
            match hang_up_by {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = grace => return Ok(()),
            frame = next_frame(sim, &mut reader, inbound) => {
                let node = cipher.open(&frame?)?;
                if node.tag == "xmlstreamend" {
                    return Ok(());
                }
                if let Err(e) = sim.handle_stanza(conn, node).await {
                    tracing::warn!(conn, error = %e, "sim: stanza rejected");
                }
                // What the stanza changed is saved before any answer to it (queued for
                // this loop) reaches the client: an acked message survives a crash.
                if let Err(e) = sim.persist_changes().await {
                    tracing::error!(conn, error = %format!("{e:#}"), "sim: saving the network");
                }
            }
            cmd = cmds.recv() => match cmd {
                Some(ConnCmd::Send(node)) => send_node(sim, outbound, &mut cipher, &node).await?,
                Some(ConnCmd::Close(Some(stream_error))) => {
                    send_node(sim, outbound, &mut cipher, &stream_error).await?;
                    hang_up_by.get_or_insert(tokio::time::Instant::now() + STREAM_ERROR_GRACE);
                }
                // A cut, as a network failure would: no stream end.
                Some(ConnCmd::Close(None)) => return Ok(()),
                None => bail!("network dropped the connection"),
            },
        }
    }
}

async fn send_raw(
    sim: &Simulator,
    outbound: &mpsc::UnboundedSender<Outgoing>,
    data: Bytes,
) -> anyhow::Result<()> {
    let latency = sim.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    sim.count_frame_out();
    outbound
        .send(Outgoing::Data(data))
        .map_err(|_| anyhow!("client transport gone"))
}

async fn send_node(
    sim: &Simulator,
    outbound: &mpsc::UnboundedSender<Outgoing>,
    cipher: &mut TransportCipher,
    node: &Node,
) -> anyhow::Result<()> {
    let frame = cipher.seal(node)?;
    send_raw(sim, outbound, frame).await
}
