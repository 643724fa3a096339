//! The application: the shared state (`state.rs`, a leaf every handler may use), how it is
//! built and run (`server.rs`), its route table (`routes.rs`) and its background jobs
//! (`jobs.rs`). Only `main.rs`, the tests and the benches start it.

pub mod jobs;
pub mod routes;
mod server;
pub mod state;

pub use routes::build_openapi;
pub use server::{Application, RunOptions};
pub use state::AppState;
