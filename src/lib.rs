//! wagate: a multi-tenant WhatsApp gateway.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod configuration;
pub mod db;
pub mod error;
pub mod events;
pub mod http;
pub mod keystore;
pub mod kv;
pub mod local_secrets;
pub mod media;
pub mod messages;
pub mod metrics;
pub mod ops;
pub mod ratelimit;
pub mod sandbox;
pub mod schema;
pub mod sessions;
pub mod startup;
pub mod telemetry;
pub mod tenants;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;
pub mod webhooks;
pub mod whatsapp_network;
