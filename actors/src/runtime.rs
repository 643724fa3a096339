//! whatsapp-rust's executor, pointed at an actix arbiter.
//!
//! The client spawns its protocol tasks (socket reader, keepalive, savers…)
//! through a `Runtime`. Spawning them onto the arbiter that hosts the
//! session is what makes "three sessions per arbiter" real isolation: a busy
//! or failing arbiter affects only the sessions placed on it. Arbiters are
//! single-threaded, so `yield_now` really yields and tight loops yield on
//! every item.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use actix::ArbiterHandle;
use futures::future::{AbortHandle as FutAbortHandle, Abortable};
use wacore::runtime::{AbortHandle, Runtime};

/// Runs a client's tasks on one arbiter.
#[derive(Clone)]
pub struct ArbiterRuntime {
    arbiter: ArbiterHandle,
}

impl ArbiterRuntime {
    pub fn new(arbiter: ArbiterHandle) -> Self {
        Self { arbiter }
    }
}

#[async_trait::async_trait]
impl Runtime for ArbiterRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send + 'static>>) -> AbortHandle {
        let (handle, registration) = FutAbortHandle::new_pair();
        let task = Abortable::new(future, registration);
        // A stopped arbiter drops the task; the client sees it as cancelled,
        // which is what a dead arbiter means for the session it hosted.
        let _ = self.arbiter.spawn(async move {
            let _ = task.await;
        });
        AbortHandle::new(move || handle.abort())
    }

    fn spawn_detached(&self, future: Pin<Box<dyn Future<Output = ()> + Send + 'static>>) {
        let _ = self.arbiter.spawn(future);
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(actix::clock::sleep(duration))
    }

    fn spawn_blocking(
        &self,
        f: Box<dyn FnOnce() + Send + 'static>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        // CPU-heavy work (prekey generation) leaves the arbiter thread.
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(f).await;
        })
    }

    fn yield_now(&self) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        Some(Box::pin(tokio::task::yield_now()))
    }

    fn yield_frequency(&self) -> u32 {
        1
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[actix::test]
    async fn tasks_run_on_the_arbiter_and_abort_stops_them() {
        let arbiter = actix::Arbiter::new();
        let rt = ArbiterRuntime::new(arbiter.handle());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let caller = std::thread::current().id();
        rt.spawn_detached(Box::pin(async move {
            let _ = tx.send(std::thread::current().id());
        }));
        let ran_on = rx.await.expect("task ran");
        assert_ne!(ran_on, caller, "the task ran on the arbiter's thread");

        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        let rt2 = rt.clone();
        let handle = rt.spawn(Box::pin(async move {
            rt2.sleep(Duration::from_secs(3600)).await;
            flag.store(true, Ordering::SeqCst);
        }));
        handle.abort();
        // A blocking job round-trips through the arbiter too.
        rt.spawn_blocking(Box::new(|| {})).await;
        assert!(!finished.load(Ordering::SeqCst));
        assert!(rt.yield_now().is_some());
        arbiter.stop();
    }
}
