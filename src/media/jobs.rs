//! The media background job: deleting uploads past their retention that no queued message
//! needs any more.

use std::time::Duration;

use crate::app::AppState;
use crate::app::jobs::Jobs;

/// How often uploads past their retention are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

pub fn schedule(jobs: &mut Jobs, state: &actix_web::web::Data<AppState>) {
    let state = state.clone();
    jobs.spawn(async move {
        let retention = chrono::Duration::seconds(state.settings.media.retention_secs as i64);
        let every = SWEEP_INTERVAL.min(Duration::from_secs(
            state.settings.media.retention_secs.max(1),
        ));
        loop {
            tokio::time::sleep(every).await;
            match super::sweep(&state.db, retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(files = n, "uploads past their retention deleted"),
                Err(e) => tracing::warn!(error = %e, "deleting old uploads"),
            }
        }
    });
}
