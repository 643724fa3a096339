//! What the running application is made of, apart from how it is started.

pub mod state;

pub use state::AppState;
