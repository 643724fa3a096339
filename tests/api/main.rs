#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Black-box tests of the HTTP API: the real server, real Postgres, through HTTP only.

#[path = "../support/database.rs"]
mod database;

mod ai;
mod auth;
mod automation;
mod browser;
mod errors;
mod events;
mod helpers;
mod hygiene;
mod keystore;
mod messages;
mod migrations;
mod operations;
mod rate_limit;
mod redis_fallback;
mod sessions;
mod shutdown;
mod tenants;
mod webhooks;
