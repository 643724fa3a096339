//! The sessions' background job: resuming the sessions that were running (at boot), then
//! taking over running sessions whose owner died (their lease expired), at a bounded rate.

use std::time::Duration;

use crate::app::AppState;
use crate::app::jobs::Jobs;

pub fn schedule(jobs: &mut Jobs, state: &actix_web::web::Data<AppState>) {
    jobs.spawn(resume_sessions(state.clone()));
}

async fn resume_sessions(state: actix_web::web::Data<AppState>) {
    let settings = &state.settings.sessions;
    let every = Duration::from_secs(settings.orphan_scan_interval_secs);
    let mut first = true;
    loop {
        let started_at = std::time::Instant::now();
        match super::lifecycle::resume_claimable(
            state.sessions(),
            settings.resume_per_second,
            settings.resume_concurrency,
        )
        .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                sessions = n,
                took_ms = started_at.elapsed().as_millis() as u64,
                boot = first,
                "sessions resumed"
            ),
            Err(e) => tracing::warn!(error = %e, "looking for sessions to resume"),
        }
        first = false;
        tokio::time::sleep(every).await;
    }
}
