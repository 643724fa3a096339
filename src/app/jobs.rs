//! The background jobs of a running node. Each is written and scheduled by the module it
//! belongs to (`schedule(jobs, state)`); this file only lists them, and aborts them all when
//! the server stops.

use std::future::Future;

use actix_web::rt::task::JoinHandle;

use super::AppState;

/// The jobs running beside the HTTP server; dropping this aborts them.
#[derive(Default)]
pub struct Jobs(Vec<JoinHandle<()>>);

impl Jobs {
    /// Runs `job` on the server's runtime until the server stops.
    pub fn spawn(&mut self, job: impl Future<Output = ()> + 'static) {
        self.0.push(actix_web::rt::spawn(job));
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        for job in &self.0 {
            job.abort();
        }
    }
}

/// Starts every background job of this node.
pub fn start(state: &actix_web::web::Data<AppState>) -> Jobs {
    let mut jobs = Jobs::default();
    crate::sessions::jobs::schedule(&mut jobs, state);
    crate::messages::jobs::schedule(&mut jobs, state);
    crate::media::jobs::schedule(&mut jobs, state);
    crate::webhooks::worker::schedule(&mut jobs, state);
    crate::events::relay::schedule(&mut jobs, state);
    jobs
}
