//! Whisper's log-mel input features: one 30 s window of 16 kHz samples in, an
//! `[feature_size, 3000]` log-mel spectrogram out.
//!
//! Follows transformers' `WhisperFeatureExtractor`
//! (`models/whisper/feature_extraction_whisper.py`, the torch path
//! `_torch_extract_fbank_features`) and the `mel_filter_bank` of `audio_utils.py`: a periodic
//! Hann window (`torch.hann_window`), `torch.stft` with `center=True` and reflect padding, the
//! power of bins `0..=n_fft/2`, the last frame dropped, Slaney mel filters (computed in f64 and
//! cast to f32, as `torch.from_numpy(..).to(float32)` does), `log10(max(mel, 1e-10))`, a floor
//! 8 below the window's maximum, and `(x + 4) / 4`.
//!
//! Decoding and resampling belong to the parent module; cutting a long recording into windows
//! belongs to the speech-recognition pipeline.

use crate::error::{Error, Result};
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use serde::de::DeserializeOwned;
use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

/// The highest mel filter edge; transformers passes 8000 Hz whatever the sampling rate.
const MAX_FREQUENCY: f64 = 8000.0;

/// The floor under the mel power before `log10` (`torch.clamp(mel_spec, min=1e-10)`).
const MEL_FLOOR: f64 = 1e-10;

/// Frames transformed per batch: enough to amortise the FFT call, small enough that the
/// buffer (`FRAME_PAIRS * n_fft` complex numbers) stays in cache.
const FRAME_PAIRS: usize = 32;

/// transformers' `WhisperFeatureExtractor` (`models/whisper/feature_extraction_whisper.py`,
/// the torch path `_torch_extract_fbank_features`).
///
/// The public fields are the `preprocessor_config.json` keys; [`extract`](Self::extract)
/// honours them as they are when it runs (changing one afterwards rebuilds the window, the FFT
/// plan and the filters for that call).
#[derive(Clone)]
pub struct WhisperFeatureExtractor {
    /// Mel bins per frame (80, or 128 for large-v3).
    pub feature_size: usize,
    /// The rate the samples must be at, in Hz (16000).
    pub sampling_rate: u32,
    /// Samples between frames (160: 100 frames a second).
    pub hop_length: usize,
    /// FFT size and window length (400).
    pub n_fft: usize,
    /// Seconds per window (30).
    pub chunk_length: usize,
    /// The sample value that pads a short input to the window (0.0, silence).
    pub padding_value: f32,
    plan: Plan,
}

/// What [`WhisperFeatureExtractor::extract`] precomputes from the configuration.
#[derive(Clone)]
struct Plan {
    feature_size: usize,
    sampling_rate: u32,
    n_fft: usize,
    window: Vec<f64>, // [n_fft], the f32 window widened
    fft: Arc<dyn Fft<f64>>,
    filters: Vec<MelFilter>, // [feature_size]
}

/// One mel filter's non-zero weights: bins `start..start + weights.len()`.
#[derive(Clone, Debug, PartialEq)]
struct MelFilter {
    start: usize,
    weights: Vec<f64>, // f32 values widened
}

impl std::fmt::Debug for WhisperFeatureExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperFeatureExtractor")
            .field("feature_size", &self.feature_size)
            .field("sampling_rate", &self.sampling_rate)
            .field("hop_length", &self.hop_length)
            .field("n_fft", &self.n_fft)
            .field("chunk_length", &self.chunk_length)
            .field("padding_value", &self.padding_value)
            .finish()
    }
}

impl WhisperFeatureExtractor {
    /// The defaults with `feature_size` mel bins (80, or 128 for large-v3): 16 kHz, hop 160,
    /// FFT 400, 30 s windows, padded with zeros.
    pub fn new(feature_size: usize) -> Self {
        let feature_size = feature_size.max(1);
        WhisperFeatureExtractor {
            feature_size,
            sampling_rate: 16000,
            hop_length: 160,
            n_fft: 400,
            chunk_length: 30,
            padding_value: 0.0,
            plan: Plan::new(feature_size, 16000, 400),
        }
    }

    /// Reads preprocessor_config.json, or the `feature_extractor` object of the
    /// processor_config.json transformers 5 writes (feature_size, sampling_rate, hop_length,
    /// chunk_length, n_fft, padding_value; a missing key keeps transformers' default,
    /// unknown keys are ignored); errors name the file and field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let bad = |field: &str, reason: String| Error::BadConfig {
            file: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad("(file)", e.to_string()))?;
        let object = json
            .as_object()
            .ok_or_else(|| bad("(file)", "expected a JSON object".to_string()))?;
        let object = match object.get("feature_extractor") {
            Some(serde_json::Value::Object(inner)) => inner,
            _ => object,
        };
        // A missing key (or null) keeps transformers' default; any other key is ignored.
        fn key<T: DeserializeOwned>(
            object: &serde_json::Map<String, serde_json::Value>,
            name: &str,
            default: T,
        ) -> std::result::Result<T, String> {
            match object.get(name) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(value) => T::deserialize(value).map_err(|e| e.to_string()),
            }
        }
        let defaults = WhisperFeatureExtractor::new(80);
        let feature_size = key(object, "feature_size", defaults.feature_size)
            .map_err(|e| bad("feature_size", e))?;
        let sampling_rate = key(object, "sampling_rate", defaults.sampling_rate)
            .map_err(|e| bad("sampling_rate", e))?;
        let hop_length =
            key(object, "hop_length", defaults.hop_length).map_err(|e| bad("hop_length", e))?;
        let chunk_length = key(object, "chunk_length", defaults.chunk_length)
            .map_err(|e| bad("chunk_length", e))?;
        let n_fft = key(object, "n_fft", defaults.n_fft).map_err(|e| bad("n_fft", e))?;
        let padding_value = key(object, "padding_value", defaults.padding_value)
            .map_err(|e| bad("padding_value", e))?;
        for (field, value) in [
            ("feature_size", feature_size),
            ("sampling_rate", sampling_rate as usize),
            ("hop_length", hop_length),
            ("chunk_length", chunk_length),
        ] {
            if value == 0 {
                return Err(bad(field, "must be positive".to_string()));
            }
        }
        if n_fft < 2 {
            return Err(bad("n_fft", format!("{n_fft} is too small (at least 2)")));
        }
        let n_samples = chunk_length
            .checked_mul(sampling_rate as usize)
            .filter(|&n| n <= 1 << 32)
            .ok_or_else(|| bad("chunk_length", format!("{chunk_length} s is too long")))?;
        // torch.stft's reflect padding needs more samples than it pads on each side.
        if n_fft > n_samples {
            return Err(bad(
                "n_fft",
                format!("{n_fft} is longer than the window of {n_samples} samples"),
            ));
        }
        Ok(WhisperFeatureExtractor {
            feature_size,
            sampling_rate,
            hop_length,
            n_fft,
            chunk_length,
            padding_value,
            plan: Plan::new(feature_size, sampling_rate, n_fft),
        })
    }

    /// Samples per window (chunk_length * sampling_rate = 480000).
    pub fn n_samples(&self) -> usize {
        self.chunk_length * self.sampling_rate as usize
    }

    /// Frames per window (n_samples / hop_length = 3000).
    pub fn nb_max_frames(&self) -> usize {
        self.n_samples() / self.hop_length.max(1)
    }

    /// Log-mel features of one window.
    ///
    /// `samples` (mono, at `sampling_rate`; at most `n_samples`, extra ones are cut as the
    /// extractor's `truncation=True` does) are padded with `padding_value` to `n_samples`
    /// first, exactly as the extractor's `padding="max_length"`. Returns
    /// `[feature_size * nb_max_frames]` f32, bin-major: bin `b`, frame `t` at
    /// `b * nb_max_frames + t`. (With an odd `n_fft` torch yields one frame fewer when
    /// `hop_length` divides `n_samples`, and so does this.)
    pub fn extract(&self, samples: &[f32]) -> Vec<f32> {
        let n_samples = self.n_samples();
        let n_fft = self.n_fft.max(2);
        let hop = self.hop_length.max(1);
        let plan = if self
            .plan
            .matches(self.feature_size, self.sampling_rate, n_fft)
        {
            Cow::Borrowed(&self.plan)
        } else {
            Cow::Owned(Plan::new(self.feature_size, self.sampling_rate, n_fft))
        };
        let n_mels = plan.filters.len();

        // The window, padded, then reflect-padded by n_fft/2 on each side (torch.stft center).
        let pad = n_fft / 2;
        let mut padded = vec![self.padding_value; n_samples + 2 * pad];
        let body = &mut padded[pad..pad + n_samples];
        let kept = samples.len().min(n_samples);
        body[..kept].copy_from_slice(&samples[..kept]);
        reflect_pad(&mut padded, pad);

        // torch.stft yields 1 + (len - n_fft) / hop frames; transformers drops the last.
        let frames = if padded.len() >= n_fft {
            (padded.len() - n_fft) / hop
        } else {
            0
        };
        let mut out = vec![0f32; n_mels * frames];
        if frames == 0 {
            return out;
        }

        // Two real frames per complex FFT: frame a in the real part, frame b in the imaginary
        // part, separated afterwards by the conjugate symmetry of real spectra.
        let n_bins = n_fft / 2 + 1;
        let mut buffer = vec![Complex::new(0.0, 0.0); FRAME_PAIRS * n_fft];
        let mut scratch = vec![Complex::new(0.0, 0.0); plan.fft.get_inplace_scratch_len()];
        let mut power_a = vec![0f64; n_bins];
        let mut power_b = vec![0f64; n_bins];
        let frame = |t: usize| &padded[t * hop..t * hop + n_fft];
        let mut t0 = 0;
        while t0 < frames {
            let pairs = (frames - t0).div_ceil(2).min(FRAME_PAIRS);
            let batch = &mut buffer[..pairs * n_fft];
            for (p, chunk) in batch.chunks_exact_mut(n_fft).enumerate() {
                let (a, b) = (t0 + 2 * p, t0 + 2 * p + 1);
                let fa = frame(a);
                if b < frames {
                    let fb = frame(b);
                    for (i, c) in chunk.iter_mut().enumerate() {
                        let w = plan.window[i];
                        *c = Complex::new(fa[i] as f64 * w, fb[i] as f64 * w);
                    }
                } else {
                    for (i, c) in chunk.iter_mut().enumerate() {
                        *c = Complex::new(fa[i] as f64 * plan.window[i], 0.0);
                    }
                }
            }
            plan.fft.process_with_scratch(batch, &mut scratch);
            for (p, spectrum) in batch.chunks_exact(n_fft).enumerate() {
                let (a, b) = (t0 + 2 * p, t0 + 2 * p + 1);
                for k in 0..n_bins {
                    let z = spectrum[k];
                    let zc = spectrum[(n_fft - k) % n_fft].conj();
                    // A = (Z[k] + conj Z[n-k]) / 2, B = (Z[k] - conj Z[n-k]) / 2i.
                    power_a[k] = (z + zc).norm_sqr() * 0.25;
                    power_b[k] = (z - zc).norm_sqr() * 0.25;
                }
                for (m, filter) in plan.filters.iter().enumerate() {
                    let row = &mut out[m * frames..(m + 1) * frames];
                    row[a] = log_mel(filter, &power_a);
                    if b < frames {
                        row[b] = log_mel(filter, &power_b);
                    }
                }
            }
            t0 += 2 * pairs;
        }

        let max = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let floor = max - 8.0;
        for x in &mut out {
            *x = (x.max(floor) + 4.0) / 4.0;
        }
        out
    }
}

impl Plan {
    fn new(feature_size: usize, sampling_rate: u32, n_fft: usize) -> Self {
        let mut planner = FftPlanner::new();
        Plan {
            feature_size,
            sampling_rate,
            n_fft,
            window: hann_window(n_fft),
            fft: planner.plan_fft_forward(n_fft),
            filters: sparse_filters(&mel_filter_bank(
                n_fft / 2 + 1,
                feature_size,
                MAX_FREQUENCY,
                sampling_rate,
            )),
        }
    }

    fn matches(&self, feature_size: usize, sampling_rate: u32, n_fft: usize) -> bool {
        self.feature_size == feature_size
            && self.sampling_rate == sampling_rate
            && self.n_fft == n_fft
    }
}

/// `log10(max(filter · power, 1e-10))` of one frame.
fn log_mel(filter: &MelFilter, power: &[f64]) -> f32 {
    let bins = &power[filter.start..filter.start + filter.weights.len()];
    let mel: f64 = filter.weights.iter().zip(bins).map(|(w, p)| w * p).sum();
    mel.max(MEL_FLOOR).log10() as f32
}

/// Fills `padded[..pad]` and `padded[len - pad..]` by reflecting the samples between them
/// about the first and last sample, excluding those (`torch.nn.functional.pad` mode
/// "reflect": `[.., x2, x1 | x0, x1, x2, ..]`). The middle must hold more than `pad` samples.
fn reflect_pad(padded: &mut [f32], pad: usize) {
    let len = padded.len();
    if len < 3 * pad + 1 {
        // Too short to reflect (torch raises); leave the padding value in place.
        return;
    }
    for i in 0..pad {
        padded[pad - 1 - i] = padded[pad + 1 + i];
        padded[len - pad + i] = padded[len - pad - 2 - i];
    }
}

/// `torch.hann_window(n)` (periodic): `0.5 - 0.5 cos(2 pi i / n)`, rounded to f32 as torch
/// stores it.
fn hann_window(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos();
            w as f32 as f64
        })
        .collect()
}

/// `audio_utils.hertz_to_mel(freq, mel_scale="slaney")`: linear below 1 kHz, logarithmic
/// above.
fn hertz_to_mel(freq: f64) -> f64 {
    let logstep = 27.0 / 6.4f64.ln();
    if freq >= 1000.0 {
        15.0 + (freq / 1000.0).ln() * logstep
    } else {
        3.0 * freq / 200.0
    }
}

/// `audio_utils.mel_to_hertz(mels, mel_scale="slaney")`.
fn mel_to_hertz(mels: f64) -> f64 {
    let logstep = 6.4f64.ln() / 27.0;
    if mels >= 15.0 {
        1000.0 * (logstep * (mels - 15.0)).exp()
    } else {
        200.0 * mels / 3.0
    }
}

/// `np.linspace(start, stop, num)`, with numpy's arithmetic (`i * step + start`, the last
/// point exactly `stop`).
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = y.last_mut() {
        *last = stop;
    }
    y
}

/// transformers' `audio_utils.mel_filter_bank(num_frequency_bins, num_mel_filters,
/// min_frequency=0.0, max_frequency, sampling_rate, norm="slaney", mel_scale="slaney")`,
/// computed in f64 and cast to f32 as the torch path does.
///
/// Returns `[num_frequency_bins][num_mel_filters]`.
fn mel_filter_bank(
    num_frequency_bins: usize,
    num_mel_filters: usize,
    max_frequency: f64,
    sampling_rate: u32,
) -> Vec<Vec<f32>> {
    let mel_freqs = linspace(
        hertz_to_mel(0.0),
        hertz_to_mel(max_frequency),
        num_mel_filters + 2,
    );
    let filter_freqs: Vec<f64> = mel_freqs.iter().map(|&m| mel_to_hertz(m)).collect();
    // `sampling_rate // 2` in the Python: the integer half.
    let fft_freqs = linspace(0.0, (sampling_rate / 2) as f64, num_frequency_bins.max(2));
    let diff: Vec<f64> = filter_freqs.windows(2).map(|w| w[1] - w[0]).collect();
    fft_freqs
        .iter()
        .take(num_frequency_bins)
        .map(|&f| {
            (0..num_mel_filters)
                .map(|j| {
                    // _create_triangular_filter_bank, then the Slaney area normalisation.
                    let down = -(filter_freqs[j] - f) / diff[j];
                    let up = (filter_freqs[j + 2] - f) / diff[j + 1];
                    let weight = 0f64.max(down.min(up));
                    let enorm = 2.0 / (filter_freqs[j + 2] - filter_freqs[j]);
                    (weight * enorm) as f32
                })
                .collect()
        })
        .collect()
}

/// Each filter's non-zero span of `bank` (`[bins][filters]`): the triangles are narrow, so
/// the product costs about two multiplications per bin instead of `filters` of them.
fn sparse_filters(bank: &[Vec<f32>]) -> Vec<MelFilter> {
    let n_filters = bank.first().map_or(0, Vec::len);
    (0..n_filters)
        .map(|j| {
            let nonzero = |row: &Vec<f32>| row[j] != 0.0;
            let start = bank.iter().position(nonzero).unwrap_or(0);
            let end = bank.iter().rposition(nonzero).map_or(start, |e| e + 1);
            MelFilter {
                start,
                weights: bank[start..end].iter().map(|row| row[j] as f64).collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hann_window_is_periodic() {
        let w = hann_window(400);
        assert_eq!(w.len(), 400);
        assert_eq!(w[0], 0.0);
        assert_eq!(w[200], 1.0);
        // Periodic: symmetric about n/2, not about (n-1)/2, so w[1] == w[399].
        assert!((w[1] - w[399]).abs() < 1e-7);
        assert!((w[100] - 0.5).abs() < 1e-7);
    }

    #[test]
    fn reflect_pad_mirrors_without_repeating_the_edge() {
        let mut x = vec![0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 0.0, 0.0];
        reflect_pad(&mut x, 2);
        assert_eq!(x, vec![3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 2.0]);
    }

    #[test]
    fn linspace_matches_numpy() {
        assert_eq!(linspace(0.0, 8000.0, 201)[1], 40.0);
        assert_eq!(linspace(0.0, 1.0, 3), vec![0.0, 0.5, 1.0]);
    }

    #[test]
    fn mel_scale_round_trips() {
        assert_eq!(hertz_to_mel(500.0), 7.5);
        assert!((hertz_to_mel(8000.0) - 45.245640471924965).abs() < 1e-12);
        for f in [0.0, 300.0, 999.0, 1000.0, 4321.0, 8000.0] {
            assert!((mel_to_hertz(hertz_to_mel(f)) - f).abs() < 1e-9);
        }
    }

    #[test]
    fn mel_filter_bank_matches_transformers() {
        // Values from transformers' mel_filter_bank(201, 80, 0.0, 8000.0, 16000, "slaney",
        // "slaney") (float64).
        let bank = mel_filter_bank(201, 80, 8000.0, 16000);
        assert_eq!(bank.len(), 201);
        assert_eq!(bank[0].len(), 80);
        assert_eq!(bank[0][0], 0.0);
        assert!((bank[1][0] as f64 - 0.024_862_593_984_176_087).abs() < 1e-9);
        assert!((bank[1][1] as f64 - 0.001_990_821_888_098_070_6).abs() < 1e-9);
        assert!((bank[2][1] as f64 - 0.022_871_772_096_078_023).abs() < 1e-9);
        // Filter 60 (log region) spans bins 90..=96 and peaks at 93.
        assert_eq!(bank[89][60], 0.0);
        assert!((bank[93][60] as f64 - 0.006_591_092_774_765_085).abs() < 1e-9);
        assert_eq!(bank[97][60], 0.0);
        // Every filter has some weight and the band above 8 kHz none.
        for j in 0..80 {
            assert!(bank.iter().any(|row| row[j] > 0.0), "filter {j} is empty");
        }
        assert!(bank[200].iter().all(|&w| w == 0.0));
        let sparse = sparse_filters(&bank);
        assert_eq!(sparse[60].start, 90);
        assert_eq!(sparse[60].weights.len(), 7);
        let total: usize = sparse.iter().map(|f| f.weights.len()).sum();
        assert_eq!(total, 391); // as many as transformers' bank has non-zero entries
    }

    #[test]
    fn silence_gives_the_floor_everywhere() {
        let fe = WhisperFeatureExtractor::new(80);
        let features = fe.extract(&[]);
        assert_eq!(features.len(), 80 * 3000);
        // log10(1e-10) = -10, the maximum, so the floor at -18 is inactive: (-10 + 4) / 4.
        assert!(features.iter().all(|&x| x == -1.5));
    }

    #[test]
    fn sine_energy_lands_in_its_mel_bin() {
        let fe = WhisperFeatureExtractor::new(80);
        let samples: Vec<f32> = (0..16000)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 16000.0).sin() * 0.5)
            .collect();
        let features = fe.extract(&samples);
        let frames = fe.nb_max_frames();
        let t = 50; // a frame inside the sine
        let column: Vec<f32> = (0..80).map(|b| features[b * frames + t]).collect();
        let loudest = (0..80)
            .max_by(|&a, &b| column[a].total_cmp(&column[b]))
            .unwrap_or(0);
        // 440 Hz is 6.6 mel; filter j peaks at mel (j + 1) * 45.2456 / 81: j = 10 peaks at
        // 6.14 and j = 11 at 6.70, so bin 11 carries the most energy.
        assert_eq!(loudest, 11);
        // transformers gives 1.4382038 there, and -0.5617962 (the maximum minus 2, the floor)
        // past the sine, where only the padding's silence remains.
        assert!((column[11] - 1.438_203_8).abs() < 1e-4);
        let max = features.iter().copied().fold(f32::MIN, f32::max);
        assert!((max - 1.438_203_8).abs() < 1e-4);
        assert!((features[11 * frames + 2000] - (max - 2.0)).abs() < 1e-6);
    }

    #[test]
    fn output_shape_and_long_input_truncation() {
        let fe = WhisperFeatureExtractor::new(128);
        assert_eq!(fe.n_samples(), 480_000);
        assert_eq!(fe.nb_max_frames(), 3000);
        let long: Vec<f32> = (0..500_000)
            .map(|i| ((i % 97) as f32 - 48.0) / 100.0)
            .collect();
        let a = fe.extract(&long);
        let b = fe.extract(&long[..480_000]);
        assert_eq!(a.len(), 128 * 3000);
        assert_eq!(a, b);
    }

    #[test]
    fn changed_fields_are_honoured() {
        let mut fe = WhisperFeatureExtractor::new(80);
        fe.feature_size = 128;
        assert_eq!(fe.extract(&[0.1; 100]).len(), 128 * 3000);
    }

    #[test]
    fn config_file_reads_known_keys_and_names_bad_fields() {
        let dir = std::env::temp_dir().join(format!("girder-fe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("preprocessor_config.json");
        std::fs::write(
            &path,
            r#"{"feature_size": 128, "sampling_rate": 16000, "hop_length": 160,
               "chunk_length": 30, "n_fft": 400, "padding_value": 0.0, "dither": 0.0,
               "feature_extractor_type": "WhisperFeatureExtractor", "return_attention_mask": false}"#,
        )
        .unwrap();
        let fe = WhisperFeatureExtractor::from_file(&path).unwrap();
        assert_eq!(fe.feature_size, 128);
        assert_eq!(fe.nb_max_frames(), 3000);

        std::fs::write(&path, r#"{"feature_size": "eighty"}"#).unwrap();
        match WhisperFeatureExtractor::from_file(&path) {
            Err(Error::BadConfig { file, field, .. }) => {
                assert_eq!(file, path);
                assert_eq!(field, "feature_size");
            }
            other => panic!("expected BadConfig, got {other:?}"),
        }
        std::fs::write(&path, r#"{"hop_length": 0}"#).unwrap();
        match WhisperFeatureExtractor::from_file(&path) {
            Err(Error::BadConfig { field, .. }) => assert_eq!(field, "hop_length"),
            other => panic!("expected BadConfig, got {other:?}"),
        }
        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(
            WhisperFeatureExtractor::from_file(&path),
            Err(Error::BadConfig { .. })
        ));
        let missing = dir.join("absent.json");
        assert!(matches!(
            WhisperFeatureExtractor::from_file(&missing),
            Err(Error::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
