//! Audio input: a file or an upload decoded to mono f32 samples at the rate a model wants,
//! and Whisper's log-mel features of those samples ([`features`]).
//!
//! transformers reads audio with ffmpeg (`pipelines/audio_utils.py::ffmpeg_read`:
//! `ffmpeg -i pipe:0 -ac 1 -ar 16000 -f f32le`); girder does the same steps in-process:
//!
//! - decoding through symphonia (WAV/PCM, FLAC, MP3, Ogg Vorbis), the format probed from the
//!   content with the file's extension as a hint. Integer PCM becomes f32 as symphonia
//!   converts it (`i16 / 32768`). MP3 encoder delay and padding are trimmed (gapless), as
//!   ffmpeg trims them.
//! - downmixing by averaging the channels (ffmpeg's `-ac 1` for stereo).
//! - resampling with rubato's FFT resampler (`FftFixedInOut`): band-limited (no aliasing), its delay removed so
//!   that output sample `k` is the input at time `k / sample_rate`, and the tail flushed so
//!   `n` input samples give `round(n * out_rate / in_rate)`. Audio already at the wanted rate
//!   is passed through untouched.
//!
//! [`AudioStream`] does all of it piece by piece, so memory stays bounded however long the
//! audio is; [`read_file`] and [`read_bytes`] collect a whole file. Every failure of the input
//! is an [`Error::BadAudio`] naming the file, never a panic: not audio, truncated, corrupt, an
//! unsupported codec, no samples, a sample rate or channel count of 0. A packet the codec
//! rejects is skipped, as ffmpeg skips it; a read or container error ends the stream with an
//! error. Cutting audio into windows belongs to the speech-recognition pipeline.

pub mod features;
pub use features::WhisperFeatureExtractor;

use crate::error::{Error, Result};
use rubato::{FftFixedInOut, Resampler};
use std::collections::VecDeque;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{self, CodecType, Decoder, DecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// Input frames per resampler chunk, at least (rounded up to a whole, even number of the
/// rate ratio's periods).
const RESAMPLE_CHUNK: usize = 1024;

/// The largest term of the reduced rate ratio the resampler accepts: its FFTs are two
/// periods of `in_rate / gcd` and `out_rate / gcd` points, so this bounds its memory (tens
/// of MiB at most) for odd rates such as 44101 Hz.
const MAX_RATIO_TERM: usize = 1 << 17;

/// Bytes read ahead to check a WAV header (its `fmt ` chunk comes first, or after a few
/// small ones).
const WAV_HEADER_PEEK: usize = 4096;

/// Empty packets in a row that end a stream (see `AudioStream::decode_packet`).
const MAX_EMPTY_PACKETS: usize = 16;

/// Samples [`read_file`] asks the stream for at a time.
const READ_BLOCK: usize = 1 << 16;

/// A file or upload decoded to mono f32 samples at `sample_rate`, pulled in pieces so memory
/// stays bounded however long the audio is.
pub struct AudioStream {
    file: PathBuf,
    format: Box<dyn FormatReader>,
    decoder: Box<dyn Decoder>,
    track_id: u32,
    source_rate: u32,
    source_channels: usize,
    declared_frames: Option<u64>,
    /// The declared length where it is exact, to check the file against at its end.
    expected_frames: Option<u64>,
    /// Frames decoded, plus those of packets skipped as corrupt: what the file accounts for.
    frames_seen: u64,
    frames_decoded: u64,
    skipped: Option<(usize, String)>, // (packets skipped, the last reason)
    empty_packets: usize,             // empty packets in a row
    convert: Option<SampleBuffer<f32>>, // interleaved f32, reused across packets
    resampler: Option<Resampling>,
    ready: VecDeque<f32>,
    state: State,
}

/// Where an [`AudioStream`] is.
enum State {
    Decoding,
    Done,
    /// The reason, repeated by every later read: the reader is not trusted after an error.
    Failed(String),
}

impl std::fmt::Debug for AudioStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioStream")
            .field("file", &self.file)
            .field("source_rate", &self.source_rate)
            .field("source_channels", &self.source_channels)
            .field("declared_frames", &self.declared_frames)
            .field("resampling", &self.resampler.is_some())
            .finish()
    }
}

impl AudioStream {
    /// Opens a file; `sample_rate` is the rate the samples come out at (16 kHz for Whisper).
    pub fn open(path: &Path, sample_rate: u32) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // A directory opens on Unix and fails on the first read; say so up front.
        if file.metadata().map_err(|e| Error::io(path, e))?.is_dir() {
            let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "is a directory");
            return Err(Error::io(path, e));
        }
        Self::from_source(Box::new(file), path.to_path_buf(), sample_rate)
    }

    /// An in-memory file (an HTTP upload); `name` names it in errors, its extension (if any)
    /// is the format hint.
    pub fn from_bytes(bytes: Vec<u8>, name: &str, sample_rate: u32) -> Result<Self> {
        Self::from_source(
            Box::new(Cursor::new(bytes)),
            PathBuf::from(name),
            sample_rate,
        )
    }

    /// Up to `max` next samples (fewer only at the end; empty when the audio is over).
    pub fn read(&mut self, max: usize) -> Result<Vec<f32>> {
        while self.ready.len() < max {
            match &self.state {
                State::Done => break,
                State::Failed(reason) => return Err(bad_audio(&self.file, reason.clone())),
                State::Decoding => {}
            }
            let step = match self.decode_packet() {
                Ok(Some(mono)) => self.push(&mono),
                Ok(None) => self.finish(),
                Err(reason) => Err(reason),
            };
            if let Err(reason) = step {
                self.state = State::Failed(reason.clone());
                self.ready.clear();
                return Err(bad_audio(&self.file, reason));
            }
        }
        let n = max.min(self.ready.len());
        Ok(self.ready.drain(..n).collect())
    }

    /// The file's own sample rate.
    pub fn source_rate(&self) -> u32 {
        self.source_rate
    }

    /// The file's own channel count.
    pub fn source_channels(&self) -> usize {
        self.source_channels
    }

    /// Duration in seconds as the container declares it, if it does.
    pub fn declared_seconds(&self) -> Option<f64> {
        self.declared_frames
            .map(|n| n as f64 / self.source_rate as f64)
    }

    /// The rate the samples come out at.
    fn output_rate(&self) -> u32 {
        self.resampler
            .as_ref()
            .map_or(self.source_rate, |r| r.out_rate)
    }

    fn from_source(
        mut source: Box<dyn MediaSource>,
        file: PathBuf,
        sample_rate: u32,
    ) -> Result<Self> {
        if sample_rate == 0 {
            return Err(Error::InvalidOption {
                option: "sample_rate".to_string(),
                reason: "the output sample rate must be positive".to_string(),
            });
        }
        let bad = |reason: String| bad_audio(&file, reason);
        // symphonia 0.5 panics on a WAV header with a sample rate or channel count of 0 (a
        // zero time base, a division by zero); check the header before it reads it.
        let mut head = Vec::with_capacity(WAV_HEADER_PEEK);
        (&mut source)
            .take(WAV_HEADER_PEEK as u64)
            .read_to_end(&mut head)
            .and_then(|_| source.seek(SeekFrom::Start(0)))
            .map_err(|e| bad(format!("read error: {e}")))?;
        if let Some(reason) = wav_header_problem(&head) {
            return Err(bad(reason));
        }
        let stream = MediaSourceStream::new(source, Default::default());
        let mut hint = Hint::new();
        if let Some(ext) = file.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        let format_options = FormatOptions {
            enable_gapless: true,
            ..Default::default()
        };
        let probed = guarded(|| {
            symphonia::default::get_probe().format(
                &hint,
                stream,
                &format_options,
                &MetadataOptions::default(),
            )
        })
        .map_err(&bad)?
        .map_err(|e| match e {
            SymphoniaError::Unsupported(_) => bad(
                "not a recognised audio format (girder reads WAV, FLAC, MP3 and Ogg Vorbis)"
                    .to_string(),
            ),
            e => bad(describe(e)),
        })?;
        let format = probed.format;
        let track = format
            .tracks()
            .iter()
            .find(|t| t.codec_params.codec != codecs::CODEC_TYPE_NULL)
            .ok_or_else(|| bad("the file has no audio track".to_string()))?;
        let params = &track.codec_params;
        let source_rate = match params.sample_rate {
            Some(rate) if rate > 0 => rate,
            Some(_) => return Err(bad("the header declares a sample rate of 0 Hz".to_string())),
            None => return Err(bad("the header declares no sample rate".to_string())),
        };
        let source_channels = params.channels.map_or(0, |c| c.count());
        if source_channels == 0 {
            return Err(bad("the header declares 0 channels".to_string()));
        }
        if symphonia::default::get_codecs()
            .get_codec(params.codec)
            .is_none()
        {
            return Err(bad(format!(
                "unsupported codec {} (girder decodes PCM, FLAC, MP3 and Vorbis)",
                codec_name(params.codec)
            )));
        }
        let decoder =
            guarded(|| symphonia::default::get_codecs().make(params, &DecoderOptions::default()))
                .map_err(&bad)?
                .map_err(|e| bad(describe(e)))?;
        let declared_frames = params.n_frames.filter(|&n| !unknown_wav_length(params, n));
        // An MP3 without a LAME tag has a length symphonia estimates from the bitrate: not
        // exact enough to call a shorter file truncated.
        let expected_frames = declared_frames
            .filter(|_| params.codec != codecs::CODEC_TYPE_MP3 || params.delay.is_some());
        if params.codec == codecs::CODEC_TYPE_VORBIS && params.n_frames.is_none() {
            // The Ogg reader takes the length from the stream's last page, flagged as such;
            // without one the file was cut off (or its end is damaged).
            return Err(bad(
                "the Ogg stream has no final page (truncated or corrupt)".to_string(),
            ));
        }
        let track_id = track.id;
        let resampler = if source_rate == sample_rate {
            None
        } else {
            Some(Resampling::new(source_rate, sample_rate).map_err(&bad)?)
        };
        Ok(AudioStream {
            file,
            format,
            decoder,
            track_id,
            source_rate,
            source_channels,
            declared_frames,
            expected_frames,
            frames_seen: 0,
            frames_decoded: 0,
            skipped: None,
            empty_packets: 0,
            convert: None,
            resampler,
            ready: VecDeque::new(),
            state: State::Decoding,
        })
    }

    /// The next packet's samples, downmixed to mono at the source rate; `None` at the end.
    fn decode_packet(&mut self) -> std::result::Result<Option<Vec<f32>>, String> {
        loop {
            let format = &mut self.format;
            let packet = match guarded(|| format.next_packet())? {
                Ok(packet) => packet,
                // symphonia signals the end of the stream with UnexpectedEof.
                Err(SymphoniaError::IoError(e))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    return Ok(None)
                }
                Err(SymphoniaError::ResetRequired) => {
                    return Err("the stream changes its format midway (chained streams are \
                                not supported)"
                        .to_string())
                }
                Err(e) => return Err(describe(e)),
            };
            if packet.track_id() != self.track_id {
                continue;
            }
            // A WAV reader whose data ends before its header says returns empty packets
            // without advancing; a few in a row end the stream (the length check in
            // `finish` then reports the truncation) instead of spinning. A lone empty packet
            // (Ogg allows them) is skipped.
            if packet.buf().is_empty() {
                self.empty_packets += 1;
                if self.empty_packets >= MAX_EMPTY_PACKETS {
                    return Ok(None);
                }
                continue;
            }
            self.empty_packets = 0;
            let decoder = &mut self.decoder;
            let decoded = match guarded(|| decoder.decode(&packet))? {
                Ok(decoded) => decoded,
                // A corrupt packet (including one too short for what its bits announce):
                // skipped, as ffmpeg skips it; the file's end and length are checked after.
                Err(SymphoniaError::DecodeError(reason)) => {
                    self.skip(packet.dur, reason.to_string());
                    continue;
                }
                Err(SymphoniaError::IoError(e)) => {
                    self.skip(packet.dur, e.to_string());
                    continue;
                }
                Err(e) => return Err(describe(e)),
            };
            let spec = *decoded.spec();
            let frames = decoded.frames();
            if spec.rate != self.source_rate {
                return Err(format!(
                    "the sample rate changes midway, from {} Hz to {} Hz",
                    self.source_rate, spec.rate
                ));
            }
            let channels = spec.channels.count();
            if channels == 0 {
                return Err("a packet decodes to 0 channels".to_string());
            }
            self.frames_seen += frames as u64;
            self.frames_decoded += frames as u64;
            if frames == 0 {
                continue;
            }
            let convert = match &mut self.convert {
                Some(buffer) if buffer.capacity() >= frames * channels => buffer,
                slot => slot.insert(SampleBuffer::new(decoded.capacity() as u64, spec)),
            };
            convert.copy_interleaved_ref(decoded);
            let interleaved = convert.samples();
            return Ok(Some(downmix(interleaved, channels)));
        }
    }

    fn skip(&mut self, frames: u64, reason: String) {
        self.frames_seen += frames;
        let count = self.skipped.as_ref().map_or(0, |(n, _)| *n);
        self.skipped = Some((count + 1, reason));
    }

    /// Queues source-rate samples for output, through the resampler if there is one.
    fn push(&mut self, mono: &[f32]) -> std::result::Result<(), String> {
        match &mut self.resampler {
            Some(resampler) => resampler.push(mono, &mut self.ready),
            None => {
                self.ready.extend(mono);
                Ok(())
            }
        }
    }

    /// At the end of the source: checks that the file held what it declares, and flushes
    /// the resampler.
    fn finish(&mut self) -> std::result::Result<(), String> {
        self.state = State::Done;
        if self.frames_decoded == 0 {
            return Err(match &self.skipped {
                Some((n, reason)) => {
                    format!("no audio samples ({n} packets could not be decoded: {reason})")
                }
                None => "no audio samples".to_string(),
            });
        }
        if let Some(expected) = self.expected_frames {
            if self.frames_seen < expected {
                let rate = self.source_rate as f64;
                return Err(format!(
                    "the audio ends after {:.3} s of the {:.3} s its header declares \
                     (truncated or corrupt)",
                    self.frames_seen as f64 / rate,
                    expected as f64 / rate
                ));
            }
        }
        match &mut self.resampler {
            Some(resampler) => resampler.finish(&mut self.ready),
            None => Ok(()),
        }
    }
}

/// Every sample of a file, mono, at `sample_rate` (errors as [`AudioStream`]). A file with
/// no samples is an error ("no audio samples").
pub fn read_file(path: &Path, sample_rate: u32) -> Result<Vec<f32>> {
    read_all(AudioStream::open(path, sample_rate)?)
}

/// Every sample of an in-memory file (an upload), as [`read_file`]; `name` names it in
/// errors and its extension is the format hint.
pub fn read_bytes(bytes: Vec<u8>, name: &str, sample_rate: u32) -> Result<Vec<f32>> {
    read_all(AudioStream::from_bytes(bytes, name, sample_rate)?)
}

/// Mono samples at `from_rate` resampled to `to_rate` as a file's are (band-limited, delay
/// removed, `round(n * to_rate / from_rate)` samples out); `name` names them in errors.
/// Samples already at `to_rate` are returned as they are.
///
/// ```
/// let tone: Vec<f32> = (0..8000).map(|i| (i as f32 * 0.05).sin()).collect();
/// let at_16k = girder::audio::resample(&tone, 8000, 16000, "tone").unwrap();
/// assert_eq!(at_16k.len(), 16000);
/// ```
pub fn resample(samples: &[f32], from_rate: u32, to_rate: u32, name: &str) -> Result<Vec<f32>> {
    let bad = |reason: String| bad_audio(Path::new(name), reason);
    if from_rate == 0 || to_rate == 0 {
        return Err(bad(format!(
            "cannot resample {from_rate} Hz to {to_rate} Hz: a sample rate must be positive"
        )));
    }
    if from_rate == to_rate {
        return Ok(samples.to_vec());
    }
    let mut resampling = Resampling::new(from_rate, to_rate).map_err(bad)?;
    let mut ready = VecDeque::new();
    resampling.push(samples, &mut ready).map_err(bad)?;
    resampling.finish(&mut ready).map_err(bad)?;
    Ok(ready.into())
}

fn read_all(mut stream: AudioStream) -> Result<Vec<f32>> {
    let mut samples = Vec::new();
    if let Some(seconds) = stream.declared_seconds() {
        // A hint only: a header's claim must not reserve memory it cannot back with data.
        let expected = seconds * stream.output_rate() as f64;
        samples.reserve((expected as usize).min(1 << 24));
    }
    loop {
        let block = stream.read(READ_BLOCK)?;
        if block.is_empty() {
            return Ok(samples);
        }
        samples.extend_from_slice(&block);
    }
}

/// The mean of each frame's channels (ffmpeg's `-ac 1` for stereo); mono passes unchanged.
fn downmix(interleaved: &[f32], channels: usize) -> Vec<f32> {
    if channels == 1 {
        return interleaved.to_vec();
    }
    let scale = 1.0 / channels as f32;
    interleaved
        .chunks_exact(channels)
        .map(|frame| frame.iter().sum::<f32>() * scale)
        .collect()
}

/// Streaming resampling of one channel, with the resampler's delay removed and its tail
/// flushed.
struct Resampling {
    resampler: FftFixedInOut<f32>,
    out_rate: u32,
    in_rate: u32,
    chunk_in: usize,
    input: Vec<f32>,       // [< chunk_in] samples waiting for a full chunk
    output: Vec<Vec<f32>>, // [1][chunk_out]
    delay_left: usize,     // leading output samples still to drop
    frames_in: u64,
    emitted: u64,
}

impl Resampling {
    fn new(in_rate: u32, out_rate: u32) -> std::result::Result<Self, String> {
        let gcd = gcd(in_rate as usize, out_rate as usize);
        let (period_in, period_out) = (in_rate as usize / gcd, out_rate as usize / gcd);
        if period_in > MAX_RATIO_TERM || period_out > MAX_RATIO_TERM {
            return Err(format!(
                "cannot resample {in_rate} Hz to {out_rate} Hz (the rates' ratio \
                 {period_in}:{period_out} is too fine)"
            ));
        }
        // An even number of periods per chunk makes the FFT length even, so the filter's
        // centre (at half the length) falls on a whole output sample and `output_delay` is
        // exact; with an odd length it is off by a fraction of a sample.
        let periods = RESAMPLE_CHUNK.div_ceil(period_in).next_multiple_of(2);
        let resampler =
            FftFixedInOut::<f32>::new(in_rate as usize, out_rate as usize, periods * period_in, 1)
                .map_err(|e| format!("cannot resample {in_rate} Hz to {out_rate} Hz: {e}"))?;
        let chunk_in = resampler.input_frames_next();
        let chunk_out = resampler.output_frames_next();
        Ok(Resampling {
            delay_left: resampler.output_delay(),
            resampler,
            out_rate,
            in_rate,
            chunk_in,
            input: Vec::with_capacity(chunk_in),
            output: vec![vec![0.0; chunk_out]],
            frames_in: 0,
            emitted: 0,
        })
    }

    fn push(
        &mut self,
        mut samples: &[f32],
        ready: &mut VecDeque<f32>,
    ) -> std::result::Result<(), String> {
        self.frames_in += samples.len() as u64;
        while !samples.is_empty() {
            let take = (self.chunk_in - self.input.len()).min(samples.len());
            self.input.extend_from_slice(&samples[..take]);
            samples = &samples[take..];
            if self.input.len() == self.chunk_in {
                self.run(ready, u64::MAX)?;
            }
        }
        Ok(())
    }

    /// Feeds zeros until the output reaches `round(frames_in * out / in)` samples.
    fn finish(&mut self, ready: &mut VecDeque<f32>) -> std::result::Result<(), String> {
        let total = (self.frames_in as u128 * self.out_rate as u128 * 2 + self.in_rate as u128)
            / (2 * self.in_rate as u128);
        let total = total as u64;
        while self.emitted < total {
            self.input.resize(self.chunk_in, 0.0);
            self.run(ready, total)?;
        }
        Ok(())
    }

    /// Resamples the full input chunk, keeping at most `limit` output samples in all.
    fn run(&mut self, ready: &mut VecDeque<f32>, limit: u64) -> std::result::Result<(), String> {
        self.resampler
            .process_into_buffer(&[&self.input], &mut self.output, None)
            .map_err(|e| format!("resampling failed: {e}"))?;
        self.input.clear();
        let out = &self.output[0];
        let skip = self.delay_left.min(out.len());
        self.delay_left -= skip;
        let keep = ((out.len() - skip) as u64).min(limit.saturating_sub(self.emitted)) as usize;
        ready.extend(&out[skip..skip + keep]);
        self.emitted += keep as u64;
        Ok(())
    }
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// True where `n_frames` comes from a WAV data size left at the "unknown" marker that
/// streaming writers (ffmpeg to a pipe) write, 0xFFFFFFFF bytes: such a file declares no
/// length and is read to its end.
fn unknown_wav_length(params: &codecs::CodecParameters, n_frames: u64) -> bool {
    let is_pcm = symphonia::default::get_codecs()
        .get_codec(params.codec)
        .is_some_and(|d| d.short_name.starts_with("pcm_"));
    let bytes_per_frame = params.bits_per_coded_sample.unwrap_or(0) as u64 / 8
        * params.channels.map_or(0, |c| c.count()) as u64;
    is_pcm && (n_frames + 1).saturating_mul(bytes_per_frame) > u32::MAX as u64
}

/// What is wrong with a RIFF/WAVE header whose `fmt ` chunk declares 0 channels or a sample
/// rate of 0 (within the first bytes of the file); `None` for anything else, which symphonia
/// then reads.
fn wav_header_problem(head: &[u8]) -> Option<String> {
    if head.len() < 12 || &head[..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return None;
    }
    let mut pos = 12;
    while pos + 8 <= head.len() {
        let len = u32::from_le_bytes([head[pos + 4], head[pos + 5], head[pos + 6], head[pos + 7]]);
        if &head[pos..pos + 4] == b"fmt " {
            let fmt = head.get(pos + 8..pos + 16)?;
            let channels = u16::from_le_bytes([fmt[2], fmt[3]]);
            let rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
            return match (channels, rate) {
                (0, _) => Some("the header declares 0 channels".to_string()),
                (_, 0) => Some("the header declares a sample rate of 0 Hz".to_string()),
                _ => None,
            };
        }
        // Chunks are padded to an even length.
        pos = pos.checked_add(8 + len as usize + (len as usize & 1))?;
    }
    None
}

fn bad_audio(file: &Path, reason: String) -> Error {
    Error::BadAudio {
        file: file.to_path_buf(),
        reason,
    }
}

/// A symphonia error as a reason.
fn describe(e: SymphoniaError) -> String {
    match e {
        SymphoniaError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the file ends inside its header (truncated)".to_string()
        }
        SymphoniaError::IoError(e) => format!("read error: {e}"),
        SymphoniaError::DecodeError(reason) => format!("malformed: {reason}"),
        SymphoniaError::Unsupported(what) => format!("unsupported: {what}"),
        SymphoniaError::LimitError(what) => format!("exceeds a decoder limit: {what}"),
        e => e.to_string(),
    }
}

/// Runs a symphonia call, turning a panic on malformed input into an error (the reader is
/// not used again afterwards).
fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        format!(
            "malformed: the decoder gave up ({})",
            crate::error::panic_message(&*payload)
        )
    })
}

/// A readable name for a codec symphonia knows but girder does not decode.
fn codec_name(codec: CodecType) -> String {
    let name = match codec {
        codecs::CODEC_TYPE_ADPCM_G722 => "G.722 ADPCM",
        codecs::CODEC_TYPE_ADPCM_G726 | codecs::CODEC_TYPE_ADPCM_G726LE => "G.726 ADPCM",
        codecs::CODEC_TYPE_ADPCM_MS => "Microsoft ADPCM",
        codecs::CODEC_TYPE_ADPCM_IMA_WAV | codecs::CODEC_TYPE_ADPCM_IMA_QT => "IMA ADPCM",
        codecs::CODEC_TYPE_MP1 => "MPEG layer I (MP1)",
        codecs::CODEC_TYPE_MP2 => "MPEG layer II (MP2)",
        codecs::CODEC_TYPE_AAC => "AAC",
        codecs::CODEC_TYPE_OPUS => "Opus",
        codecs::CODEC_TYPE_SPEEX => "Speex",
        codecs::CODEC_TYPE_MUSEPACK => "Musepack",
        codecs::CODEC_TYPE_EAC3 => "E-AC-3",
        codecs::CODEC_TYPE_AC4 => "AC-4",
        codecs::CODEC_TYPE_DCA => "DTS",
        codecs::CODEC_TYPE_WMA => "WMA",
        codecs::CODEC_TYPE_ALAC => "ALAC",
        codecs::CODEC_TYPE_WAVPACK => "WavPack",
        codecs::CODEC_TYPE_MONKEYS_AUDIO => "Monkey's Audio",
        codecs::CODEC_TYPE_TTA => "TTA",
        _ => return format!("{codec}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    /// A RIFF/WAVE file: a `fmt ` chunk of `format_tag` (1 PCM, 3 IEEE float) and a `data`
    /// chunk whose size field says `declared_len` bytes.
    fn wav_with(
        format_tag: u16,
        channels: u16,
        rate: u32,
        bits: u16,
        data: &[u8],
        declared_len: u32,
    ) -> Vec<u8> {
        let block_align = channels * bits.div_ceil(8);
        let mut fmt = Vec::new();
        fmt.extend(format_tag.to_le_bytes());
        fmt.extend(channels.to_le_bytes());
        fmt.extend(rate.to_le_bytes());
        fmt.extend(rate.wrapping_mul(block_align as u32).to_le_bytes());
        fmt.extend(block_align.to_le_bytes());
        fmt.extend(bits.to_le_bytes());
        let mut out = b"RIFF".to_vec();
        // ffmpeg writing to a pipe marks both the RIFF and the data size unknown (2^32 - 1).
        let riff_len = match declared_len {
            u32::MAX => u32::MAX,
            n => 4 + 8 + fmt.len() as u32 + 8 + n,
        };
        out.extend(riff_len.to_le_bytes());
        out.extend(b"WAVEfmt ");
        out.extend((fmt.len() as u32).to_le_bytes());
        out.extend(&fmt);
        out.extend(b"data");
        out.extend(declared_len.to_le_bytes());
        out.extend(data);
        out
    }

    fn wav(format_tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
        wav_with(format_tag, channels, rate, bits, data, data.len() as u32)
    }

    fn pcm16(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    fn sine(freq: f64, rate: u32, n: usize, amplitude: f64) -> Vec<f64> {
        (0..n)
            .map(|i| amplitude * (2.0 * PI * freq * i as f64 / rate as f64).sin())
            .collect()
    }

    fn to_i16(x: &[f64]) -> Vec<i16> {
        x.iter().map(|v| (v * 32767.0).round() as i16).collect()
    }

    /// A fresh scratch folder for files the test writes.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("girder-audio-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn reason(result: Result<Vec<f32>>, file: &str) -> String {
        match result {
            Err(Error::BadAudio { file: f, reason }) => {
                assert_eq!(f, PathBuf::from(file), "the error names the file");
                reason
            }
            other => panic!("expected BadAudio for {file}, got {other:?}"),
        }
    }

    #[test]
    fn pcm16_mono_at_the_target_rate_is_untouched() {
        let samples = [0i16, 1, -1, 32767, -32768, 1234, -4321];
        let dir = scratch("mono16");
        let path = dir.join("a.wav");
        std::fs::write(&path, wav(1, 1, 16000, 16, &pcm16(&samples))).unwrap();
        let stream = AudioStream::open(&path, 16000).unwrap();
        assert_eq!(stream.source_rate(), 16000);
        assert_eq!(stream.source_channels(), 1);
        assert_eq!(stream.declared_seconds(), Some(7.0 / 16000.0));
        let got = read_file(&path, 16000).unwrap();
        let expected: Vec<f32> = samples.iter().map(|&s| s as f32 / 32768.0).collect();
        assert_eq!(got, expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stereo_is_averaged() {
        let frames: Vec<i16> = vec![1000, 3000, -2000, 2000, 32767, 32767, -32768, 0];
        let got = read_bytes(wav(1, 2, 16000, 16, &pcm16(&frames)), "s.wav", 16000).unwrap();
        let expected: Vec<f32> = frames
            .chunks(2)
            .map(|f| (f[0] as f32 / 32768.0 + f[1] as f32 / 32768.0) * 0.5)
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn unsigned_8_bit_and_float_32() {
        let got = read_bytes(wav(1, 1, 16000, 8, &[0, 64, 128, 255]), "u8.wav", 16000).unwrap();
        assert_eq!(got, vec![-1.0, -0.5, 0.0, 127.0 / 128.0]);

        let values = [0.0f32, 0.25, -0.75, 1.0, -1.0, 1e-6];
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let got = read_bytes(wav(3, 1, 16000, 32, &data), "f32.wav", 16000).unwrap();
        assert_eq!(got, values);
    }

    #[test]
    fn stereo_44k_resamples_to_16k_keeping_pitch_phase_and_level() {
        // 1 s of a 1 kHz sine at 0.5 in the left channel and its copy in the right.
        let n = 44100;
        let x = to_i16(&sine(1000.0, 44100, n, 0.5));
        let interleaved: Vec<i16> = x.iter().flat_map(|&s| [s, s]).collect();
        let bytes = wav(1, 2, 44100, 16, &pcm16(&interleaved));
        let mut stream = AudioStream::from_bytes(bytes.clone(), "tone.wav", 16000).unwrap();
        assert_eq!(stream.source_rate(), 44100);
        assert_eq!(stream.source_channels(), 2);
        let got = stream.read(usize::MAX).unwrap();
        assert_eq!(got.len(), 16000); // round(44100 * 16000 / 44100)
        assert!(stream.read(10).unwrap().is_empty());

        // 1000 periods: 2000 sign changes, give or take the ends.
        let crossings = got
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        assert!(
            (1998..=2001).contains(&crossings),
            "{crossings} zero crossings"
        );

        // Away from the edges (where the band-limited filter rings), output sample k is the
        // input at time k / 16000: delay compensated to well under a sample.
        let reference = sine(1000.0, 16000, 16000, 0.5);
        let error = (200..15800)
            .map(|k| (got[k] as f64 - reference[k]).abs())
            .fold(0.0, f64::max);
        assert!(error < 2e-3, "max error {error}");
        let peak = got[200..15800].iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!((peak - 0.5).abs() < 2e-3, "peak {peak}");

        // Reading in small pieces gives the same samples.
        let mut stream = AudioStream::from_bytes(bytes, "tone.wav", 16000).unwrap();
        let mut pieces = Vec::new();
        loop {
            let piece = stream.read(777).unwrap();
            if piece.is_empty() {
                break;
            }
            assert!(piece.len() == 777 || pieces.len() + piece.len() == 16000);
            pieces.extend(piece);
        }
        assert_eq!(pieces, got);
    }

    #[test]
    fn upsampling_and_odd_lengths_round_the_output_length() {
        for (rate, n) in [
            (8000u32, 8001usize),
            (22050, 1),
            (22050, 12345),
            (48000, 100),
        ] {
            let x = to_i16(&sine(440.0, rate, n, 0.3));
            let got = read_bytes(wav(1, 1, rate, 16, &pcm16(&x)), "x.wav", 16000).unwrap();
            let expected = ((n as f64 * 16000.0 / rate as f64) + 0.5).floor() as usize;
            assert_eq!(got.len(), expected, "{n} samples at {rate} Hz");
        }
        // 8 kHz to 16 kHz: the interpolated sine still matches the analytic one.
        let x = to_i16(&sine(440.0, 8000, 8000, 0.3));
        let got = read_bytes(wav(1, 1, 8000, 16, &pcm16(&x)), "x.wav", 16000).unwrap();
        let reference = sine(440.0, 16000, 16000, 0.3);
        let error = (400..15600)
            .map(|k| (got[k] as f64 - reference[k]).abs())
            .fold(0.0, f64::max);
        assert!(error < 1e-3, "max error {error}");
    }

    #[test]
    fn resampling_is_band_limited() {
        // 12 kHz lies above 16 kHz's Nyquist frequency (8 kHz) and must not fold back to
        // 4 kHz; 7 kHz lies below it and passes at full level.
        let x = to_i16(&sine(12000.0, 44100, 44100, 0.5));
        let got = read_bytes(wav(1, 1, 44100, 16, &pcm16(&x)), "hi.wav", 16000).unwrap();
        let rms = (got[1000..15000].iter().map(|v| v * v).sum::<f32>() / 14000.0).sqrt();
        assert!(rms < 1e-3, "aliased energy, rms {rms}");
        let x = to_i16(&sine(7000.0, 44100, 44100, 0.5));
        let got = read_bytes(wav(1, 1, 44100, 16, &pcm16(&x)), "mid.wav", 16000).unwrap();
        let rms = (got[1000..15000].iter().map(|v| v * v).sum::<f32>() / 14000.0).sqrt();
        assert!((rms - 0.5 / 2f32.sqrt()).abs() < 0.01, "passband rms {rms}");
    }

    #[test]
    fn bad_files_are_bad_audio_naming_the_file() {
        let tone = pcm16(&to_i16(&sine(440.0, 16000, 1600, 0.5)));

        // Truncated: the header declares more data than the file holds.
        let mut truncated = wav(1, 1, 16000, 16, &tone);
        truncated.truncate(truncated.len() - 1000);
        let r = reason(read_bytes(truncated, "cut.wav", 16000), "cut.wav");
        assert!(r.contains("truncated or corrupt"), "{r}");

        // Cut inside the header.
        let header_only = wav(1, 1, 16000, 16, &tone)[..30].to_vec();
        reason(read_bytes(header_only, "head.wav", 16000), "head.wav");

        // Corrupt: 12 bits per sample is not a PCM WAV.
        let r = reason(
            read_bytes(wav(1, 1, 16000, 12, &tone), "c.wav", 16000),
            "c.wav",
        );
        assert!(r.contains("malformed"), "{r}");

        // Empty file, empty data chunk.
        reason(read_bytes(Vec::new(), "empty.wav", 16000), "empty.wav");
        let r = reason(
            read_bytes(wav(1, 1, 16000, 16, &[]), "e.wav", 16000),
            "e.wav",
        );
        assert_eq!(r, "no audio samples");

        // Not audio.
        let r = reason(
            read_bytes(b"hello, world\n".repeat(100), "a.txt", 16000),
            "a.txt",
        );
        assert!(r.contains("not a recognised audio format"), "{r}");
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend((0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
        reason(read_bytes(png, "photo.png", 16000), "photo.png");

        // A sample rate of 0, 0 channels.
        let r = reason(read_bytes(wav(1, 1, 0, 16, &tone), "z.wav", 16000), "z.wav");
        assert_eq!(r, "the header declares a sample rate of 0 Hz");
        reason(
            read_bytes(wav(1, 0, 16000, 16, &tone), "nc.wav", 16000),
            "nc.wav",
        );

        // An unsupported codec says which: IMA ADPCM, whose fmt chunk carries two more
        // fields (their size, then samples per block).
        let mut adpcm = wav(0x11, 1, 16000, 4, &[0; 256]);
        adpcm[16] = 20; // fmt chunk length
        adpcm[32] = 0; // block_align = 256
        adpcm[33] = 1;
        adpcm.splice(36..36, [2, 0, 0xf9, 0x01]); // 2 extra bytes: 505 samples per block
        let riff_len = adpcm.len() as u32 - 8;
        adpcm[4..8].copy_from_slice(&riff_len.to_le_bytes());
        let r = reason(read_bytes(adpcm, "ima.wav", 16000), "ima.wav");
        assert!(r.contains("unsupported codec IMA ADPCM"), "{r}");

        // Errors from a file on disk name its path; a missing file is an I/O error.
        let dir = scratch("bad");
        let path = dir.join("cut.wav");
        let mut truncated = wav(1, 1, 16000, 16, &tone);
        truncated.truncate(truncated.len() - 1000);
        std::fs::write(&path, truncated).unwrap();
        reason(read_file(&path, 16000), path.to_str().unwrap());
        assert!(matches!(
            read_file(&dir.join("absent.wav"), 16000),
            Err(Error::Io { .. })
        ));
        assert!(matches!(read_file(&dir, 16000), Err(Error::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stream_stays_failed_after_an_error() {
        let tone = pcm16(&to_i16(&sine(440.0, 16000, 16000, 0.5)));
        let mut truncated = wav(1, 1, 16000, 16, &tone);
        truncated.truncate(truncated.len() - 1000);
        let mut stream = AudioStream::from_bytes(truncated, "cut.wav", 16000).unwrap();
        assert!(stream.read(100).is_ok()); // the first samples arrive before the end is seen
        assert!(stream.read(usize::MAX).is_err());
        assert!(stream.read(1).is_err());
    }

    #[test]
    fn ffmpeg_piped_wav_with_unknown_length_reads_to_its_end() {
        let samples = to_i16(&sine(440.0, 16000, 3000, 0.5));
        let bytes = wav_with(1, 1, 16000, 16, &pcm16(&samples), u32::MAX);
        let mut stream = AudioStream::from_bytes(bytes, "pipe.wav", 16000).unwrap();
        assert_eq!(stream.declared_seconds(), None);
        assert_eq!(stream.read(usize::MAX).unwrap().len(), 3000);
    }

    #[test]
    fn a_stream_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<AudioStream>();
    }

    #[test]
    fn zero_output_rate_is_an_invalid_option() {
        let bytes = wav(1, 1, 16000, 16, &pcm16(&[1, 2, 3]));
        assert!(matches!(
            read_bytes(bytes, "x.wav", 0),
            Err(Error::InvalidOption { .. })
        ));
    }
}
