//! Connection workers: one single-threaded runtime per core, each serving the connections
//! handed to it from accept to close.
//!
//! A request through the proxy is a handful of tasks talking to each other — the client
//! connection, the pipeline, the pooled upstream connection, the two bodies. On a
//! work-stealing runtime those tasks land on different threads and every hand-off is a
//! cross-thread wake-up (a futex and often an inter-processor interrupt); measured on the
//! 2-core bench machine that cost 6–14 µs of CPU per 1 KiB GET (README, Performance). Here a
//! connection, and everything it spawns (its upstream connections included), lives on one
//! thread, as in nginx's worker model; only the accept hand-off crosses threads, once per
//! connection. Balance comes from handing each new connection to the worker with the fewest
//! open.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::task::{AbortHandle, JoinSet};

/// How long a stopping worker gives what still runs on it (blocking calls included).
const STOP_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The running workers.
pub struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    handle: Handle,
    /// Connections open on this worker; the least loaded gets the next.
    open: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers (at least one). Each runtime is built, run and dropped on its
    /// own thread: a runtime must never be dropped inside another's async context.
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let mut workers = Vec::with_capacity(count.max(1));
        for n in 0..count.max(1) {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let (ready, handle) = std::sync::mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!("claimgate-worker-{n}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready.send(Ok(runtime.handle().clone()));
                    WORKER.set(Some(n));
                    // A current-thread runtime runs its spawned tasks only inside `block_on`.
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    // Whatever still runs is dropped now; a blocking call (a DNS lookup for
                    // an upstream) is not waited for beyond this.
                    runtime.shutdown_timeout(STOP_WITHIN);
                })?;
            let handle = handle
                .recv()
                .map_err(|_| std::io::Error::other("worker thread ended before its runtime started"))??;
            workers.push(Worker {
                handle,
                open: Arc::default(),
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Workers { workers })
    }

    /// Stops every worker: what still runs on them is dropped (and so writes its audit
    /// records) before this returns, so the caller can flush the audit log after it.
    pub async fn shutdown(mut self) {
        self.signal_stop();
        let threads: Vec<_> = self.workers.iter_mut().filter_map(|w| w.thread.take()).collect();
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        if tokio::time::timeout(STOP_WITHIN * 2, joined).await.is_err() {
            tracing::warn!("connection workers did not stop within {:?}", STOP_WITHIN * 2);
        }
    }

    fn signal_stop(&mut self) {
        for w in &mut self.workers {
            if let Some(stop) = w.stop.take() {
                let _ = stop.send(());
            }
        }
    }

    /// How many workers run.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Always false: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Runs one connection's future on the least-loaded worker, tracked in `set` (which
    /// can wait for it and abort it like any task of its own).
    pub fn spawn<F>(&self, set: &mut JoinSet<()>, connection: F) -> AbortHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
            .expect("at least one worker");
        worker.open.fetch_add(1, Ordering::Relaxed);
        // Counted from here: a task dropped before its first poll still gives its place back.
        let open = Counted(worker.open.clone());
        set.spawn_on(
            async move {
                let _open = open;
                connection.await;
            },
            &worker.handle,
        )
    }
}

/// Decrements a worker's open count when its connection ends, however it ends.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Workers dropped without [`Workers::shutdown`] are told to stop and left to finish on
/// their own threads (joining here could block an async caller).
impl Drop for Workers {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

thread_local! {
    static WORKER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The index of the worker running the caller, if it runs on one: per-worker resources
/// (upstream pools) are picked by it.
pub fn current() -> Option<usize> {
    WORKER.get()
}

/// The worker count when the config does not set one: one per core the process may use.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_least_loaded_worker_and_run_there() {
        let workers = Workers::start(2).unwrap();
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<std::thread::ThreadId>();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let mut set = JoinSet::new();
        let tx = hold_tx.clone();
        workers.spawn(&mut set, async move {
            tx.send(std::thread::current().id()).unwrap();
            let _ = released.await;
        });
        let a = hold_rx.recv().unwrap();
        // The first worker holds a connection: the next goes to the other one.
        workers.spawn(&mut set, async move {
            hold_tx.send(std::thread::current().id()).unwrap();
        });
        let b = hold_rx.recv().unwrap();
        assert_ne!(a, b);
        release.send(()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            while let Some(done) = set.join_next().await {
                done.unwrap();
            }
        });
        assert_eq!(workers.len(), 2);
    }
}
