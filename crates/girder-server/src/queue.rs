//! The bounded queue between request handlers and a model thread (the encoder batcher, the
//! generation engines): admission without waiting, and whether the thread still runs.

use crate::error::ApiError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc::{self, error::TrySendError};

/// The sending end of a model thread's queue, shared by every handler.
pub struct WorkQueue<T> {
    tx: mpsc::Sender<T>,
    max_queue: usize,
    alive: Arc<AtomicBool>,
    /// What errors call the thread ("model thread", "generation thread").
    thread: &'static str,
}

impl<T: Send + 'static> WorkQueue<T> {
    /// A queue holding at most `max_queue` items (at least 1), and its receiving end.
    pub fn new(max_queue: usize, thread: &'static str) -> (Self, mpsc::Receiver<T>) {
        let max_queue = max_queue.max(1);
        let (tx, rx) = mpsc::channel(max_queue);
        let queue = WorkQueue {
            tx,
            max_queue,
            alive: Arc::new(AtomicBool::new(true)),
            thread,
        };
        (queue, rx)
    }

    /// Runs `body` on a thread named `name`; once it returns, the queue reports its model
    /// thread stopped.
    pub fn spawn_model_thread(
        &self,
        name: &str,
        body: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<()> {
        let alive = self.alive.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                body();
                alive.store(false, Ordering::SeqCst);
            })?;
        Ok(())
    }

    /// Whether the model thread still runs.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Queues `item` without waiting: a full queue answers [`ApiError::Overloaded`] at once
    /// (429 with `Retry-After`), a stopped thread [`ApiError::Unavailable`]. The queue-depth
    /// gauge follows.
    pub fn push(&self, item: T) -> Result<(), ApiError> {
        match self.tx.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ApiError::Overloaded {
                    max_queue: self.max_queue,
                })
            }
            Err(TrySendError::Closed(_)) => {
                return Err(ApiError::Unavailable(format!(
                    "the {} has stopped",
                    self.thread
                )))
            }
        }
        metrics::gauge!(crate::metrics::QUEUE_DEPTH)
            .set((self.tx.max_capacity() - self.tx.capacity()) as f64);
        Ok(())
    }
}
