//! wagate's supervision tree and its actors.
//!
//! This crate knows nothing of HTTP or SQL: what actors need from outside (storage, clocks, the
//! network) reaches them through the traits in [`ports`], which the server crate implements.

pub mod ports;
pub mod runtime;
pub mod supervisor;

pub use supervisor::RootSupervisor;
