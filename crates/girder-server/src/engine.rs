//! The engine boundary: what the batcher's model thread runs.
//!
//! [`Runner`] is the one seam between HTTP and an encoder. [`EncoderEngine`] implements it
//! with the library's [`TaskOptions::run_encoded`] over the forward passes the model plans
//! for the batch ([`Model::plan`], under the model's `max_batch_tokens`: a batch the batcher
//! formed under the same budget is one pass, a request alone over it is split); the batcher
//! never sees a task. Generation (`/v1/completions`, `/v1/chat/completions`) has its own
//! continuous-batching engine ([`crate::generation`]): its batches do not end when a forward
//! pass ends.

use girder::pipelines::{Model, TaskOptions, TaskOutput};
use girder::tokenize::Encoded;
use std::sync::Arc;

/// Runs one batch: `texts[i]` was tokenized into `encodings[i]`; returns one output per
/// text, in order. Requests with equal options share a batch. Called from the batcher's
/// model thread only. `abandoned` says whether every client of the batch has gone: a runner
/// checks it between forward passes and stops with `Ok(None)`.
pub trait Runner: Send + Sync + 'static {
    fn run(
        &self,
        work: &TaskOptions,
        texts: &[String],
        encodings: &[Encoded],
        abandoned: &dyn Fn() -> bool,
    ) -> girder::Result<Option<Vec<TaskOutput>>>;
}

/// The encoder pipelines over one loaded model.
pub struct EncoderEngine {
    model: Arc<Model>,
}

impl EncoderEngine {
    pub fn new(model: Arc<Model>) -> Self {
        EncoderEngine { model }
    }
}

impl Runner for EncoderEngine {
    /// One forward pass of the plan at a time, so that a request whose client has gone
    /// stops after the pass that runs when it leaves.
    fn run(
        &self,
        work: &TaskOptions,
        texts: &[String],
        encodings: &[Encoded],
        abandoned: &dyn Fn() -> bool,
    ) -> girder::Result<Option<Vec<TaskOutput>>> {
        let plan = self.model.plan(encodings);
        if plan.len() == 1 {
            return work
                .run_encoded(&self.model, texts, encodings, &plan)
                .map(Some);
        }
        let mut outputs: Vec<Option<TaskOutput>> = vec![None; texts.len()];
        for pass in &plan {
            if abandoned() {
                return Ok(None);
            }
            let pass_texts: Vec<String> = pass.iter().map(|&i| texts[i].clone()).collect();
            let pass_encodings: Vec<Encoded> = pass.iter().map(|&i| encodings[i].clone()).collect();
            let whole_pass = vec![(0..pass.len()).collect::<Vec<usize>>()];
            let items = work
                .run_encoded(&self.model, &pass_texts, &pass_encodings, &whole_pass)
                .map_err(|e| e.map_index(|i| pass.get(i).copied().unwrap_or(i)))?;
            for (&i, item) in pass.iter().zip(items) {
                outputs[i] = Some(item);
            }
        }
        Ok(outputs.into_iter().collect())
    }
}
