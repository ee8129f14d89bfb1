//! The generation engine: continuous batching over one causal language model.
//!
//! Handlers tokenize, validate and [`submit`](Generator::submit) a prompt with its options;
//! the request waits in a bounded queue (full: 429). One thread owns the model and loops:
//! it admits waiting requests into the running [`ContinuousBatch`] (at most
//! `max_sequences` running), drops the sequences whose client has gone, and runs one step,
//! in which at most `prefill_chunk` prompt tokens are prefilled beside one decode token of
//! every running sequence: a long prompt is prefilled over several steps, so it neither
//! stalls the running streams nor runs on after its client has gone. Each step's text goes out at
//! once over the request's own channel; a sequence that ends leaves the batch in that step.
//!
//! As mistral.rs's engine loop (`mistralrs-core/src/engine/mod.rs`), HTTP talks to it only
//! over channels. A panic in a step is caught: the sequences of that step get a 500 and the
//! loop goes on with an empty batch.

use crate::error::ApiError;
use crate::metrics as m;
use crate::queue::WorkQueue;
use girder::generate::continuous::{ContinuousBatch, Event, SequenceId};
use girder::generate::{Generation, Options, TextGenerator};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Running sequences at most, by default.
pub const DEFAULT_MAX_SEQUENCES: usize = 64;

/// What a request hears from the engine, in order: text pieces, then one `Done` or `Failed`.
#[derive(Debug)]
pub enum Update {
    /// Text that may be shown now.
    Text(String),
    /// The whole result; nothing follows.
    Done(Generation),
    /// The sequence could not finish; nothing follows.
    Failed(ApiError),
}

struct Request {
    prompt: Vec<u32>,
    options: Options,
    updates: mpsc::UnboundedSender<Update>,
    enqueued: Instant,
}

/// The handle handlers use; the engine thread stops when it is dropped.
pub struct Generator {
    model: Arc<TextGenerator>,
    queue: WorkQueue<Request>,
}

impl Generator {
    /// Starts the engine thread over `model`.
    pub fn spawn(
        model: Arc<TextGenerator>,
        max_queue: usize,
        max_sequences: usize,
        prefill_chunk: usize,
    ) -> std::io::Result<Generator> {
        let (queue, rx) = WorkQueue::new(max_queue, "generation thread");
        let engine_model = model.clone();
        queue.spawn_model_thread("girder-generate", move || {
            run_engine(
                &engine_model,
                rx,
                max_sequences.max(1),
                prefill_chunk.max(1),
            )
        })?;
        Ok(Generator { model, queue })
    }

    /// The model.
    pub fn model(&self) -> &Arc<TextGenerator> {
        &self.model
    }

    /// Whether the engine thread still runs.
    pub fn is_alive(&self) -> bool {
        self.queue.is_alive()
    }

    /// Queues a prompt (token ids, already checked against the context) with its options.
    /// Dropping the receiver cancels the sequence at the next step.
    pub fn submit(
        &self,
        prompt: Vec<u32>,
        options: Options,
    ) -> Result<mpsc::UnboundedReceiver<Update>, ApiError> {
        let (updates, rx) = mpsc::unbounded_channel();
        let request = Request {
            prompt,
            options,
            updates,
            enqueued: Instant::now(),
        };
        self.queue.push(request)?;
        Ok(rx)
    }
}

/// A running sequence's client.
struct Client {
    updates: mpsc::UnboundedSender<Update>,
    enqueued: Instant,
    /// When its last token came (None before the first).
    last_token: Option<Instant>,
}

/// The engine loop; returns when every [`Generator`] handle is gone.
fn run_engine(
    model: &TextGenerator,
    mut rx: mpsc::Receiver<Request>,
    max_sequences: usize,
    prefill_chunk: usize,
) {
    let new_batch = || ContinuousBatch::new(model).with_prefill_chunk(prefill_chunk);
    let mut batch = new_batch();
    let mut clients: HashMap<SequenceId, Client> = HashMap::new();
    let mut waiting: Option<Request> = None;
    loop {
        if batch.is_empty() && waiting.is_none() {
            match rx.blocking_recv() {
                Some(request) => waiting = Some(request),
                None => return,
            }
        }
        admit(
            &mut batch,
            &mut clients,
            &mut waiting,
            &mut rx,
            max_sequences,
        );
        metrics::gauge!(m::QUEUE_DEPTH).set((rx.len() + usize::from(waiting.is_some())) as f64);
        // A client that hung up (a closed stream, a dropped request) stops its sequence.
        for id in batch.ids() {
            if clients.get(&id).is_none_or(|c| c.updates.is_closed()) {
                batch.cancel(id);
                clients.remove(&id);
                metrics::counter!(m::GENERATIONS_CANCELLED).increment(1);
            }
        }
        metrics::gauge!(m::RUNNING_SEQUENCES).set(batch.len() as f64);
        if batch.is_empty() {
            continue;
        }
        metrics::histogram!(m::DECODE_BATCH_SEQUENCES).record(batch.len() as f64);
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| batch.step()));
        let now = Instant::now();
        let step = match outcome {
            Ok(Ok(step)) => step,
            Ok(Err(err)) => {
                // The batch dropped every sequence: all of this step's requests fail.
                tracing::error!("a generation step failed: {err}");
                fail_all(
                    &mut clients,
                    ApiError::Internal(format!("generation failed: {err}")),
                );
                continue;
            }
            Err(panic) => {
                let what = girder::error::panic_message(&*panic);
                tracing::error!("the model panicked in a generation step: {what}");
                // Caches may hold half a step: start over with an empty batch.
                batch = new_batch();
                fail_all(
                    &mut clients,
                    ApiError::Internal(format!("the model failed on this step: {what}")),
                );
                continue;
            }
        };
        metrics::counter!(m::GENERATED_TOKENS).increment(step.new_tokens as u64);
        metrics::counter!(m::PROMPT_TOKENS).increment(step.prefill_tokens as u64);
        metrics::counter!(m::REUSED_PROMPT_TOKENS).increment(step.reused_prompt_tokens as u64);
        metrics::histogram!(m::STEP_DURATION).record((now - started).as_secs_f64());
        for id in &step.sampled {
            let Some(client) = clients.get_mut(id) else {
                continue;
            };
            match client.last_token {
                None => metrics::histogram!(m::TIME_TO_FIRST_TOKEN)
                    .record((now - client.enqueued).as_secs_f64()),
                Some(last) => {
                    metrics::histogram!(m::TIME_PER_OUTPUT_TOKEN).record((now - last).as_secs_f64())
                }
            }
            client.last_token = Some(now);
        }
        for event in step.events {
            match event {
                Event::Text { id, text } => {
                    if let Some(client) = clients.get(&id) {
                        let _ = client.updates.send(Update::Text(text));
                    }
                }
                Event::Finished { id, generation } => {
                    if let Some(client) = clients.remove(&id) {
                        let _ = client.updates.send(Update::Done(generation));
                    }
                }
            }
        }
        if batch.is_empty() {
            metrics::gauge!(m::RUNNING_SEQUENCES).set(0.0);
        }
    }
}

/// Moves waiting requests into the batch while fewer than `max_sequences` run.
fn admit(
    batch: &mut ContinuousBatch,
    clients: &mut HashMap<SequenceId, Client>,
    waiting: &mut Option<Request>,
    rx: &mut mpsc::Receiver<Request>,
    max_sequences: usize,
) {
    loop {
        let Some(request) = waiting.take().or_else(|| rx.try_recv().ok()) else {
            return;
        };
        if request.updates.is_closed() {
            metrics::counter!(m::GENERATIONS_CANCELLED).increment(1);
            continue;
        }
        if batch.len() >= max_sequences {
            *waiting = Some(request);
            return;
        }
        metrics::histogram!(m::QUEUE_DURATION).record(request.enqueued.elapsed().as_secs_f64());
        match batch.admit(request.prompt, &request.options) {
            Ok(id) => {
                clients.insert(
                    id,
                    Client {
                        updates: request.updates,
                        enqueued: request.enqueued,
                        last_token: None,
                    },
                );
            }
            Err(err) => {
                let _ = request
                    .updates
                    .send(Update::Failed(ApiError::from_library(err, "prompt")));
            }
        }
    }
}

fn fail_all(clients: &mut HashMap<SequenceId, Client>, error: ApiError) {
    for (_, client) in clients.drain() {
        let _ = client.updates.send(Update::Failed(error.clone()));
    }
}
