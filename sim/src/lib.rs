//! A local WhatsApp network for wagate's tests, benchmarks and sandbox mode.
//!
//! The simulator speaks WhatsApp's real wire protocol to the real
//! `whatsapp-rust` client: Noise XX with its own certificate chain, QR
//! pairing by a simulated phone, login, prekeys, usync, Signal-encrypted
//! messages both ways, acks, receipts, an offline queue and logout. Every
//! account's phone (which is also what a "contact" is) is played by the
//! simulator with its own Signal identity; linked devices are real clients.
//!
//! The client only accepts the simulator's certificate chain when built with
//! `danger-skip-cert-chain-verify`, which this crate turns on. wagate depends
//! on it only behind its `sandbox` feature, so a default build can never
//! talk to anything but WhatsApp with its real certificates.

pub mod client;
mod conn;
pub mod control;
pub mod network;
mod signal;
pub mod transport;
mod wire;

pub use client::{EventLog, SimClient, SimClientOptions};
pub use network::{
    COMPOSING_EXPIRES_AFTER, ChatStateSeen, ContactBehaviour, ContactProfile, CountersSnapshot,
    MEDIA_HOST, MediaFetched, MediaFile, ProfileUpdate, ReceiptSeen, ReceivedMessage, SimEvent,
    SimHttpClient, Simulator, Visibility, phone_digits,
};
pub use transport::{InProcessTransportFactory, WsListener, listen_ws};
/// The client library the simulator speaks to, for callers that drive it.
pub use whatsapp_rust;
