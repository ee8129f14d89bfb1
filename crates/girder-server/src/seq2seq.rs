//! The encoder-decoder engine: continuous batching over one encoder-decoder (translation,
//! summarization, text2text, speech recognition).
//!
//! A handler prepares a job (a request's texts tokenized, or a group of an audio file's
//! windows as log-mel features, each with its decoder prompt and the request's generation
//! settings) and awaits [`Seq2SeqEngine::run`]; the job waits in a bounded queue (full: 429).
//! One thread owns the model and loops: it admits waiting jobs into the running
//! [`Seq2SeqBatch`] (their inputs encoded in one pass as they join, at most `max_sequences`
//! inputs running), drops the jobs whose client has gone, and runs one decoder step over
//! every running input, greedy, sampled or every beam. A job's answer goes back when its last
//! input finishes. A panic in a step fails that step's jobs with a 500 and the loop goes on
//! with an empty batch.

use crate::error::ApiError;
use crate::metrics as m;
use crate::queue::WorkQueue;
use candle_core::Tensor;
use girder::batch::RaggedBatch;
use girder::generate::seq2seq::{DecoderPrompt, EncoderInput, Seq2SeqBatch, SequenceId};
use girder::generate::{GeneratedIds, GenerationConfig, Seq2SeqGenerator};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// What a job's inputs are.
pub enum JobInput {
    /// Token ids of each input (text models).
    Tokens(Vec<Vec<u32>>),
    /// Log-mel features `[inputs, mel_bins, frames]` (speech models).
    Features(Tensor),
}

impl JobInput {
    fn len(&self) -> usize {
        match self {
            JobInput::Tokens(ids) => ids.len(),
            JobInput::Features(f) => f.dims().first().copied().unwrap_or(0),
        }
    }
}

struct Job {
    input: JobInput,
    prompts: Vec<DecoderPrompt>,
    config: GenerationConfig,
    seed: u64,
    reply: oneshot::Sender<Result<Vec<GeneratedIds>, ApiError>>,
    enqueued: Instant,
}

/// The handle handlers use; the engine thread stops when it is dropped.
pub struct Seq2SeqEngine {
    model: Arc<Seq2SeqGenerator>,
    queue: WorkQueue<Job>,
}

impl Seq2SeqEngine {
    /// Starts the engine thread over `model`.
    pub fn spawn(
        model: Arc<Seq2SeqGenerator>,
        max_queue: usize,
        max_sequences: usize,
    ) -> std::io::Result<Seq2SeqEngine> {
        let (queue, rx) = WorkQueue::new(max_queue, "generation thread");
        let engine_model = model.clone();
        queue.spawn_model_thread("girder-seq2seq", move || {
            run_engine(&engine_model, rx, max_sequences.max(1))
        })?;
        Ok(Seq2SeqEngine { model, queue })
    }

    /// The model.
    pub fn model(&self) -> &Arc<Seq2SeqGenerator> {
        &self.model
    }

    /// Whether the engine thread still runs.
    pub fn is_alive(&self) -> bool {
        self.queue.is_alive()
    }

    /// Generates for every input of `input` from its prompt; resolves when the last finishes.
    /// Dropping the future (the client went away) cancels the job at the next step.
    pub async fn run(
        &self,
        input: JobInput,
        prompts: Vec<DecoderPrompt>,
        config: GenerationConfig,
        seed: u64,
    ) -> Result<Vec<GeneratedIds>, ApiError> {
        if prompts.len() != input.len() {
            return Err(ApiError::Internal(format!(
                "{} prompts for {} inputs",
                prompts.len(),
                input.len()
            )));
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            input,
            prompts,
            config,
            seed,
            reply,
            enqueued: Instant::now(),
        };
        self.queue.push(job)?;
        answer
            .await
            .map_err(|_| ApiError::Unavailable("the generation thread has stopped".into()))?
    }
}

/// A running job: whose inputs are which sequences, and what they produced so far.
struct Running {
    reply: oneshot::Sender<Result<Vec<GeneratedIds>, ApiError>>,
    ids: Vec<SequenceId>,
    results: Vec<Option<GeneratedIds>>,
}

/// The engine loop; returns when every [`Seq2SeqEngine`] handle is gone.
fn run_engine(model: &Seq2SeqGenerator, mut rx: mpsc::Receiver<Job>, max_sequences: usize) {
    let mut batch = Seq2SeqBatch::new(model);
    let mut jobs: Vec<Running> = Vec::new();
    let mut waiting: Option<Job> = None;
    loop {
        if batch.is_empty() && waiting.is_none() {
            match rx.blocking_recv() {
                Some(job) => waiting = Some(job),
                None => return,
            }
        }
        // Jobs join while there is room; a job's inputs join together.
        while batch.len() < max_sequences {
            let Some(job) = waiting.take().or_else(|| rx.try_recv().ok()) else {
                break;
            };
            if job.reply.is_closed() {
                metrics::counter!(m::GENERATIONS_CANCELLED).increment(1);
                continue;
            }
            metrics::histogram!(m::QUEUE_DURATION).record(job.enqueued.elapsed().as_secs_f64());
            let admitted = catch_unwind(AssertUnwindSafe(|| admit(&mut batch, &job)));
            match admitted {
                Ok(Ok(ids)) => jobs.push(Running {
                    results: vec![None; ids.len()],
                    ids,
                    reply: job.reply,
                }),
                Ok(Err(err)) => {
                    let _ = job.reply.send(Err(ApiError::from_library(err, "input")));
                }
                Err(_) => {
                    let _ = job.reply.send(Err(ApiError::Internal(
                        "the model failed to encode the input".into(),
                    )));
                }
            }
        }
        metrics::gauge!(m::QUEUE_DEPTH).set((rx.len() + usize::from(waiting.is_some())) as f64);
        // A client that hung up stops its job's inputs.
        jobs.retain(|job| {
            if job.reply.is_closed() {
                for &id in &job.ids {
                    batch.cancel(id);
                }
                metrics::counter!(m::GENERATIONS_CANCELLED).increment(1);
                false
            } else {
                true
            }
        });
        if batch.is_empty() {
            continue;
        }
        metrics::gauge!(m::RUNNING_SEQUENCES).set(batch.len() as f64);
        metrics::histogram!(m::DECODE_BATCH_SEQUENCES).record(batch.len() as f64);
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| batch.step()));
        metrics::histogram!(m::STEP_DURATION).record(started.elapsed().as_secs_f64());
        let finished = match outcome {
            Ok(Ok(finished)) => finished,
            Ok(Err(err)) => {
                tracing::error!("an encoder-decoder step failed: {err}");
                fail_all(
                    &mut jobs,
                    ApiError::Internal(format!("generation failed: {err}")),
                );
                batch = Seq2SeqBatch::new(model);
                continue;
            }
            Err(panic) => {
                let what = girder::error::panic_message(&*panic);
                tracing::error!("the model panicked in an encoder-decoder step: {what}");
                fail_all(
                    &mut jobs,
                    ApiError::Internal(format!("the model failed on this step: {what}")),
                );
                batch = Seq2SeqBatch::new(model);
                continue;
            }
        };
        for (id, out) in finished {
            metrics::counter!(m::GENERATED_TOKENS).increment(out.token_ids.len() as u64);
            if let Some(job) = jobs.iter_mut().find(|j| j.ids.contains(&id)) {
                let at = job.ids.iter().position(|&x| x == id).unwrap_or(0);
                job.results[at] = Some(out);
            }
        }
        let (done, running): (Vec<Running>, Vec<Running>) = std::mem::take(&mut jobs)
            .into_iter()
            .partition(|j| j.results.iter().all(Option::is_some));
        jobs = running;
        for job in done {
            let results = job.results.into_iter().flatten().collect();
            let _ = job.reply.send(Ok(results));
        }
        if batch.is_empty() {
            metrics::gauge!(m::RUNNING_SEQUENCES).set(0.0);
        }
    }
}

/// Encodes a job's inputs and adds them to the batch.
fn admit(batch: &mut Seq2SeqBatch, job: &Job) -> girder::Result<Vec<SequenceId>> {
    match &job.input {
        JobInput::Tokens(ids) => {
            let mut tokens = RaggedBatch::from_encodings([]);
            for input in ids {
                tokens.push(input, &[]);
            }
            batch.admit(
                EncoderInput::Tokens(&tokens),
                &job.prompts,
                &job.config,
                job.seed,
            )
        }
        JobInput::Features(features) => batch.admit(
            EncoderInput::Features(features),
            &job.prompts,
            &job.config,
            job.seed,
        ),
    }
}

fn fail_all(jobs: &mut Vec<Running>, error: ApiError) {
    for job in jobs.drain(..) {
        let _ = job.reply.send(Err(error.clone()));
    }
}
