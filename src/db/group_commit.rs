//! Group commit: many concurrent writers of the same kind of row share one transaction and
//! one statement. Each caller hands in its job and waits for its own answer, which comes only
//! after the shared transaction committed (or failed), so nothing is answered before it is
//! durable.
//!
//! One writer task per kind takes every job waiting (up to a batch) as soon as the previous
//! write is done: under no load a job is written alone, at once; under load the jobs that
//! arrive during one write share the next. One write at a time per kind and node also keeps
//! a node's batches of one kind from waiting on each other's row locks.

use std::future::Future;

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};

type Reply<R> = oneshot::Sender<anyhow::Result<R>>;

/// Records that a group write of `kind` failed and its jobs are being written one at a time.
pub fn fell_back(kind: &'static str) {
    crate::metrics::GROUP_FALLBACKS
        .with_label_values(&[kind])
        .inc();
}

/// A queue of jobs `J` answered with `R` (see the module's notes).
pub struct GroupCommit<J, R> {
    jobs: mpsc::UnboundedSender<(J, Reply<R>)>,
}

impl<J, R> Clone for GroupCommit<J, R> {
    fn clone(&self) -> Self {
        Self {
            jobs: self.jobs.clone(),
        }
    }
}

impl<J: Send + 'static, R: Send + 'static> GroupCommit<J, R> {
    /// Starts the writer on the current runtime. `write` gets up to `max_batch` jobs and
    /// must answer each of them, in order (one result per job). `kind` labels its metrics.
    pub fn start<W, Fut>(kind: &'static str, max_batch: usize, mut write: W) -> Self
    where
        W: FnMut(Vec<J>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<anyhow::Result<R>>> + Send,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<(J, Reply<R>)>();
        tokio::spawn(async move {
            let mut waiting = Vec::with_capacity(max_batch);
            while rx.recv_many(&mut waiting, max_batch).await > 0 {
                let (jobs, replies): (Vec<J>, Vec<Reply<R>>) = waiting.drain(..).unzip();
                let n = jobs.len();
                crate::metrics::GROUP_WRITES
                    .with_label_values(&[kind])
                    .inc();
                crate::metrics::GROUP_JOBS
                    .with_label_values(&[kind])
                    .inc_by(n as u64);
                // A write that panics fails its own jobs, not the writer: every later job
                // would otherwise find it gone.
                let written = std::panic::AssertUnwindSafe(write(jobs))
                    .catch_unwind()
                    .await;
                let panicked = written.is_err();
                if panicked {
                    tracing::error!(kind, jobs = n, "a group write panicked");
                }
                let mut results = written.unwrap_or_default().into_iter();
                for reply in replies {
                    let result = results.next().unwrap_or_else(|| {
                        Err(if panicked {
                            anyhow::anyhow!("a group write of {kind} failed (it panicked)")
                        } else {
                            anyhow::anyhow!("a group write answered fewer than its {n} jobs")
                        })
                    });
                    // A caller that gave up waiting (its request was cancelled) needs no answer.
                    let _ = reply.send(result);
                }
            }
        });
        Self { jobs: tx }
    }

    /// Queues `job` and waits for its answer (after its transaction ended).
    pub async fn submit(&self, job: J) -> anyhow::Result<R> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send((job, reply))
            .map_err(|_| anyhow::anyhow!("the group writer has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the group writer stopped before answering"))?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_jobs_share_writes_and_each_gets_its_own_answer() {
        let writes = Arc::new(AtomicUsize::new(0));
        let w = writes.clone();
        let group = GroupCommit::start("test", 64, move |jobs: Vec<u32>| {
            let w = w.clone();
            async move {
                w.fetch_add(1, Ordering::SeqCst);
                // A write that takes a while, so jobs pile up behind it.
                tokio::time::sleep(Duration::from_millis(20)).await;
                jobs.into_iter()
                    .map(|j| {
                        if j == 13 {
                            Err(anyhow::anyhow!("unlucky"))
                        } else {
                            Ok(j * 2)
                        }
                    })
                    .collect()
            }
        });
        let answers = futures::future::join_all((0..200u32).map(|j| {
            let group = group.clone();
            async move { group.submit(j).await.map_err(|e| e.to_string()) }
        }))
        .await;
        for (j, answer) in answers.iter().enumerate() {
            if j == 13 {
                assert_eq!(answer.as_ref().err().map(String::as_str), Some("unlucky"));
            } else {
                assert_eq!(answer.as_ref().ok(), Some(&(j as u32 * 2)));
            }
        }
        let writes = writes.load(Ordering::SeqCst);
        // 200 jobs in batches of at most 64: at least 4 writes, and far fewer than 200.
        assert!((4..=10).contains(&writes), "{writes} writes");
    }

    #[tokio::test]
    async fn a_write_that_panics_fails_its_jobs_and_the_writer_goes_on() {
        let group = GroupCommit::start("test", 8, |jobs: Vec<u32>| async move {
            assert!(!jobs.contains(&7), "a bug");
            jobs.into_iter().map(Ok).collect()
        });
        let (a, b) = tokio::join!(group.submit(7), group.submit(8));
        for answer in [a, b] {
            let e = answer.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("panicked"), "{e}");
        }
        assert_eq!(group.submit(9).await.ok(), Some(9));
    }

    #[tokio::test]
    async fn a_write_that_answers_too_few_fails_the_rest() {
        let group = GroupCommit::start("test", 8, |jobs: Vec<u32>| async move {
            jobs.into_iter().take(1).map(Ok).collect()
        });
        // One thread: both jobs are queued before the writer first runs, so they share a write.
        let (a, b) = tokio::join!(group.submit(1), group.submit(2));
        assert_eq!(a.ok(), Some(1));
        let b = b.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(b.contains("fewer than its 2 jobs"), "{b}");
    }
}
