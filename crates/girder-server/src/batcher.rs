//! Dynamic batching: handlers enqueue tokenized requests; one thread packs them into batches
//! under a token budget and another, which owns the model, runs each batch in one ragged
//! forward pass and answers every request with its own rows.
//!
//! The two threads overlap: while the model thread computes batch N, the batcher thread forms
//! batch N+1 from the queue, adding every request that arrives until the model takes it
//! ([`NextBatch`]). Only requests with equal [`TaskOptions`] share a batch; a request that differs or
//! does not fit waits for the model to take the batch and heads the next one, so order is
//! kept.
//!
//! A failed batch is rerun one request at a time, so that one bad input fails only its own
//! request; a panic in the model is caught and answered as a 500 to the requests it hit, and
//! the thread keeps serving.

use crate::engine::Runner;
use crate::error::ApiError;
use crate::metrics as m;
use crate::queue::WorkQueue;
use girder::pipelines::{TaskOptions, TaskOutput};
use girder::tokenize::Encoded;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// What a request gets back: one item per text, or the error that stopped it.
pub type Reply = Result<Vec<TaskOutput>, ApiError>;

/// One request's tokenized texts, waiting for the model.
pub struct Job {
    work: TaskOptions,
    texts: Vec<String>,
    encodings: Vec<Encoded>,
    reply: oneshot::Sender<Reply>,
    enqueued: Instant,
}

impl Job {
    fn tokens(&self) -> usize {
        self.encodings.iter().map(Encoded::len).sum()
    }
}

/// The handle handlers use to enqueue work; cheap to share behind an `Arc`.
pub struct Batcher {
    queue: WorkQueue<Job>,
}

impl Batcher {
    /// Starts the batcher and model threads. At most `max_queue` requests wait; a batch
    /// holds at most `max_batch_tokens` tokens unless one request alone is larger.
    pub fn spawn(
        runner: Arc<dyn Runner>,
        max_batch_tokens: usize,
        max_queue: usize,
    ) -> std::io::Result<Batcher> {
        let (queue, rx) = WorkQueue::new(max_queue, "model thread");
        let next = Arc::new(NextBatch::default());
        let forming = next.clone();
        std::thread::Builder::new()
            .name("girder-batcher".into())
            .spawn(move || form_batches(rx, &forming, max_batch_tokens.max(1)))?;
        queue.spawn_model_thread("girder-model", move || run_batches(&*runner, &next))?;
        Ok(Batcher { queue })
    }

    /// Whether the model thread still runs.
    pub fn is_alive(&self) -> bool {
        self.queue.is_alive()
    }

    /// Enqueues `texts` (tokenized as `encodings`) and waits for their results.
    /// A full queue answers [`ApiError::Overloaded`] at once.
    pub async fn call(
        &self,
        work: TaskOptions,
        texts: Vec<String>,
        encodings: Vec<Encoded>,
    ) -> Reply {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            work,
            texts,
            encodings,
            reply,
            enqueued: Instant::now(),
        };
        self.queue.push(job)?;
        rx.await.unwrap_or_else(|_| {
            Err(ApiError::Internal(
                "the model thread stopped before answering".into(),
            ))
        })
    }
}

/// The batch being formed. The batcher thread adds each queued job to it while the model
/// computes the previous batch; the model thread takes it whole as soon as it is free, so a
/// batch holds everything that arrived meanwhile (a batch sealed when the previous one
/// started would miss the requests answered by it, which come straight back under load).
#[derive(Default)]
struct NextBatch {
    forming: Mutex<Forming>,
    changed: Condvar,
}

#[derive(Default)]
struct Forming {
    jobs: Vec<Job>,
    tokens: usize,
    /// The queue closed: no job will come.
    closed: bool,
}

impl NextBatch {
    fn lock(&self) -> MutexGuard<'_, Forming> {
        // A panic while holding the lock leaves a valid `Forming` (pushes and takes only).
        self.forming.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The batcher thread: adds queued jobs to the forming batch until the queue closes. A job
/// that does not fit (another kind of work, or over the token budget) waits for the model to
/// take the batch and heads the next one, so order is kept.
fn form_batches(mut rx: mpsc::Receiver<Job>, next: &NextBatch, max_batch_tokens: usize) {
    while let Some(job) = rx.blocking_recv() {
        let mut forming = next.lock();
        loop {
            let fits = match forming.jobs.first() {
                None => true,
                Some(first) => {
                    first.work == job.work && forming.tokens + job.tokens() <= max_batch_tokens
                }
            };
            if fits {
                break;
            }
            forming = next
                .changed
                .wait(forming)
                .unwrap_or_else(|p| p.into_inner());
        }
        forming.tokens += job.tokens();
        forming.jobs.push(job);
        drop(forming);
        next.changed.notify_all();
        metrics::gauge!(m::QUEUE_DEPTH).set(rx.len() as f64);
    }
    next.lock().closed = true;
    next.changed.notify_all();
}

/// The model thread: takes each formed batch, runs it and answers its jobs.
fn run_batches(runner: &dyn Runner, next: &NextBatch) {
    loop {
        let mut batch = {
            let mut forming = next.lock();
            while forming.jobs.is_empty() && !forming.closed {
                forming = next
                    .changed
                    .wait(forming)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if forming.jobs.is_empty() {
                return;
            }
            forming.tokens = 0;
            std::mem::take(&mut forming.jobs)
        };
        next.changed.notify_all();
        // A client that hung up while waiting needs no forward pass.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let start = Instant::now();
        for job in &batch {
            metrics::histogram!(m::QUEUE_DURATION)
                .record(start.duration_since(job.enqueued).as_secs_f64());
        }
        let tokens: usize = batch.iter().map(Job::tokens).sum();
        metrics::histogram!(m::BATCH_REQUESTS).record(batch.len() as f64);
        metrics::histogram!(m::BATCH_TOKENS).record(tokens as f64);
        let outcome = run_guarded(runner, &batch);
        metrics::histogram!(m::BATCH_DURATION).record(start.elapsed().as_secs_f64());
        match outcome {
            Ok(Some(items)) => answer(batch, items),
            // Every client left during the batch: nobody to answer.
            Ok(None) => metrics::counter!(m::BATCHES_CANCELLED).increment(1),
            Err(err) if batch.len() == 1 => {
                for job in batch {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
            // One request's input can fail (or crash) a whole batch: rerun each alone so the
            // error reaches only the request that caused it, with its own indices.
            Err(_) => {
                for job in batch {
                    match run_guarded(runner, std::slice::from_ref(&job)) {
                        Ok(Some(items)) => drop(job.reply.send(Ok(items))),
                        Ok(None) => metrics::counter!(m::BATCHES_CANCELLED).increment(1),
                        Err(err) => drop(job.reply.send(Err(err))),
                    }
                }
            }
        }
    }
}

/// Runs `jobs` as one batch, turning a library error or a panic into an [`ApiError`];
/// `Ok(None)` when every client left before the batch ended.
fn run_guarded(runner: &dyn Runner, jobs: &[Job]) -> Result<Option<Vec<TaskOutput>>, ApiError> {
    let work = &jobs[0].work;
    let texts: Vec<String> = jobs.iter().flat_map(|j| j.texts.iter().cloned()).collect();
    let encodings: Vec<Encoded> = jobs
        .iter()
        .flat_map(|j| j.encodings.iter().cloned())
        .collect();
    // The runner only reads the model (`forward` takes `&self`), so state seen after a panic
    // is the state before it.
    let abandoned = || jobs.iter().all(|job| job.reply.is_closed());
    match catch_unwind(AssertUnwindSafe(|| {
        runner.run(work, &texts, &encodings, &abandoned)
    })) {
        Ok(Ok(None)) => Ok(None),
        Ok(Ok(Some(items))) if items.len() == texts.len() => Ok(Some(items)),
        Ok(Ok(Some(items))) => Err(ApiError::Internal(format!(
            "the model returned {} results for {} inputs",
            items.len(),
            texts.len()
        ))),
        Ok(Err(err)) => Err(ApiError::from_library(err, "input")),
        Err(panic) => {
            let what = girder::error::panic_message(&*panic);
            tracing::error!(
                "the model panicked on a batch of {} requests: {what}",
                jobs.len()
            );
            Err(ApiError::Internal(format!(
                "the model failed on this batch: {what}"
            )))
        }
    }
}

/// Splits a batch's items back into its jobs, in order.
fn answer(batch: Vec<Job>, items: Vec<TaskOutput>) {
    let mut items = items.into_iter();
    for job in batch {
        let own: Vec<TaskOutput> = items.by_ref().take(job.texts.len()).collect();
        let _ = job.reply.send(Ok(own));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use girder::pipelines::embeddings;

    /// Embeds each text as `[len]`; panics on "boom", fails on "bad".
    struct Fake;

    impl Runner for Fake {
        fn run(
            &self,
            _: &TaskOptions,
            texts: &[String],
            _: &[Encoded],
            _: &dyn Fn() -> bool,
        ) -> girder::Result<Option<Vec<TaskOutput>>> {
            texts
                .iter()
                .enumerate()
                .map(|(index, t)| match t.as_str() {
                    "boom" => panic!("boom"),
                    "bad" => Err(girder::Error::BadInput {
                        index,
                        reason: "bad".into(),
                    }),
                    _ => Ok(TaskOutput::Embeddings(embeddings::Output {
                        embedding: vec![t.len() as f32],
                        truncated: false,
                    })),
                })
                .collect::<girder::Result<Vec<_>>>()
                .map(Some)
        }
    }

    fn encoded(n: usize) -> Encoded {
        Encoded {
            ids: vec![0; n],
            ..Default::default()
        }
    }

    async fn ask(b: &Batcher, texts: &[&str]) -> Reply {
        let texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        let encodings = texts.iter().map(|t| encoded(t.len().max(1))).collect();
        b.call(
            TaskOptions::Embeddings(Default::default()),
            texts,
            encodings,
        )
        .await
    }

    fn first(reply: &Reply) -> Vec<f32> {
        match reply {
            Ok(items) => items
                .iter()
                .map(|i| match i {
                    TaskOutput::Embeddings(e) => e.embedding[0],
                    _ => -1.0,
                })
                .collect(),
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }

    #[tokio::test]
    async fn each_request_gets_its_rows_and_a_panic_hits_only_its_batch() {
        let b = Batcher::spawn(Arc::new(Fake), 64, 16).unwrap();
        let (a, c, d) = tokio::join!(ask(&b, &["a", "bb"]), ask(&b, &["ccc"]), ask(&b, &["dddd"]));
        assert_eq!(first(&a), vec![1.0, 2.0]);
        assert_eq!(first(&c), vec![3.0]);
        assert_eq!(first(&d), vec![4.0]);
        let (boom, ok, bad) =
            tokio::join!(ask(&b, &["boom"]), ask(&b, &["ok"]), ask(&b, &["x", "bad"]));
        assert!(matches!(boom, Err(ApiError::Internal(_))), "{boom:?}");
        assert_eq!(first(&ok), vec![2.0]);
        match bad {
            Err(ApiError::Validation { field, .. }) => assert_eq!(field, "input[1]"),
            other => panic!("{other:?}"),
        }
        // Still serving after the panic.
        assert_eq!(first(&ask(&b, &["after"]).await), vec![5.0]);
        assert!(b.is_alive());
    }

    /// Runs until every client of its batch has gone, then stops: a stand-in for a batch of
    /// many forward passes.
    struct UntilAbandoned(Arc<std::sync::atomic::AtomicBool>);

    impl Runner for UntilAbandoned {
        fn run(
            &self,
            _: &TaskOptions,
            _: &[String],
            _: &[Encoded],
            abandoned: &dyn Fn() -> bool,
        ) -> girder::Result<Option<Vec<TaskOutput>>> {
            let started = Instant::now();
            while !abandoned() {
                if started.elapsed() > std::time::Duration::from_secs(10) {
                    return Ok(Some(Vec::new()));
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(None)
        }
    }

    #[tokio::test]
    async fn a_batch_stops_when_its_client_leaves() {
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let b =
            Arc::new(Batcher::spawn(Arc::new(UntilAbandoned(stopped.clone())), 64, 16).unwrap());
        let asking = {
            let b = b.clone();
            tokio::spawn(async move { ask(&b, &["a long request"]).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        asking.abort();
        let started = Instant::now();
        while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(started.elapsed().as_secs() < 5, "the batch ran on");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(b.is_alive());
    }
}
