//! The byte level of a WhatsApp connection as the server sees it: the Noise XX
//! responder, the certificate chain we present, and the framed AES-GCM
//! transport that follows.

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use wacore::handshake::NoiseHandshake;
use wacore::libsignal::protocol::KeyPair;
use wacore_binary::Node;
use wacore_binary::consts::{NOISE_PATTERN_XX, WA_CONN_HEADER};
use wacore_noise::NoiseCipher;
use wacore_noise::framing::{FrameDecoder, encode_frame};
use waproto::buffa::{self, Message as _};
use waproto::whatsapp as wa;

/// Builds the certificate chain the simulator presents. The leaf key is the
/// server's static key (the client checks that), and `not_after` is in the
/// past so a paired client never caches the chain for a Noise IK reconnect:
/// every connection speaks XX and the simulator needs no IK responder.
/// Signatures are zeros; only a client built with
/// `danger-skip-cert-chain-verify` accepts them, which is the point.
pub fn cert_chain_bytes(server_static_pub: &[u8; 32]) -> Vec<u8> {
    use wa::cert_chain::noise_certificate::Details;
    let intermediate = Details {
        serial: Some(1),
        issuer_serial: Some(0),
        key: Some(vec![0x5A; 32]),
        not_before: Some(0),
        not_after: Some(1),
    };
    let leaf = Details {
        serial: Some(2),
        issuer_serial: Some(1),
        key: Some(server_static_pub.to_vec()),
        not_before: Some(0),
        not_after: Some(1),
    };
    wa::CertChain {
        leaf: buffa::MessageField::some(wa::cert_chain::NoiseCertificate {
            details: Some(leaf.encode_to_vec()),
            signature: Some(vec![0u8; 64]),
        }),
        intermediate: buffa::MessageField::some(wa::cert_chain::NoiseCertificate {
            details: Some(intermediate.encode_to_vec()),
            signature: Some(vec![0u8; 64]),
        }),
    }
    .encode_to_vec()
}

/// What the client told us in its `ClientFinish`.
pub struct Handshaken {
    pub client_static: [u8; 32],
    pub payload: wa::ClientPayload,
    pub cipher: TransportCipher,
}

/// The server half of Noise XX, driven frame by frame.
pub struct XxResponder {
    noise: NoiseHandshake,
    ephemeral: KeyPair,
}

impl XxResponder {
    /// Consumes the client hello and returns the framed server hello to send.
    pub fn accept_hello(
        hello_frame: &[u8],
        server_static: &KeyPair,
        cert_chain: &[u8],
    ) -> anyhow::Result<(Self, Vec<u8>)> {
        let msg = wa::HandshakeMessage::decode_from_slice(hello_frame)
            .context("client hello is not a HandshakeMessage")?;
        let hello = msg
            .client_hello
            .into_option()
            .ok_or_else(|| anyhow!("no client hello"))?;
        if hello.r#static.is_some() {
            // An IK hello: we never hand out a cacheable chain, so a client
            // only sends one if something is wrong. Refuse it clearly.
            bail!("IK handshakes are not supported by the simulator");
        }
        let client_eph: [u8; 32] = hello
            .ephemeral
            .ok_or_else(|| anyhow!("client hello without ephemeral key"))?
            .try_into()
            .map_err(|_| anyhow!("client ephemeral key is not 32 bytes"))?;

        let mut noise = NoiseHandshake::new(NOISE_PATTERN_XX, &WA_CONN_HEADER)?;
        noise.authenticate(&client_eph);
        let ephemeral = KeyPair::generate(&mut rand10::rng());
        let eph_pub = ephemeral.public_key.public_key_bytes().to_vec();
        noise.authenticate(&eph_pub);
        noise.mix_shared_secret(ephemeral.private_key.serialize(), &client_eph)?;
        let static_pub = server_static.public_key.public_key_bytes().to_vec();
        let encrypted_static = noise.encrypt(&static_pub)?;
        noise.mix_shared_secret(server_static.private_key.serialize(), &client_eph)?;
        let encrypted_cert = noise.encrypt(cert_chain)?;

        let server_hello = wa::HandshakeMessage {
            server_hello: buffa::MessageField::some(wa::handshake_message::ServerHello {
                ephemeral: Some(eph_pub),
                r#static: Some(encrypted_static),
                payload: Some(encrypted_cert),
                ..Default::default()
            }),
            ..Default::default()
        };
        let framed = encode_frame(&server_hello.encode_to_vec(), None)?;
        Ok((Self { noise, ephemeral }, framed))
    }

    /// Consumes the client finish: the client's static key and its login or
    /// registration payload.
    pub fn finish(mut self, finish_frame: &[u8]) -> anyhow::Result<Handshaken> {
        let msg = wa::HandshakeMessage::decode_from_slice(finish_frame)
            .context("client finish is not a HandshakeMessage")?;
        let finish = msg
            .client_finish
            .into_option()
            .ok_or_else(|| anyhow!("no client finish"))?;
        let enc_static = finish
            .r#static
            .ok_or_else(|| anyhow!("finish without static"))?;
        let enc_payload = finish
            .payload
            .ok_or_else(|| anyhow!("finish without payload"))?;
        let client_static: [u8; 32] = self
            .noise
            .decrypt(&enc_static)?
            .try_into()
            .map_err(|_| anyhow!("client static key is not 32 bytes"))?;
        self.noise
            .mix_shared_secret(self.ephemeral.private_key.serialize(), &client_static)?;
        let payload_bytes = self.noise.decrypt(&enc_payload)?;
        let payload = wa::ClientPayload::decode_from_slice(payload_bytes.as_slice())
            .context("client payload")?;
        // The client's (write, read) pair is our (read, write).
        let (client_write, client_read) = self.noise.finish()?;
        Ok(Handshaken {
            client_static,
            payload,
            cipher: TransportCipher {
                read: client_write,
                write: client_read,
                read_counter: 0,
                write_counter: 0,
            },
        })
    }
}

/// AES-GCM with a counter per direction, as every post-handshake frame uses.
pub struct TransportCipher {
    read: NoiseCipher,
    write: NoiseCipher,
    read_counter: u32,
    write_counter: u32,
}

impl TransportCipher {
    /// Decrypts one frame into a node.
    pub fn open(&mut self, frame: &[u8]) -> anyhow::Result<Node> {
        let mut buf = frame.to_vec();
        self.read
            .decrypt_in_place_with_counter(self.read_counter, &mut buf)
            .map_err(|e| anyhow!("frame decrypt failed: {e}"))?;
        self.read_counter = self.read_counter.wrapping_add(1);
        let unpacked = wacore_binary::util::unpack(&buf)?;
        Ok(wacore_binary::marshal::unmarshal_ref(&unpacked)?.to_owned())
    }

    /// Encrypts and frames one node.
    pub fn seal(&mut self, node: &Node) -> anyhow::Result<Bytes> {
        let plain = wacore_binary::marshal::marshal(node)?;
        let sealed = self
            .write
            .encrypt_with_counter(self.write_counter, &plain)
            .map_err(|e| anyhow!("frame encrypt failed: {e}"))?;
        self.write_counter = self.write_counter.wrapping_add(1);
        Ok(Bytes::from(encode_frame(&sealed, None)?))
    }
}

/// Splits the client's byte stream into frames, dropping the connection
/// header that precedes the first one.
pub struct FrameReader {
    decoder: FrameDecoder,
    header_pending: bool,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self {
            decoder: FrameDecoder::new(),
            header_pending: true,
        }
    }
}

impl FrameReader {
    pub fn feed(&mut self, mut data: &[u8]) -> anyhow::Result<()> {
        if self.header_pending {
            // Edge routing info may precede the header; the in-process and
            // loopback transports never send it, so insist on the plain header.
            if !data.starts_with(&WA_CONN_HEADER) {
                bail!("connection does not start with the WhatsApp header");
            }
            data = &data[WA_CONN_HEADER.len()..];
            self.header_pending = false;
        }
        self.decoder.feed(data);
        Ok(())
    }

    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        self.decoder.decode_frame().map(|b| b.to_vec())
    }
}

/// Small readers over owned nodes, so handlers stay legible.
pub trait NodeExt {
    fn attr(&self, key: &str) -> Option<String>;
    fn child(&self, tag: &str) -> Option<&Node>;
    fn kids(&self) -> &[Node];
    fn bytes(&self) -> Option<&[u8]>;
}

impl NodeExt for Node {
    fn attr(&self, key: &str) -> Option<String> {
        self.attrs.get(key).map(|v| v.as_str().into_owned())
    }
    fn child(&self, tag: &str) -> Option<&Node> {
        self.get_optional_child(tag)
    }
    fn kids(&self) -> &[Node] {
        self.children().unwrap_or(&[])
    }
    fn bytes(&self) -> Option<&[u8]> {
        match &self.content {
            Some(wacore_binary::NodeContent::Bytes(b)) => Some(b),
            Some(wacore_binary::NodeContent::String(s)) => Some(s.as_bytes()),
            _ => None,
        }
    }
}
