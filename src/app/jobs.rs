//! The background jobs of a running node. Each is written and scheduled by the module it
//! belongs to (`schedule(jobs, state)`), into this set, which aborts them all when the server
//! stops. A leaf, like the state: modules schedule into it without reaching start-up.

use std::future::Future;

use actix_web::rt::task::JoinHandle;

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
