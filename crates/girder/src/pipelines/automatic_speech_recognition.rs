//! Speech recognition with Whisper: transformers' `AutomaticSpeechRecognitionPipeline`
//! (`pipelines/automatic_speech_recognition.py`, v5.24) and what it calls, Whisper's
//! `generate` (`models/whisper/generation_whisper.py`) and its tokenizer's `_decode_asr`.
//!
//! A file is decoded and resampled to the feature extractor's rate as it is read
//! ([`crate::audio::AudioStream`]). Audio of up to 30 s is one window. Longer audio (or any
//! audio when `chunk_length_s` is given) is read in windows of `chunk_length_s` seconds that
//! overlap by a stride on each side (`chunk_length_s / 6` unless `stride_length_s` says), as
//! the pipeline's `chunk_iter` cuts them; only a window and the next step of samples are held,
//! so memory does not grow with the length of the audio. Each window becomes Whisper's 30 s of
//! log-mel features, windows are encoded and decoded in batches, and the windows' tokens are
//! merged where their strides overlap (`_find_longest_common_sequence`), or by their timestamp
//! tokens when timestamps are asked for.
//!
//! The decoder prompt is Whisper's: `<|startoftranscript|>`, the language and task tokens of a
//! multilingual model (the language detected from the first window when not given), and
//! `<|notimestamps|>` unless timestamps are asked for. The pipeline's generation defaults
//! apply where the model's generation_config.json sets nothing: 5 beams, as OpenAI's Whisper.

use crate::audio::{AudioStream, WhisperFeatureExtractor};
use crate::error::{Error, Result};
use crate::generate::logits_process::Timestamps;
use crate::generate::seq2seq::DecoderPrompt;
use crate::generate::{GenerationConfig, Overrides, Seq2SeqGenerator};
use crate::models::EncoderInput;
use candle_core::Tensor;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Windows decoded together at most.
const WINDOWS_PER_BATCH: usize = 8;

/// The pipeline's beams when the model's generation settings name none (OpenAI's default).
const DEFAULT_NUM_BEAMS: usize = 5;

/// How to transcribe; `Default` is transformers' pipeline defaults.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Options {
    /// Return segments with their start and end times (`chunks`).
    pub return_timestamps: bool,
    /// The spoken language (`en`, `english`, `<|en|>`), for multilingual models; `None`:
    /// detected.
    pub language: Option<String>,
    /// `transcribe` or `translate` (to English), for multilingual models.
    pub task: Option<String>,
    /// Windows of this many seconds with strides; `None`: 30 s windows when the audio is
    /// longer than 30 s, one window otherwise.
    pub chunk_length_s: Option<f32>,
    /// The overlap on the left and right of each window; `None`: `chunk_length_s / 6`.
    pub stride_length_s: Option<(f32, f32)>,
    /// Text the transcript continues (names, spellings, style): given to the decoder after
    /// `<|startofprev|>`, before the prompt, as transformers' `prompt_ids`.
    pub prompt: Option<String>,
    /// Generation settings on top of the model's and the pipeline's.
    pub generation: Overrides,
}

/// Where audio comes from.
#[derive(Debug, Clone)]
pub enum AudioInput {
    /// A file (WAV, FLAC, MP3, Ogg Vorbis).
    File(PathBuf),
    /// A file's bytes (an upload); `name` names it in errors and hints its format.
    Bytes { name: String, bytes: Vec<u8> },
    /// Mono samples at `sampling_rate`, resampled to the feature extractor's rate when it
    /// differs (transformers' `{"raw": array, "sampling_rate": rate}`); `None`: already at
    /// the feature extractor's rate (transformers' bare array).
    Samples {
        name: String,
        samples: Vec<f32>,
        sampling_rate: Option<u32>,
    },
}

impl AudioInput {
    /// What errors call it.
    pub fn name(&self) -> String {
        match self {
            AudioInput::File(path) => path.display().to_string(),
            AudioInput::Bytes { name, .. } | AudioInput::Samples { name, .. } => name.clone(),
        }
    }
}

/// A timed segment of the transcript.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Chunk {
    /// Start and end in seconds (the end is `None` when the model stopped before closing
    /// the segment).
    pub timestamp: (Option<f64>, Option<f64>),
    pub text: String,
}

/// One file's transcript, with transformers' keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Output {
    pub text: String,
    /// With `return_timestamps`: the timed segments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<Vec<Chunk>>,
    /// Seconds of audio read.
    pub audio_seconds: f64,
}

/// Transcribes every input, in order.
pub fn run(
    generator: &Seq2SeqGenerator,
    inputs: &[AudioInput],
    options: &Options,
) -> Result<Vec<Output>> {
    if inputs.is_empty() {
        return Err(Error::EmptyInput);
    }
    let transcriber = Transcriber::new(generator, options)?;
    inputs
        .iter()
        .map(|input| {
            let mut reader = transcriber.open(input)?;
            let mut decoded = Vec::new();
            loop {
                let windows = reader.next_windows(WINDOWS_PER_BATCH)?;
                if windows.is_empty() {
                    break;
                }
                let mut decoding = transcriber.start(&windows)?;
                while let Some(job) = transcriber.next_job(&decoding)? {
                    let outs = generator.generate_from(
                        EncoderInput::Features(&job.features),
                        &job.prompts,
                        transcriber.config(),
                        transcriber.seed(),
                    )?;
                    decoding.absorb(&job, outs.into_iter().map(|o| o.token_ids).collect());
                }
                decoded.extend(decoding.finish());
            }
            transcriber.output(&decoded, reader.seconds())
        })
        .collect()
}

/// A batch of windows being decoded. Each window is generated from once; with timestamps,
/// when its output closes its last segment (two timestamps) before the window's end, it is
/// generated from again on its features from that timestamp on (the rest padded with
/// zeros), the outputs following one another, as Whisper's `generate` seeks
/// (`_retrieve_segment`) even within 30 s.
pub struct WindowDecoding {
    windows: Vec<WindowState>,
    /// `[mel_bins, frames]` of one window.
    bins: usize,
    frames: usize,
    /// `<|notimestamps|> + 1`, when timestamps are on.
    timestamp_begin: Option<u32>,
    eos_token_ids: Vec<u32>,
}

struct WindowState {
    /// The window's log-mel features, `[mel_bins, frames]` row-major.
    features: Vec<f32>,
    prompt: Option<DecoderPrompt>,
    /// The frame the next generation starts from.
    seek: usize,
    tokens: Vec<u32>,
    done: bool,
    seconds: f64,
    stride_left: f64,
    stride_right: f64,
}

/// One generation over the windows of a [`WindowDecoding`] that go on.
pub struct WindowJob {
    /// `[windows, mel_bins, frames]`
    pub features: Tensor,
    pub prompts: Vec<DecoderPrompt>,
    /// Which windows of the decoding, in order.
    windows: Vec<usize>,
}

impl WindowDecoding {
    /// Takes a job's outputs (in its order): each window's tokens, its final eos removed,
    /// follow what it had, and the window goes on when its last segment closed early.
    pub fn absorb(&mut self, job: &WindowJob, outputs: Vec<Vec<u32>>) {
        const INPUT_STRIDE: usize = 2; // feature frames per encoder position
        for ((&w, mut tokens), prompt) in job.windows.iter().zip(outputs).zip(&job.prompts) {
            if tokens
                .last()
                .is_some_and(|id| self.eos_token_ids.contains(id))
            {
                tokens.pop();
            }
            let state = &mut self.windows[w];
            state.prompt.get_or_insert_with(|| prompt.clone());
            let seek_frames = (self.frames - state.seek).min(self.frames);
            let offset = match self.timestamp_begin {
                Some(begin) => segment_offset(&tokens, begin, seek_frames, INPUT_STRIDE),
                None => seek_frames,
            };
            state.tokens.extend_from_slice(&tokens);
            state.seek += offset;
            state.done = offset == 0 || state.seek >= self.frames;
        }
    }

    /// Every window's tokens with its place in seconds, in order.
    pub fn finish(self) -> Vec<WindowTokens> {
        self.windows
            .into_iter()
            .map(|w| WindowTokens {
                tokens: w.tokens,
                seconds: w.seconds,
                stride_left: w.stride_left,
                stride_right: w.stride_right,
            })
            .collect()
    }
}

/// How many frames a generation's output covers (`_retrieve_segment`): all of them unless
/// its last segment ends with two timestamps, then up to the last one (2 frames per
/// timestamp step).
fn segment_offset(tokens: &[u32], begin: u32, seek_frames: usize, input_stride: usize) -> usize {
    let is_timestamp: Vec<bool> = tokens.iter().map(|&t| t >= begin).collect();
    let single_ending = is_timestamp.len() >= 2
        && !is_timestamp[is_timestamp.len() - 2]
        && is_timestamp[is_timestamp.len() - 1];
    let last_pair = is_timestamp.windows(2).rposition(|w| w[0] && w[1]);
    match last_pair {
        Some(i) if !single_ending => {
            // The slice ends after the pair's second timestamp; its first gives the seek.
            let position = (tokens[i] - begin) as usize;
            position * input_stride
        }
        _ => seek_frames,
    }
}

/// A call's settings, resolved once: the model, its feature extractor, the generation
/// settings and how windows are cut. [`run`] drives it; a server drives the same pieces with
/// its own batching engine.
pub struct Transcriber<'a> {
    generator: &'a Seq2SeqGenerator,
    extractor: &'a WhisperFeatureExtractor,
    config: GenerationConfig,
    options: &'a Options,
    seed: u64,
    /// `<|notimestamps|> + 1`: every id from here on is a timestamp.
    timestamp_begin: Option<u32>,
    /// Seconds per timestamp step (`chunk_length / max_source_positions`: 0.02).
    time_precision: f64,
}

/// One window of samples and the strides it overlaps its neighbours by, in samples.
pub struct Window {
    pub samples: Vec<f32>,
    pub stride_left: usize,
    pub stride_right: usize,
}

/// Cuts an audio stream into the pipeline's windows as it reads it: a window and the next
/// step of samples are held at most.
pub struct WindowReader {
    source: Source,
    name: String,
    /// Samples read from the start of the audio so far.
    read: usize,
    /// The audio from `start` on, as far as read.
    buffer: Vec<f32>,
    start: usize,
    ended: bool,
    done: bool,
    /// `None`: the whole audio is one window.
    cut: Option<Cut>,
    n_samples: usize,
    rate: u32,
}

enum Source {
    Stream(Box<AudioStream>),
    Samples(std::vec::IntoIter<f32>),
}

/// Window and stride lengths in samples.
#[derive(Clone, Copy)]
struct Cut {
    chunk_len: usize,
    left: usize,
    right: usize,
}

impl WindowReader {
    fn pull(&mut self, max: usize) -> Result<Vec<f32>> {
        let more = match &mut self.source {
            Source::Stream(stream) => stream.read(max)?,
            Source::Samples(rest) => rest.by_ref().take(max).collect(),
        };
        self.read += more.len();
        Ok(more)
    }

    /// Seconds of audio read so far (all of it once the windows are exhausted).
    pub fn seconds(&self) -> f64 {
        self.read as f64 / self.rate as f64
    }

    /// The next window; `None` after the last.
    pub fn next_window(&mut self) -> Result<Option<Window>> {
        if self.done {
            return Ok(None);
        }
        let Some(cut) = self.cut else {
            self.done = true;
            let samples = std::mem::take(&mut self.buffer);
            return Ok(Some(Window {
                samples,
                stride_left: 0,
                stride_right: 0,
            }));
        };
        loop {
            while !self.ended && self.buffer.len() < cut.chunk_len + 1 {
                let more = self.pull(cut.chunk_len + 1 - self.buffer.len())?;
                self.ended = more.is_empty();
                self.buffer.extend_from_slice(&more);
            }
            let end = cut.chunk_len.min(self.buffer.len());
            let is_last = self.ended && self.buffer.len() <= cut.chunk_len;
            let stride_left = if self.start == 0 { 0 } else { cut.left };
            let stride_right = if is_last { 0 } else { cut.right };
            let window = (end > stride_left).then(|| Window {
                samples: self.buffer[..end].to_vec(),
                stride_left,
                stride_right,
            });
            if is_last {
                self.done = true;
            } else {
                let step = cut.chunk_len - cut.left - cut.right;
                self.buffer.drain(..step.min(self.buffer.len()));
                self.start += step;
            }
            match window {
                Some(w) => return Ok(Some(w)),
                None if self.done => return Ok(None),
                None => continue,
            }
        }
    }

    /// Up to `n` next windows; empty after the last.
    pub fn next_windows(&mut self, n: usize) -> Result<Vec<Window>> {
        let mut windows = Vec::with_capacity(n);
        while windows.len() < n {
            match self.next_window()? {
                Some(w) => windows.push(w),
                None => break,
            }
        }
        Ok(windows)
    }

    /// What errors call the audio.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<'a> Transcriber<'a> {
    /// The settings of a call with `options` on `generator` (a speech model).
    pub fn new(generator: &'a Seq2SeqGenerator, options: &'a Options) -> Result<Self> {
        let extractor = generator
            .feature_extractor()
            .ok_or_else(|| Error::TaskMismatch {
                model: generator.model().class_name().into(),
                task: "automatic-speech-recognition".into(),
                reason: "it has no audio feature extractor (preprocessor_config.json)".into(),
            })?;
        let mut model_config = generator.generation_config().clone();
        if model_config.num_beams == 1 {
            model_config.num_beams = DEFAULT_NUM_BEAMS;
        }
        let config = model_config.with(&options.generation)?;
        if options.return_timestamps && config.no_timestamps_token_id.is_none() {
            return Err(Error::InvalidOption {
                option: "return_timestamps".into(),
                reason: "the model's generation_config.json has no no_timestamps_token_id".into(),
            });
        }
        if let Some(chunk) = options.chunk_length_s {
            if !(chunk.is_finite() && chunk > 0.0) {
                return Err(Error::InvalidOption {
                    option: "chunk_length_s".into(),
                    reason: format!("{chunk} must be a positive number of seconds"),
                });
            }
        }
        let max_source = generator
            .model()
            .max_source_positions()
            .unwrap_or(1500)
            .max(1);
        Ok(Transcriber {
            generator,
            extractor,
            timestamp_begin: config.no_timestamps_token_id.map(|id| id + 1),
            seed: options.generation.seed.unwrap_or(0),
            config,
            options,
            time_precision: extractor.chunk_length as f64 / max_source as f64,
        })
    }

    /// The generation settings: the model's, the pipeline's defaults, the call's options.
    pub fn config(&self) -> &GenerationConfig {
        &self.config
    }

    /// The seed of sampling.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Starts reading `input` in windows: one window for audio of up to 30 s (unless
    /// `chunk_length_s` is given), windows with strides beyond.
    pub fn open(&self, input: &AudioInput) -> Result<WindowReader> {
        let rate = self.extractor.sampling_rate;
        let source =
            match input {
                AudioInput::File(path) => Source::Stream(Box::new(AudioStream::open(path, rate)?)),
                AudioInput::Bytes { name, bytes } => Source::Stream(Box::new(
                    AudioStream::from_bytes(bytes.clone(), name, rate)?,
                )),
                AudioInput::Samples {
                    name,
                    samples,
                    sampling_rate,
                } => Source::Samples(
                    samples_at(name, samples, sampling_rate.unwrap_or(rate), rate)?.into_iter(),
                ),
            };
        let n_samples = self.extractor.n_samples();
        let mut reader = WindowReader {
            source,
            name: input.name(),
            read: 0,
            buffer: Vec::new(),
            start: 0,
            ended: false,
            done: false,
            cut: None,
            n_samples,
            rate,
        };
        // The first window's worth, and one sample more to tell whether the audio goes on.
        reader.buffer = reader.pull(n_samples + 1)?;
        if reader.buffer.is_empty() {
            return Err(Error::BadAudio {
                file: PathBuf::from(&reader.name),
                reason: "no audio samples".into(),
            });
        }
        let chunk_s = match self.options.chunk_length_s {
            Some(s) => Some(s),
            None if reader.buffer.len() > n_samples => Some(self.extractor.chunk_length as f32),
            None => None,
        };
        if let Some(chunk_s) = chunk_s {
            let (left_s, right_s) = self
                .options
                .stride_length_s
                .unwrap_or((chunk_s / 6.0, chunk_s / 6.0));
            let samples = |s: f32| (s as f64 * rate as f64).round().max(0.0) as usize;
            let cut = Cut {
                chunk_len: samples(chunk_s),
                left: samples(left_s),
                right: samples(right_s),
            };
            if cut.chunk_len <= cut.left + cut.right || cut.chunk_len > reader.n_samples {
                return Err(Error::InvalidOption {
                    option: "chunk_length_s".into(),
                    reason: format!(
                        "windows of {chunk_s} s with strides of {left_s} s and {right_s} s: a window must be longer than its strides and at most {} s",
                        self.extractor.chunk_length
                    ),
                });
            }
            reader.cut = Some(cut);
        }
        Ok(reader)
    }

    /// Starts decoding `windows`: their features.
    pub fn start(&self, windows: &[Window]) -> Result<WindowDecoding> {
        let rate = self.extractor.sampling_rate as f64;
        Ok(WindowDecoding {
            windows: windows
                .iter()
                .map(|w| WindowState {
                    features: self.extractor.extract(&w.samples),
                    prompt: None,
                    seek: 0,
                    tokens: Vec::new(),
                    done: false,
                    seconds: w.samples.len() as f64 / rate,
                    stride_left: w.stride_left as f64 / rate,
                    stride_right: w.stride_right as f64 / rate,
                })
                .collect(),
            bins: self.extractor.feature_size,
            frames: self.extractor.nb_max_frames(),
            timestamp_begin: self
                .options
                .return_timestamps
                .then_some(self.timestamp_begin)
                .flatten(),
            eos_token_ids: self.config.eos_token_ids.clone(),
        })
    }

    /// The next generation of `decoding`'s windows that go on (`None` when every window is
    /// done): their features from where each continues, and their prompts (chosen at the
    /// first generation: the language detected then stays).
    pub fn next_job(&self, decoding: &WindowDecoding) -> Result<Option<WindowJob>> {
        let going: Vec<usize> = (0..decoding.windows.len())
            .filter(|&w| !decoding.windows[w].done)
            .collect();
        if going.is_empty() {
            return Ok(None);
        }
        let (bins, frames) = (decoding.bins, decoding.frames);
        let mut features = vec![0f32; going.len() * bins * frames];
        for (slot, &w) in going.iter().enumerate() {
            let state = &decoding.windows[w];
            let out = &mut features[slot * bins * frames..(slot + 1) * bins * frames];
            let n = frames - state.seek.min(frames);
            for b in 0..bins {
                out[b * frames..b * frames + n]
                    .copy_from_slice(&state.features[b * frames + state.seek..(b + 1) * frames]);
            }
        }
        let device = self.generator.model().input_embeddings().device().clone();
        let features = Tensor::from_vec(features, (going.len(), bins, frames), &device)?;
        let prompts = going
            .iter()
            .enumerate()
            .map(|(slot, &w)| match &decoding.windows[w].prompt {
                Some(prompt) => Ok(prompt.clone()),
                None => Ok(self.prompts(&features.narrow(0, slot, 1)?)?.remove(0)),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(WindowJob {
            features,
            prompts,
            windows: going,
        }))
    }

    /// Each window's decoder prompt (its language detected when the model is multilingual
    /// and none was given) with the timestamp rules when timestamps are asked for.
    pub fn prompts(&self, features: &Tensor) -> Result<Vec<DecoderPrompt>> {
        let timestamps = if self.options.return_timestamps {
            let begin = self.timestamp_begin.ok_or_else(|| Error::InvalidOption {
                option: "return_timestamps".into(),
                reason: "the model has no no_timestamps_token_id".into(),
            })?;
            Some(Timestamps {
                no_timestamps_token_id: begin - 1,
                timestamp_begin: begin,
                eos_token_id: self
                    .config
                    .eos_token_ids
                    .first()
                    .copied()
                    .unwrap_or(begin - 1),
                max_initial_timestamp_index: self.config.max_initial_timestamp_index,
            })
        } else {
            None
        };
        let previous = self.previous_text()?;
        (0..features.dim(0)?)
            .map(|i| {
                let mut tokens = previous.clone();
                tokens.extend(self.prompt(&features.narrow(0, i, 1)?)?);
                Ok(DecoderPrompt {
                    tokens,
                    timestamps: timestamps.clone(),
                })
            })
            .collect()
    }

    /// `<|startofprev|>` and the tokens of `options.prompt` (its last
    /// `max_target_positions / 2 - 1`, as transformers keeps them); empty without a prompt.
    fn previous_text(&self) -> Result<Vec<u32>> {
        let Some(text) = self.options.prompt.as_deref() else {
            return Ok(Vec::new());
        };
        let tokenizer = self.generator.text_tokenizer().inner();
        let start =
            tokenizer
                .token_to_id("<|startofprev|>")
                .ok_or_else(|| Error::InvalidOption {
                    option: "prompt".into(),
                    reason: "the tokenizer has no <|startofprev|> token".into(),
                })?;
        let encoding = tokenizer
            .encode(format!(" {}", text.trim()), false)
            .map_err(|e| Error::Tokenize {
                index: 0,
                reason: e.to_string(),
            })?;
        let ids = encoding.get_ids();
        let keep =
            (self.generator.model().max_target_positions().unwrap_or(448) / 2).saturating_sub(1);
        let mut tokens = vec![start];
        tokens.extend_from_slice(&ids[ids.len().saturating_sub(keep)..]);
        Ok(tokens)
    }

    /// The transcript of a file's windows, in order.
    pub fn output(&self, windows: &[WindowTokens], audio_seconds: f64) -> Result<Output> {
        let (text, chunks) = self.merge(windows)?;
        Ok(Output {
            text,
            chunks: self.options.return_timestamps.then_some(chunks),
            audio_seconds,
        })
    }

    /// Whisper's decoder prompt of one window (`_retrieve_init_tokens`).
    fn prompt(&self, features: &Tensor) -> Result<Vec<u32>> {
        let c = &self.config;
        let start = self.generator.decoder_start_token_id()?;
        let mut tokens: Vec<Option<u32>> = vec![Some(start)];
        let (language, task) = (&self.options.language, &self.options.task);
        if c.is_multilingual == Some(false) && (language.is_some() || task.is_some()) {
            return Err(Error::InvalidOption {
                option: if language.is_some() {
                    "language"
                } else {
                    "task"
                }
                .into(),
                reason: format!(
                    "{} is English-only: it takes neither a language nor a task",
                    self.generator.model().class_name()
                ),
            });
        }
        if language.is_none() && task.is_none() {
            // forced_decoder_ids of older configs: the tokens at positions 1, 2, ...
            for (position, id) in &c.forced_decoder_ids {
                if *position != tokens.len() {
                    break;
                }
                tokens.push(*id);
            }
        }
        let language_id = match language {
            Some(language) => Some(self.language_id(language)?),
            None if !c.lang_to_id.is_empty() && tokens.get(1).copied().flatten().is_none() => {
                Some(self.detect_language(features)?)
            }
            None => None,
        };
        if let Some(id) = language_id {
            if tokens.len() > 1 {
                tokens[1] = Some(id);
            } else {
                tokens.push(Some(id));
            }
        }
        let task_ids: Vec<u32> = c.task_to_id.values().copied().collect();
        if let Some(task) = task {
            let id = *c
                .task_to_id
                .get(task.as_str())
                .ok_or_else(|| Error::InvalidOption {
                    option: "task".into(),
                    reason: format!(
                        "`{task}`; the model's tasks: {}",
                        c.task_to_id.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                })?;
            if tokens
                .iter()
                .any(|t| t.is_some_and(|t| task_ids.contains(&t)))
            {
                for t in tokens.iter_mut() {
                    if t.is_some_and(|t| task_ids.contains(&t)) {
                        *t = Some(id);
                    }
                }
            } else {
                tokens.push(Some(id));
            }
        } else if language.is_some() {
            if let Some(&transcribe) = c.task_to_id.get("transcribe") {
                if !tokens
                    .iter()
                    .any(|t| t.is_some_and(|t| task_ids.contains(&t)))
                {
                    tokens.push(Some(transcribe));
                }
            }
        }
        if let Some(no_timestamps) = c.no_timestamps_token_id {
            let last_is = tokens.last().copied().flatten() == Some(no_timestamps);
            if !self.options.return_timestamps && !last_is {
                tokens.push(Some(no_timestamps));
            } else if self.options.return_timestamps && last_is {
                tokens.pop();
            }
        }
        Ok(tokens.into_iter().flatten().collect())
    }

    /// The language token of `language` (`en`, `english`, `<|en|>`).
    fn language_id(&self, language: &str) -> Result<u32> {
        let lang_to_id = &self.config.lang_to_id;
        let lower = language.to_lowercase();
        let token = if lang_to_id.contains_key(&lower) {
            lower.clone()
        } else if let Some(code) = language_code(&lower) {
            format!("<|{code}|>")
        } else {
            format!("<|{lower}|>")
        };
        lang_to_id.get(&token).copied().ok_or_else(|| Error::InvalidOption {
            option: "language".into(),
            reason: format!(
                "`{language}` is not a language of this model ({} languages in generation_config.json's lang_to_id)",
                lang_to_id.len()
            ),
        })
    }

    /// The likeliest language token after `<|startoftranscript|>` for the first window
    /// (`detect_language`).
    fn detect_language(&self, features: &Tensor) -> Result<u32> {
        let first = features.narrow(0, 0, 1)?;
        let start = self.generator.decoder_start_token_id()?;
        let languages: Vec<u32> = self.config.lang_to_id.values().copied().collect();
        let row = self
            .generator
            .first_logits(EncoderInput::Features(&first), &[start])?;
        languages
            .iter()
            .copied()
            .filter(|&id| (id as usize) < row.len())
            .max_by(|&a, &b| row[a as usize].total_cmp(&row[b as usize]).then(b.cmp(&a)))
            .ok_or_else(|| Error::InvalidOption {
                option: "language".into(),
                reason: "the model's lang_to_id names no token of its vocabulary".into(),
            })
    }

    /// The windows' tokens as one transcript (`_decode_asr` without word timestamps).
    fn merge(&self, windows: &[WindowTokens]) -> Result<(String, Vec<Chunk>)> {
        let decode = |tokens: &[u32]| self.generator.decode(tokens, 0);
        let special = |id: u32| self.generator.is_special_token(id);
        let begin = self.timestamp_begin.unwrap_or(u32::MAX);
        let precision = self.time_precision;
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut chunk = Chunk {
            timestamp: (None, None),
            text: String::new(),
        };
        let mut time_offset = 0.0f64;
        let mut previous: Vec<Vec<u32>> = Vec::new();
        let mut skip = false;
        for window in windows {
            let tokens = &window.tokens;
            let mut last_timestamp: Option<u32> = None;
            let mut first_timestamp = begin as f64;
            time_offset -= window.stride_left;
            let right_stride_start = window.seconds - window.stride_right;
            if window.stride_left > 0.0 {
                first_timestamp = window.stride_left / precision + begin as f64;
            }
            if window.stride_right > 0.0 {
                for &token in tokens.iter().rev() {
                    if token >= begin {
                        if last_timestamp.is_some()
                            && (token - begin) as f64 * precision < right_stride_start
                        {
                            break;
                        }
                        last_timestamp = Some(token);
                    }
                }
            }
            let mut current: Vec<u32> = Vec::new();
            let (mut cur_max, mut prev_segments, mut penultimate) = (0.0f64, 0.0f64, 0.0f64);
            for (i, &token) in tokens.iter().enumerate() {
                if token >= begin {
                    let timestamp = (token - begin) as f64 * precision;
                    if timestamp < cur_max {
                        let single_ending =
                            i >= 2 && !(tokens[i - 1] >= begin && tokens[i - 2] >= begin);
                        if single_ending {
                            prev_segments += precision * 1500.0;
                        } else {
                            cur_max = penultimate;
                            prev_segments += penultimate;
                        }
                    }
                    penultimate = cur_max;
                    cur_max = timestamp;
                    let time =
                        round2((token - begin) as f64 * precision + time_offset + prev_segments);
                    if last_timestamp.is_some_and(|last| token >= last) {
                        skip = true;
                    } else if skip || (!previous.is_empty() && (token as f64) < first_timestamp) {
                        skip = false;
                    } else if chunk.timestamp.0.is_none() {
                        chunk.timestamp.0 = Some(time);
                    } else if Some(time) != chunk.timestamp.0 {
                        chunk.timestamp.1 = Some(time);
                        previous.push(std::mem::take(&mut current));
                        chunk.text = decode(&longest_common_sequence(&previous))?;
                        chunks.push(std::mem::replace(
                            &mut chunk,
                            Chunk {
                                timestamp: (None, None),
                                text: String::new(),
                            },
                        ));
                        previous.clear();
                    }
                } else if special(token) {
                    // Language and task tokens, eos: not text.
                } else {
                    current.push(token);
                }
            }
            time_offset += window.seconds - window.stride_right;
            if !current.is_empty() {
                previous.push(current);
            } else if !previous.iter().any(|p| !p.is_empty()) {
                chunk = Chunk {
                    timestamp: (None, None),
                    text: String::new(),
                };
                previous.clear();
            }
        }
        if !previous.is_empty() {
            chunk.text = decode(&longest_common_sequence(&previous))?;
            chunks.push(chunk);
        }
        let text = chunks.iter().map(|c| c.text.as_str()).collect();
        Ok((text, chunks))
    }
}

/// One window's generated tokens (prompt and final eos removed) and its place in seconds.
pub struct WindowTokens {
    pub tokens: Vec<u32>,
    /// The window's length.
    pub seconds: f64,
    /// The overlap with the previous window.
    pub stride_left: f64,
    /// The overlap with the next window.
    pub stride_right: f64,
}

/// Python's `round(x, 2)` for the times transformers reports.
fn round2(x: f64) -> f64 {
    (x * 100.0).round_ties_even() / 100.0
}

/// transformers' `_find_longest_common_sequence`: consecutive windows' tokens joined where
/// they overlap, the best alignment of each pair the one with the most matching tokens (a
/// small bonus for longer overlaps), the left window trusted for the first half of the
/// overlap and the right one for the second.
pub fn longest_common_sequence(sequences: &[Vec<u32>]) -> Vec<u32> {
    let Some(first) = sequences.first() else {
        return Vec::new();
    };
    let mut left = first.clone();
    let mut total = Vec::new();
    for right in &sequences[1..] {
        let (left_len, right_len) = (left.len(), right.len());
        let mut best = 0.0f64;
        let mut best_indices = (left_len, left_len, 0, 0);
        for i in 1..left_len + right_len {
            let eps = i as f64 / 10000.0;
            let left_start = left_len.saturating_sub(i);
            let left_stop = left_len.min(left_len + right_len - i);
            let right_start = i.saturating_sub(left_len);
            let right_stop = right_len.min(i);
            let matches = left[left_start..left_stop]
                .iter()
                .zip(&right[right_start..right_stop])
                .filter(|(a, b)| a == b)
                .count();
            let matching = matches as f64 / i as f64 + eps;
            if matches > 1 && matching > best {
                best = matching;
                best_indices = (left_start, left_stop, right_start, right_stop);
            }
        }
        let (left_start, left_stop, right_start, right_stop) = best_indices;
        let left_mid = (left_stop + left_start) / 2;
        let right_mid = (right_stop + right_start) / 2;
        total.extend_from_slice(&left[..left_mid]);
        left = right[right_mid.min(right.len())..].to_vec();
    }
    total.extend(left);
    total
}

/// Whisper's language code of a language name (`english` → `en`), or of a code it knows.
fn language_code(name: &str) -> Option<&'static str> {
    LANGUAGES
        .iter()
        .find(|(code, language)| *language == name || *code == name)
        .map(|(code, _)| *code)
}

/// Whisper's languages (`tokenization_whisper.LANGUAGES`), code and name.
const LANGUAGES: &[(&str, &str)] = &[
    ("en", "english"),
    ("zh", "chinese"),
    ("de", "german"),
    ("es", "spanish"),
    ("ru", "russian"),
    ("ko", "korean"),
    ("fr", "french"),
    ("ja", "japanese"),
    ("pt", "portuguese"),
    ("tr", "turkish"),
    ("pl", "polish"),
    ("ca", "catalan"),
    ("nl", "dutch"),
    ("ar", "arabic"),
    ("sv", "swedish"),
    ("it", "italian"),
    ("id", "indonesian"),
    ("hi", "hindi"),
    ("fi", "finnish"),
    ("vi", "vietnamese"),
    ("he", "hebrew"),
    ("uk", "ukrainian"),
    ("el", "greek"),
    ("ms", "malay"),
    ("cs", "czech"),
    ("ro", "romanian"),
    ("da", "danish"),
    ("hu", "hungarian"),
    ("ta", "tamil"),
    ("no", "norwegian"),
    ("th", "thai"),
    ("ur", "urdu"),
    ("hr", "croatian"),
    ("bg", "bulgarian"),
    ("lt", "lithuanian"),
    ("la", "latin"),
    ("mi", "maori"),
    ("ml", "malayalam"),
    ("cy", "welsh"),
    ("sk", "slovak"),
    ("te", "telugu"),
    ("fa", "persian"),
    ("lv", "latvian"),
    ("bn", "bengali"),
    ("sr", "serbian"),
    ("az", "azerbaijani"),
    ("sl", "slovenian"),
    ("kn", "kannada"),
    ("et", "estonian"),
    ("mk", "macedonian"),
    ("br", "breton"),
    ("eu", "basque"),
    ("is", "icelandic"),
    ("hy", "armenian"),
    ("ne", "nepali"),
    ("mn", "mongolian"),
    ("bs", "bosnian"),
    ("kk", "kazakh"),
    ("sq", "albanian"),
    ("sw", "swahili"),
    ("gl", "galician"),
    ("mr", "marathi"),
    ("pa", "punjabi"),
    ("si", "sinhala"),
    ("km", "khmer"),
    ("sn", "shona"),
    ("yo", "yoruba"),
    ("so", "somali"),
    ("af", "afrikaans"),
    ("oc", "occitan"),
    ("ka", "georgian"),
    ("be", "belarusian"),
    ("tg", "tajik"),
    ("sd", "sindhi"),
    ("gu", "gujarati"),
    ("am", "amharic"),
    ("yi", "yiddish"),
    ("lo", "lao"),
    ("uz", "uzbek"),
    ("fo", "faroese"),
    ("ht", "haitian creole"),
    ("ps", "pashto"),
    ("tk", "turkmen"),
    ("nn", "nynorsk"),
    ("mt", "maltese"),
    ("sa", "sanskrit"),
    ("lb", "luxembourgish"),
    ("my", "myanmar"),
    ("bo", "tibetan"),
    ("tl", "tagalog"),
    ("mg", "malagasy"),
    ("as", "assamese"),
    ("tt", "tatar"),
    ("haw", "hawaiian"),
    ("ln", "lingala"),
    ("ha", "hausa"),
    ("ba", "bashkir"),
    ("jw", "javanese"),
    ("su", "sundanese"),
    ("yue", "cantonese"),
];

/// Samples given in memory, checked and brought to the feature extractor's `rate`.
fn samples_at(name: &str, samples: &[f32], sampling_rate: u32, rate: u32) -> Result<Vec<f32>> {
    if let Some(at) = samples.iter().position(|x| !x.is_finite()) {
        return Err(Error::BadAudio {
            file: PathBuf::from(name),
            reason: format!("sample {at} is {}", samples[at]),
        });
    }
    crate::audio::resample(samples, sampling_rate, rate, name)
}

/// The path of an input file, for callers that take paths.
pub fn file(path: impl AsRef<Path>) -> AudioInput {
    AudioInput::File(path.as_ref().to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_windows_join_once() {
        // [a b c d] and [c d f]: the overlap c d is kept once.
        let joined = longest_common_sequence(&[vec![1, 2, 3, 4], vec![3, 4, 6]]);
        assert_eq!(joined, [1, 2, 3, 4, 6]);
        // No overlap of two tokens: the windows are concatenated.
        let joined = longest_common_sequence(&[vec![1, 2], vec![5, 6]]);
        assert_eq!(joined, [1, 2, 5, 6]);
        assert_eq!(longest_common_sequence(&[vec![7, 8]]), [7, 8]);
    }

    #[test]
    fn times_round_as_python() {
        assert_eq!(round2(1.005), 1.0);
        assert_eq!(round2(0.125), 0.12);
        assert_eq!(round2(2.3456), 2.35);
    }

    #[test]
    fn language_names_and_codes() {
        assert_eq!(language_code("english"), Some("en"));
        assert_eq!(language_code("de"), Some("de"));
        assert_eq!(language_code("klingon"), None);
    }
}
