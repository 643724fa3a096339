#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Black-box tests of the HTTP API: the real server, real Postgres, through HTTP only.

#[path = "../support/database.rs"]
mod database;

mod ai;
mod auth;
mod automation;
mod browser;
mod crm;
mod dashboard;
mod errors;
mod events;
mod helpers;
mod hygiene;
mod keystore;
mod members;
mod messages;
mod migrations;
mod notifications;
mod operations;
mod quick_replies;
mod rate_limit;
mod redis_fallback;
mod sessions;
mod shutdown;
mod stats;
mod tenants;
mod tiers;
mod webhooks;
