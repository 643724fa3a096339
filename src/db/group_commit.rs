//! Group commit: many concurrent writers of the same kind of row share one transaction and
//! one statement. Each caller hands in its job and waits for its own answer, which comes only
//! after the shared transaction committed (or failed), so nothing is answered before it is
//! durable.
//!
//! One writer task per kind takes every job waiting (up to a batch) as soon as the previous
//! write is done: under no load a job is written alone, at once; under load the jobs that
//! arrive during one write share the next. One write at a time per kind and node also keeps
//! a node's batches of one kind from waiting on each other's row locks.
//!
//! A group whose write fails has each of its jobs written alone, the way it was written before
//! groups (`wagate_group_fallbacks_total` counts these), so one bad row or a fault of the
//! group statement fails no other job. A write that panics fails only its own jobs.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};

type Reply<R> = oneshot::Sender<anyhow::Result<R>>;

/// One kind of group write: how a group of jobs is written together, and how one job is
/// written alone when its group's write failed.
pub trait GroupWrite: Send + Sync + 'static {
    type Job: Send + Sync + 'static;
    type Answer: Send + 'static;

    /// Names the kind in metrics and logs.
    const KIND: &'static str;

    /// Writes `jobs` together; answers each, in order.
    fn write_group(
        &self,
        jobs: &[Self::Job],
    ) -> impl Future<Output = anyhow::Result<Vec<Self::Answer>>> + Send;

    /// Writes one job alone (its group's write failed).
    fn write_one(
        &self,
        job: Self::Job,
    ) -> impl Future<Output = anyhow::Result<Self::Answer>> + Send;
}

/// A queue of jobs written by `W` (see the module's notes).
pub struct GroupCommit<W: GroupWrite> {
    jobs: mpsc::UnboundedSender<(W::Job, Reply<W::Answer>)>,
}

impl<W: GroupWrite> Clone for GroupCommit<W> {
    fn clone(&self) -> Self {
        Self {
            jobs: self.jobs.clone(),
        }
    }
}

impl<W: GroupWrite> GroupCommit<W> {
    /// Starts the writer on the current runtime, writing up to `max_batch` jobs at a time.
    pub fn start(writer: W, max_batch: usize) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(W::Job, Reply<W::Answer>)>();
        tokio::spawn(async move {
            let mut waiting = Vec::with_capacity(max_batch);
            while rx.recv_many(&mut waiting, max_batch).await > 0 {
                let (jobs, replies): (Vec<W::Job>, Vec<Reply<W::Answer>>) =
                    waiting.drain(..).unzip();
                let answers = write(&writer, jobs).await;
                for (reply, answer) in replies.into_iter().zip(answers) {
                    // A caller that gave up waiting (its request was cancelled) needs no answer.
                    let _ = reply.send(answer);
                }
            }
        });
        Self { jobs: tx }
    }

    /// Queues `job` and waits for its answer (after its transaction ended).
    pub async fn submit(&self, job: W::Job) -> anyhow::Result<W::Answer> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send((job, reply))
            .map_err(|_| anyhow::anyhow!("the group writer has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the group writer stopped before answering"))?
    }
}

/// Writes one group: exactly one answer per job, in order.
async fn write<W: GroupWrite>(writer: &W, jobs: Vec<W::Job>) -> Vec<anyhow::Result<W::Answer>> {
    let (kind, n) = (W::KIND, jobs.len());
    crate::metrics::GROUP_WRITES
        .with_label_values(&[kind])
        .inc();
    crate::metrics::GROUP_JOBS
        .with_label_values(&[kind])
        .inc_by(n as u64);
    // A write that panics fails its own jobs, not the writer: every later job would otherwise
    // find it gone.
    let mut panicked = false;
    let answers: Vec<anyhow::Result<W::Answer>> = match AssertUnwindSafe(writer.write_group(&jobs))
        .catch_unwind()
        .await
    {
        Ok(Ok(answers)) => answers.into_iter().map(Ok).collect(),
        Ok(Err(e)) => {
            crate::metrics::GROUP_FALLBACKS
                .with_label_values(&[kind])
                .inc();
            tracing::warn!(error = %e, kind, jobs = n, "a group write failed; writing each job alone");
            let mut answers = Vec::with_capacity(n);
            for job in jobs {
                answers.push(
                    AssertUnwindSafe(writer.write_one(job))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| Err(panic_error(kind))),
                );
            }
            answers
        }
        Err(_) => {
            tracing::error!(kind, jobs = n, "a group write panicked");
            panicked = true;
            Vec::new()
        }
    };
    let mut answers = answers.into_iter();
    (0..n)
        .map(|_| {
            answers.next().unwrap_or_else(|| {
                Err(if panicked {
                    panic_error(kind)
                } else {
                    anyhow::anyhow!("a group write answered fewer than its {n} jobs")
                })
            })
        })
        .collect()
}

fn panic_error(kind: &str) -> anyhow::Error {
    anyhow::anyhow!("a group write of {kind} failed (it panicked)")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Doubles each job, after a pause that lets jobs pile up; 13 is answered with an error
    /// of its own, `panic_on` panics the group write, and `fail_groups` fails every group
    /// write (each job is then written alone, times ten).
    #[derive(Default)]
    struct Doubling {
        writes: Arc<AtomicUsize>,
        panic_on: Option<u32>,
        answer_only_first: bool,
        fail_groups: bool,
    }

    impl GroupWrite for Doubling {
        type Job = u32;
        type Answer = Result<u32, String>;
        const KIND: &'static str = "test";

        async fn write_group(&self, jobs: &[u32]) -> anyhow::Result<Vec<Result<u32, String>>> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            assert!(self.panic_on.is_none_or(|p| !jobs.contains(&p)), "a bug");
            if self.fail_groups {
                anyhow::bail!("the group statement failed");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let answers = jobs.iter().map(|j| match j {
                13 => Err("unlucky".to_owned()),
                j => Ok(j * 2),
            });
            Ok(if self.answer_only_first {
                answers.take(1).collect()
            } else {
                answers.collect()
            })
        }

        async fn write_one(&self, job: u32) -> anyhow::Result<Result<u32, String>> {
            Ok(Ok(job * 10))
        }
    }

    #[tokio::test]
    async fn concurrent_jobs_share_writes_and_each_gets_its_own_answer() {
        let writes = Arc::new(AtomicUsize::new(0));
        let group = GroupCommit::start(
            Doubling {
                writes: writes.clone(),
                ..Doubling::default()
            },
            64,
        );
        let answers = futures::future::join_all((0..200u32).map(|j| {
            let group = group.clone();
            async move {
                group
                    .submit(j)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|answer| answer)
            }
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
    async fn a_failed_group_has_each_job_written_alone() {
        let group = GroupCommit::start(
            Doubling {
                fail_groups: true,
                ..Doubling::default()
            },
            8,
        );
        // One thread: both jobs are queued before the writer first runs, so they share a write.
        let (a, b) = tokio::join!(group.submit(1), group.submit(2));
        assert_eq!(a.ok(), Some(Ok(10)));
        assert_eq!(b.ok(), Some(Ok(20)));
    }

    #[tokio::test]
    async fn a_write_that_panics_fails_its_jobs_and_the_writer_goes_on() {
        let group = GroupCommit::start(
            Doubling {
                panic_on: Some(7),
                ..Doubling::default()
            },
            8,
        );
        let (a, b) = tokio::join!(group.submit(7), group.submit(8));
        for answer in [a, b] {
            let e = answer.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("panicked"), "{e}");
        }
        assert_eq!(group.submit(9).await.ok(), Some(Ok(18)));
    }

    #[tokio::test]
    async fn a_write_that_answers_too_few_fails_the_rest() {
        let group = GroupCommit::start(
            Doubling {
                answer_only_first: true,
                ..Doubling::default()
            },
            8,
        );
        // One thread: both jobs are queued before the writer first runs, so they share a write.
        let (a, b) = tokio::join!(group.submit(1), group.submit(2));
        assert_eq!(a.ok(), Some(Ok(2)));
        let b = b.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(b.contains("fewer than its 2 jobs"), "{b}");
    }
}
