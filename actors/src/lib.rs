//! wagate's supervision tree and its actors.
//!
//! This crate knows nothing of HTTP or SQL: what actors need from outside (storage, clocks, the
//! network) reaches them through the traits in [`ports`], which the server crate implements.
//!
//! ```text
//! RootSupervisor
//! ├── ConnectionPoolActor (standard: 10 sessions per shared arbiter)
//! │   └── arbiter ── SessionActor … (each owns one whatsapp-rust client)
//! ├── ConnectionPoolActor (professional: 3 per arbiter)
//! ├── ConnectionPoolActor (enterprise: a dedicated arbiter each)
//! └── AiActor (model calls, the reply pipeline: `ai`)
//! ```

pub mod ai;
pub mod automation;
pub mod backoff;
pub mod directory;
pub mod messaging;
pub mod notices;
pub mod notification;
pub mod pool;
pub mod ports;
pub mod runtime;
pub mod send_slots;
pub mod session;
pub mod supervisor;
pub mod tier;

pub use supervisor::RootSupervisor;
pub use whatsapp_rust;
