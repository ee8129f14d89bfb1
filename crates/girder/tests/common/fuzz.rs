//! A small mutation fuzzer on stable Rust, shared by `crates/girder/tests/fuzz.rs` and
//! `crates/girder-server/tests/fuzz_bodies.rs`: a seeded generator, byte-level and JSON
//! mutations, a GGUF writer that records where each header field lies (so mutations can aim
//! at counts, lengths, dims, types and offsets), and a runner that executes every input in a
//! worker thread under `catch_unwind` and a time limit.
//!
//! A panic or an input that runs past the limit is a crash: the input is saved under
//! `target/fuzz-crashes/<target>/` and the test fails, printing the path. Settings come from
//! the environment:
//! - `GIRDER_FUZZ_ITERS`: executions per target (default [`DEFAULT_ITERS`]);
//! - `GIRDER_FUZZ_SEED`: the generator's seed (default 1, so the suite is reproducible);
//! - `GIRDER_FUZZ_TIMEOUT_MS`: the time limit of one input (default 5000);
//! - `GIRDER_FUZZ_REPLAY`: a saved crash file; only the target named by its folder runs, on
//!   that one input.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Executions per target when `GIRDER_FUZZ_ITERS` is unset: the short run of the test suite.
pub const DEFAULT_ITERS: usize = 300;

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

/// `GIRDER_FUZZ_ITERS`, or `default`.
pub fn iterations(default: usize) -> usize {
    env_number("GIRDER_FUZZ_ITERS", default as u64) as usize
}

/// `GIRDER_FUZZ_SEED`, or 1.
pub fn seed() -> u64 {
    env_number("GIRDER_FUZZ_SEED", 1)
}

/// `GIRDER_FUZZ_TIMEOUT_MS`, or 5 s.
pub fn time_limit() -> Duration {
    Duration::from_millis(env_number("GIRDER_FUZZ_TIMEOUT_MS", 5000))
}

/// The cargo target folder (`CARGO_TARGET_TMPDIR` is `<target>/tmp`).
pub fn target_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().map(Path::to_path_buf).unwrap_or(tmp)
}

/// A scratch folder for target `name`'s inputs (the loaders read files), emptied first; the
/// file in it is the input in flight if the process dies (an abort is not a panic).
pub fn work_dir(name: &str) -> PathBuf {
    let dir = target_dir()
        .join("fuzz-work")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// xorshift64*: small, fast, and the same sequence on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so small seeds start far apart and 0 is allowed.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Integers that break size arithmetic: zero, one, powers of two and their neighbours, the
/// limits of each width, and negative values seen as unsigned.
pub const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    15,
    16,
    31,
    32,
    33,
    63,
    64,
    127,
    128,
    255,
    256,
    1023,
    1024,
    4096,
    32767,
    32768,
    65535,
    65536,
    1 << 20,
    (1 << 31) - 1,
    1 << 31,
    u32::MAX as u64,
    1 << 32,
    (1 << 53) + 1,
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];

/// One to four byte-level mutations: bit flips, random bytes, interesting integers written
/// over 2, 4 or 8 bytes, truncation, deletion, duplication and insertion of chunks, and
/// dictionary tokens.
pub fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, dictionary: &[&[u8]]) {
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(9) {
            0 if len > 0 => {
                let at = rng.below(len);
                data[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                data[at] = rng.next_u64() as u8;
            }
            2 => {
                let width = *rng.pick(&[2usize, 4, 8]);
                if len >= width {
                    let at = rng.below(len - width + 1);
                    let mut value = *rng.pick(INTERESTING);
                    if rng.one_in(4) {
                        value = value.wrapping_add(rng.below(5) as u64).wrapping_sub(2);
                    }
                    data[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
                }
            }
            3 if len > 0 => {
                let keep = if rng.one_in(2) {
                    rng.below(len)
                } else {
                    len.saturating_sub(1 + rng.below(64))
                };
                data.truncate(keep);
            }
            4 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(256)).min(len);
                data.drain(start..end);
            }
            5 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(512)).min(len);
                let chunk = data[start..end].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, chunk);
            }
            6 => {
                let n = 1 + rng.below(32);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                let at = rng.below(len + 1);
                data.splice(at..at, bytes);
            }
            7 if !dictionary.is_empty() => {
                let token = *rng.pick(dictionary);
                let at = rng.below(len + 1);
                if rng.one_in(2) && at + token.len() <= len {
                    data[at..at + token.len()].copy_from_slice(token);
                } else {
                    data.splice(at..at, token.iter().copied());
                }
            }
            _ => {
                // Repeat a small chunk many times: long runs stress loops and lengths.
                if len > 0 {
                    let start = rng.below(len);
                    let end = (start + 1 + rng.below(16)).min(len);
                    let chunk = data[start..end].to_vec();
                    let times = 1 + rng.below(200);
                    let at = rng.below(len + 1);
                    data.splice(at..at, chunk.repeat(times));
                }
            }
        }
    }
}

/// Every node of `v` as a JSON pointer (`""` is the root).
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            // Large objects and arrays (a vocabulary, its merges) would drown the rest: a
            // few of their entries.
            let step = (map.len() / 16).max(1);
            for (k, child) in map.iter().step_by(step) {
                let escaped = k.replace('~', "~0").replace('/', "~1");
                pointers(child, format!("{at}/{escaped}"), out);
            }
        }
        Value::Array(items) => {
            let n = items.len();
            let step = (n / 16).max(1);
            for i in (0..n).step_by(step) {
                pointers(&items[i], format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// A value of a random kind: the types and magnitudes a loader must refuse gracefully.
pub fn random_value(rng: &mut Rng, like: &Value) -> Value {
    match rng.below(16) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => Value::from(*rng.pick(INTERESTING)),
        3 => Value::from((*rng.pick(INTERESTING) as i64).wrapping_neg()),
        4 => Value::from(*rng.pick(&[0.5, -0.5, 1e-300, 1e300, -1e300, 3.5, f64::MIN_POSITIVE])),
        5 => Value::from(""),
        6 => Value::from("x".repeat(1 + rng.below(20000))),
        7 => Value::Array(vec![]),
        8 => Value::Object(Default::default()),
        9 => Value::Array(vec![like.clone(); 1 + rng.below(3)]),
        10 => Value::from(like.to_string()),
        11 => {
            // Deep nesting: parsers must stop at a depth limit, never overflow the stack.
            let mut v = like.clone();
            for _ in 0..1 + rng.below(300) {
                v = if rng.one_in(2) {
                    Value::Array(vec![v])
                } else {
                    serde_json::json!({ "a": v })
                };
            }
            v
        }
        12 => match like {
            Value::Number(n) => {
                let f = n.as_f64().unwrap_or(0.0);
                let factor = *rng.pick(&[-1.0, 0.0, 2.0, 1000.0, 1e9, 0.001]);
                serde_json::Number::from_f64(f * factor)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
            Value::String(s) => Value::from(format!("{s}{}", rng.pick(UNICODE_BITS))),
            _ => Value::from(i64::MIN),
        },
        13 => match like {
            Value::Number(n) => match n.as_i64() {
                Some(i) => Value::from(i.wrapping_add(rng.below(5) as i64 - 2)),
                None => Value::from(n.as_f64().unwrap_or(0.0).floor()),
            },
            Value::String(s) => Value::from(s.repeat(2 + rng.below(100))),
            other => other.clone(),
        },
        14 => Value::from(*rng.pick(UNICODE_BITS)),
        _ => Value::from((*rng.pick(INTERESTING) as f64) + 0.5),
    }
}

/// Strings that trip text handling: empty, NUL, lone combining marks, right-to-left marks,
/// wide characters, and text that looks like markup.
pub const UNICODE_BITS: &[&str] = &[
    "\u{0}",
    "\u{301}",
    "\u{202e}",
    "\u{fffd}",
    "😀",
    "𝕏",
    "\r\n",
    "\t",
    "[MASK]",
    "<mask>",
    "<|im_start|>",
    "{{",
    "%}",
    "\\u0000",
    "ﬀ",
    "İ",
];

/// One to three structural JSON edits at random nodes (replace with another type or a huge
/// number, remove a key, duplicate a subtree, shorten or lengthen an array); with `focus`,
/// the edited nodes are drawn from the pointers that contain one of its words half the time.
pub fn mutate_json(rng: &mut Rng, v: &mut Value, focus: &[&str]) {
    for _ in 0..1 + rng.below(3) {
        let mut all = Vec::new();
        pointers(v, String::new(), &mut all);
        let focused: Vec<&String> = all
            .iter()
            .filter(|p| focus.iter().any(|f| p.contains(f)))
            .collect();
        let pointer = if !focused.is_empty() && rng.one_in(2) {
            rng.pick(&focused).to_string()
        } else {
            rng.pick(&all).clone()
        };
        let op = rng.below(6);
        let (parent, key) = match pointer.rfind('/') {
            Some(at) => (pointer[..at].to_string(), pointer[at + 1..].to_string()),
            None => (String::new(), String::new()),
        };
        match op {
            // Remove this node from its parent.
            0 if !pointer.is_empty() => match v.pointer_mut(&parent) {
                Some(Value::Object(map)) => {
                    map.remove(&key.replace("~1", "/").replace("~0", "~"));
                }
                Some(Value::Array(items)) => {
                    if let Ok(i) = key.parse::<usize>() {
                        if i < items.len() {
                            items.remove(i);
                        }
                    }
                }
                _ => {}
            },
            // Copy another node here.
            1 => {
                let other = rng.pick(&all).clone();
                if let Some(copy) = v.pointer(&other).cloned() {
                    if let Some(node) = v.pointer_mut(&pointer) {
                        *node = copy;
                    }
                }
            }
            // Arrays: duplicate, shuffle or cut items.
            2 => {
                if let Some(Value::Array(items)) = v.pointer_mut(&pointer) {
                    if !items.is_empty() {
                        match rng.below(3) {
                            0 => {
                                let i = rng.below(items.len());
                                let item = items[i].clone();
                                for _ in 0..1 + rng.below(8) {
                                    items.insert(i, item.clone());
                                }
                            }
                            1 => {
                                let i = rng.below(items.len());
                                let j = rng.below(items.len());
                                items.swap(i, j);
                            }
                            _ => items.truncate(rng.below(items.len())),
                        }
                    } else if let Some(node) = v.pointer_mut(&pointer) {
                        *node = random_value(rng, &Value::Null);
                    }
                } else if let Some(Value::Object(map)) = v.pointer_mut(&pointer) {
                    // Objects: add a key of a random value.
                    let like = map.values().next().cloned().unwrap_or(Value::Null);
                    let key = format!("fuzz_{}", rng.below(4));
                    let value = random_value(rng, &like);
                    map.insert(key, value);
                }
            }
            _ => {
                if let Some(node) = v.pointer_mut(&pointer) {
                    let like = node.clone();
                    *node = random_value(rng, &like);
                }
            }
        }
    }
}

/// Serialises a mutated JSON document, sometimes with byte-level damage on top.
pub fn mutate_json_text(rng: &mut Rng, seed: &Value, focus: &[&str]) -> Vec<u8> {
    let mut v = seed.clone();
    mutate_json(rng, &mut v, focus);
    let mut text = if rng.one_in(2) {
        serde_json::to_vec_pretty(&v).unwrap()
    } else {
        serde_json::to_vec(&v).unwrap()
    };
    if rng.one_in(5) {
        mutate_bytes(
            rng,
            &mut text,
            &[b"{", b"}", b"[", b"]", b"\"", b",", b":", b"null"],
        );
    }
    text
}

/// A metadata value of a GGUF file.
#[derive(Debug, Clone)]
pub enum GgufValue {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
}

/// A tensor of a GGUF file: dims in GGUF order (innermost first), the GGML type id and the
/// data (whole blocks).
#[derive(Debug, Clone)]
pub struct GgufTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub data: Vec<u8>,
}

/// What a header field holds, for aimed mutations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    TensorCount,
    MetadataCount,
    StringLength,
    ValueType,
    ArrayLength,
    Dims,
    Dim,
    TensorType,
    TensorOffset,
    Alignment,
    /// A scalar metadata value (a U32, I32 or F32: a head count, an epsilon, a token id).
    Value,
}

/// Every field kind, to draw a kind before a field (the vocabulary's string lengths would
/// otherwise take most draws).
pub const FIELD_KINDS: &[FieldKind] = &[
    FieldKind::TensorCount,
    FieldKind::MetadataCount,
    FieldKind::StringLength,
    FieldKind::ValueType,
    FieldKind::ArrayLength,
    FieldKind::Dims,
    FieldKind::Dim,
    FieldKind::TensorType,
    FieldKind::TensorOffset,
    FieldKind::Alignment,
    FieldKind::Value,
];

/// A header field: where it lies, how wide it is, what it holds.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub at: usize,
    pub width: usize,
    pub kind: FieldKind,
}

/// A GGUF file's bytes and the positions of its header fields.
#[derive(Debug, Clone)]
pub struct Gguf {
    pub bytes: Vec<u8>,
    pub fields: Vec<Field>,
    /// Where each tensor's type field lies, by tensor name.
    pub type_fields: BTreeMap<String, usize>,
    /// The bytes of each metadata string (keys excluded): `(start, len)`.
    pub strings: Vec<(usize, usize)>,
    /// The tensor data: from the first tensor's start to the end of the file.
    pub data_start: usize,
}

/// Writes a GGUF v3 file as llama.cpp does: header, metadata, tensor table, padding to the
/// alignment (32), and the tensors packed in table order, each padded to the alignment.
pub fn write_gguf(metadata: &[(&str, GgufValue)], tensors: &[GgufTensor]) -> Gguf {
    const ALIGN: usize = 32;
    let mut b: Vec<u8> = Vec::new();
    let mut fields = Vec::new();
    let mut type_fields = BTreeMap::new();
    let mut strings = Vec::new();
    let field = |b: &Vec<u8>, width: usize, kind: FieldKind| Field {
        at: b.len(),
        width,
        kind,
    };
    fn string(b: &mut Vec<u8>, fields: &mut Vec<Field>, s: &str) {
        fields.push(Field {
            at: b.len(),
            width: 8,
            kind: FieldKind::StringLength,
        });
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    }
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    fields.push(field(&b, 8, FieldKind::TensorCount));
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    fields.push(field(&b, 8, FieldKind::MetadataCount));
    b.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        string(&mut b, &mut fields, key);
        fields.push(field(&b, 4, FieldKind::ValueType));
        let (type_id, array_of) = match value {
            GgufValue::U32(_) => (4u32, None),
            GgufValue::I32(_) => (5, None),
            GgufValue::F32(_) => (6, None),
            GgufValue::Bool(_) => (7, None),
            GgufValue::Str(_) => (8, None),
            GgufValue::Strs(_) => (9, Some(8u32)),
            GgufValue::I32s(_) => (9, Some(5)),
            GgufValue::F32s(_) => (9, Some(6)),
        };
        b.extend_from_slice(&type_id.to_le_bytes());
        if let Some(item_type) = array_of {
            fields.push(field(&b, 4, FieldKind::ValueType));
            b.extend_from_slice(&item_type.to_le_bytes());
            fields.push(field(&b, 8, FieldKind::ArrayLength));
        }
        match value {
            GgufValue::U32(x) => {
                let kind = if *key == "general.alignment" {
                    FieldKind::Alignment
                } else {
                    FieldKind::Value
                };
                fields.push(field(&b, 4, kind));
                b.extend_from_slice(&x.to_le_bytes())
            }
            GgufValue::I32(x) => {
                fields.push(field(&b, 4, FieldKind::Value));
                b.extend_from_slice(&x.to_le_bytes())
            }
            GgufValue::F32(x) => {
                fields.push(field(&b, 4, FieldKind::Value));
                b.extend_from_slice(&x.to_le_bytes())
            }
            GgufValue::Bool(x) => b.push(u8::from(*x)),
            GgufValue::Str(s) => {
                string(&mut b, &mut fields, s);
                strings.push((b.len() - s.len(), s.len()));
            }
            GgufValue::Strs(items) => {
                b.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for s in items {
                    string(&mut b, &mut fields, s);
                    strings.push((b.len() - s.len(), s.len()));
                }
            }
            GgufValue::I32s(items) => {
                b.extend_from_slice(&(items.len() as u64).to_le_bytes());
                items
                    .iter()
                    .for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
            }
            GgufValue::F32s(items) => {
                b.extend_from_slice(&(items.len() as u64).to_le_bytes());
                items
                    .iter()
                    .for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
            }
        }
    }
    let padded = |n: usize| n.div_ceil(ALIGN) * ALIGN;
    let mut offset = 0usize;
    for t in tensors {
        string(&mut b, &mut fields, &t.name);
        fields.push(field(&b, 4, FieldKind::Dims));
        b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            fields.push(field(&b, 8, FieldKind::Dim));
            b.extend_from_slice(&d.to_le_bytes());
        }
        type_fields.insert(t.name.clone(), b.len());
        fields.push(field(&b, 4, FieldKind::TensorType));
        b.extend_from_slice(&t.ggml_type.to_le_bytes());
        fields.push(field(&b, 8, FieldKind::TensorOffset));
        b.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += padded(t.data.len());
    }
    b.resize(padded(b.len()), 0);
    let data_start = b.len();
    for t in tensors {
        b.extend_from_slice(&t.data);
        b.resize(padded(b.len()), 0);
    }
    Gguf {
        bytes: b,
        fields,
        type_fields,
        strings,
        data_start,
    }
}

/// Values an aimed mutation writes into a field of `kind`.
fn field_values(kind: FieldKind, file_len: u64) -> Vec<u64> {
    let mut values = INTERESTING.to_vec();
    values.extend([
        file_len,
        file_len / 2,
        file_len.saturating_sub(1),
        file_len + 1,
    ]);
    match kind {
        FieldKind::ValueType => (0..14).collect(),
        FieldKind::Dims => (0..8).chain([u32::MAX as u64]).collect(),
        // GGML type ids: the loadable ones, the known but unloadable ones, unknown ones.
        FieldKind::TensorType => (0..42).chain([u32::MAX as u64]).collect(),
        FieldKind::Alignment => vec![0, 1, 2, 3, 16, 24, 31, 33, 64, 4096, u32::MAX as u64],
        FieldKind::Value => {
            // Integers, and f32 bit patterns: 0, -0, 1, NaN, infinities, the smallest
            // subnormal, the largest finite value.
            values.extend([
                0x8000_0000,
                0x3f80_0000,
                0x7fc0_0000,
                0x7f80_0000,
                0xff80_0000,
                1,
                0x7f7f_ffff,
            ]);
            values
        }
        _ => values,
    }
}

/// One to three edits of a GGUF file: aimed at a header field (a kind drawn first, then a
/// field of it), at a scalar metadata value, inside a metadata string (its length kept), or
/// inside the tensor data (the layout kept, the values not: NaN scales); sometimes
/// byte-level mutations on top, last, as they move what the positions point at.
pub fn mutate_gguf(rng: &mut Rng, seed: &Gguf) -> Vec<u8> {
    let mut bytes = seed.bytes.clone();
    for _ in 0..1 + rng.below(3) {
        match rng.below(9) {
            0..=4 => {
                let kind = *rng.pick(FIELD_KINDS);
                let of_kind: Vec<&Field> = seed.fields.iter().filter(|f| f.kind == kind).collect();
                if of_kind.is_empty() {
                    continue;
                }
                let f = **rng.pick(&of_kind);
                let values = field_values(f.kind, bytes.len() as u64);
                let mut value = *rng.pick(&values);
                if rng.one_in(3) {
                    // A nearby value: the original plus or minus a little.
                    let mut old = [0u8; 8];
                    old[..f.width].copy_from_slice(&seed.bytes[f.at..f.at + f.width]);
                    let delta = rng.below(65) as u64;
                    value = if rng.one_in(2) {
                        u64::from_le_bytes(old).wrapping_add(delta)
                    } else {
                        u64::from_le_bytes(old).wrapping_sub(delta)
                    };
                }
                bytes[f.at..f.at + f.width].copy_from_slice(&value.to_le_bytes()[..f.width]);
            }
            5 | 6 => {
                let (start, len) = *rng.pick(&seed.strings);
                if len > 0 {
                    let at = start + rng.below(len);
                    let bit: &[u8] = rng.pick(UNICODE_BITS).as_bytes();
                    let n = bit.len().min(start + len - at);
                    if rng.one_in(2) {
                        bytes[at..at + n].copy_from_slice(&bit[..n]);
                    } else {
                        bytes[at] = rng.next_u64() as u8;
                    }
                }
            }
            _ => {
                let span = bytes.len() - seed.data_start;
                let at = seed.data_start + rng.below(span.max(1));
                // f16 +inf and NaN (block scales), f32 NaN and its largest value.
                const PATTERNS: &[&[u8]] = &[
                    &[0x00, 0x7c],
                    &[0x00, 0x7e],
                    &[0x00, 0x00, 0xc0, 0x7f],
                    &[0xff, 0xff, 0x7f, 0x7f],
                    &[0xff],
                ];
                let pattern = *rng.pick(PATTERNS);
                let n = pattern.len().min(bytes.len() - at);
                bytes[at..at + n].copy_from_slice(&pattern[..n]);
            }
        }
    }
    if rng.one_in(5) {
        mutate_bytes(rng, &mut bytes, &[b"GGUF", b"general.alignment"]);
    }
    bytes
}

/// Splits a safetensors file into its JSON header and its data.
pub fn split_safetensors(bytes: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

/// A safetensors file from its JSON header and its data.
pub fn join_safetensors(header: &Value, data: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(header).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(data);
    out
}

/// A safetensors file with a mutated header (offsets, dtypes, shapes, names) and sometimes a
/// wrong length prefix or damaged data.
pub fn mutate_safetensors(rng: &mut Rng, header: &Value, data: &[u8]) -> Vec<u8> {
    let mut header = header.clone();
    let mut data = data.to_vec();
    match rng.below(4) {
        0 => mutate_json(rng, &mut header, &["data_offsets", "shape", "dtype"]),
        1 => {
            // Another dtype of the same or another width: the offsets may still add up.
            let names: Vec<String> = header
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "__metadata__")
                .cloned()
                .collect();
            let name = rng.pick(&names).clone();
            let dtype = *rng.pick(&[
                "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64",
                "BOOL", "F8_E4M3", "F8_E5M2", "F4", "E8M0", "XYZ",
            ]);
            header[&name]["dtype"] = dtype.into();
        }
        2 => {
            // A shape with the same number of elements, or its dims swapped.
            let names: Vec<String> = header
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "__metadata__")
                .cloned()
                .collect();
            let name = rng.pick(&names).clone();
            if let Some(shape) = header[&name]["shape"].as_array().cloned() {
                let dims: Vec<u64> = shape.iter().filter_map(Value::as_u64).collect();
                let count: u64 = dims.iter().product();
                let new: Vec<u64> = match rng.below(3) {
                    0 => vec![count],
                    1 => dims.iter().rev().copied().collect(),
                    _ => {
                        let mut d = dims.clone();
                        d.insert(rng.below(d.len() + 1), 1);
                        d
                    }
                };
                header[&name]["shape"] = new.into();
            }
        }
        _ => mutate_bytes(rng, &mut data, &[]),
    }
    let json = serde_json::to_vec(&header).unwrap();
    let mut out = Vec::with_capacity(8 + json.len() + data.len());
    let mut len = json.len() as u64;
    if rng.one_in(8) {
        len = *rng.pick(INTERESTING);
    }
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&data);
    if rng.one_in(8) {
        mutate_bytes(rng, &mut out, &[b"{", b"\"", b"data_offsets"]);
    }
    out
}

/// What one execution of a target did: `Ok`, or the error it returned (a refusal is
/// expected: only panics and timeouts are crashes).
pub type Outcome = Result<(), String>;

const KNOWN: &str = "known: ";

/// The outcome of an input an `exec` does not run because it would abort the process (an
/// allocation that fails cannot be caught): a bug reported, shown by the ignored regression
/// test `test`. It is counted with the known panics.
pub fn known(test: &str) -> Outcome {
    Err(format!("{KNOWN}{test}"))
}

/// Counts of one target's run.
#[derive(Debug, Default)]
pub struct Report {
    pub target: String,
    pub executions: usize,
    pub accepted: usize,
    /// Distinct error messages (digits folded) → how often.
    pub errors: BTreeMap<String, usize>,
    pub crashes: Vec<PathBuf>,
    /// Panics at a [`Known`] place, and inputs an `exec` declined as [`known`] (a bug
    /// reported, its regression test ignored), by test.
    pub known: BTreeMap<String, usize>,
    pub slowest: Duration,
    pub elapsed: Duration,
}

/// A panic found before and reported: where it happens (a `file:line` suffix of the panic's
/// location) and the ignored regression test that shows it. Such a panic is counted, not
/// failed on, so that the suite stays green until the fix; a new tokenizers or candle
/// version moves the line and makes it a crash again, to be looked at anew.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    pub location: &'static str,
    pub test: &'static str,
}

impl Report {
    /// One line for people, one for `scripts/fuzz` to collect (`FUZZ-TABLE ...`).
    pub fn print(&self) {
        let known: usize = self.known.values().sum();
        eprintln!(
            "fuzz {}: {} executions ({} accepted), {} distinct errors, {} crashes, {known} known panics, slowest input {} ms, {:.1} s",
            self.target,
            self.executions,
            self.accepted,
            self.errors.len(),
            self.crashes.len(),
            self.slowest.as_millis(),
            self.elapsed.as_secs_f64()
        );
        for (test, n) in &self.known {
            eprintln!("    {n} × the panic of ignored regression test `{test}`");
        }
        if std::env::var_os("GIRDER_FUZZ_VERBOSE").is_some() {
            for (message, n) in &self.errors {
                eprintln!("    {n:6} × {message}");
            }
        }
        eprintln!(
            "FUZZ-TABLE target={} executions={} accepted={} distinct_errors={} crashes={} known={known} slowest_ms={} seconds={:.1}",
            self.target,
            self.executions,
            self.accepted,
            self.errors.len(),
            self.crashes.len(),
            self.slowest.as_millis(),
            self.elapsed.as_secs_f64()
        );
        for path in &self.crashes {
            eprintln!("FUZZ-CRASH target={} input={}", self.target, path.display());
        }
    }

    /// Fails the test when a crash was found, naming the saved inputs.
    pub fn assert_no_crash(&self) {
        assert!(
            self.crashes.is_empty(),
            "fuzz target {} crashed on {} input(s), saved as:\n{}",
            self.target,
            self.crashes.len(),
            self.crashes
                .iter()
                .map(|p| format!("  {}", p.display()))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The first line of an error, its digits folded, so that one kind of refusal counts once.
pub fn error_kind(message: &str) -> String {
    let line = message.lines().next().unwrap_or("");
    // Paths name the scratch folder (a process id): one word for all of them.
    let line: String = line
        .split(' ')
        .map(|w| if w.contains('/') { "<path>" } else { w })
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = String::new();
    let mut last_digit = false;
    for c in line.chars() {
        if out.chars().count() >= 100 {
            break;
        }
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('#');
            }
            last_digit = true;
        } else {
            out.push(c);
            last_digit = false;
        }
    }
    out
}

/// Where and why a worker's last panic happened, recorded by [`quiet_worker_panics`].
#[derive(Debug, Clone, Default)]
struct Panic {
    location: String,
    message: String,
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<Panic> = std::cell::RefCell::new(Panic::default());
}

/// Chains a panic hook that records the location of a panic on a fuzz worker thread and
/// prints nothing for it (the runner prints one line per crash, where the default hook
/// prints a backtrace); other threads' panics go to the hook that was there.
fn quiet_worker_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("fuzz-worker") {
                let location = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                LAST_PANIC.with(|p| {
                    *p.borrow_mut() = Panic {
                        location,
                        message: panic_message(info.payload()),
                    }
                });
            } else {
                previous(info);
            }
        }));
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

fn save_crash(target: &str, iteration: usize, input: &[u8], why: &str) -> PathBuf {
    let dir = target_dir().join("fuzz-crashes").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let path = dir.join(format!("crash-{iteration}-{hash:016x}"));
    std::fs::write(&path, input).unwrap();
    std::fs::write(path.with_extension("txt"), why).unwrap();
    path
}

type Exec = Arc<dyn Fn(&[u8]) -> Outcome + Send + Sync>;

struct Worker {
    inputs: mpsc::Sender<Vec<u8>>,
    outcomes: mpsc::Receiver<Result<Outcome, Panic>>,
    thread: std::thread::JoinHandle<()>,
}

fn spawn_worker(exec: Exec) -> Worker {
    let (input_tx, input_rx) = mpsc::channel::<Vec<u8>>();
    let (outcome_tx, outcome_rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("fuzz-worker".into())
        .stack_size(8 << 20)
        .spawn(move || {
            for input in input_rx {
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| exec(&input)))
                    .map_err(|_| LAST_PANIC.with(|p| p.take()));
                if outcome_tx.send(outcome).is_err() {
                    break;
                }
            }
        })
        .unwrap();
    Worker {
        inputs: input_tx,
        outcomes: outcome_rx,
        thread,
    }
}

/// Runs target `name`: `make(rng, i)` builds input `i`, `exec` runs it in a worker thread.
/// A panic or a run past [`time_limit`] saves the input as a crash; after a timeout the
/// target stops (its worker is still busy). With `GIRDER_FUZZ_REPLAY` naming a file under
/// `fuzz-crashes/<name>/`, only that input runs.
pub fn run(
    name: &str,
    iterations: usize,
    known: &[Known],
    mut make: impl FnMut(&mut Rng, usize) -> Vec<u8>,
    exec: impl Fn(&[u8]) -> Outcome + Send + Sync + 'static,
) -> Report {
    quiet_worker_panics();
    let exec: Exec = Arc::new(exec);
    let limit = time_limit();
    let name_hash = name
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let mut rng = Rng::new(seed() ^ name_hash);
    let replay: Option<Vec<u8>> = std::env::var_os("GIRDER_FUZZ_REPLAY").and_then(|p| {
        let p = PathBuf::from(p);
        let parent = p.parent()?.file_name()?.to_str()?.to_string();
        (parent == name).then(|| {
            std::fs::read(&p).unwrap_or_else(|e| {
                panic!("GIRDER_FUZZ_REPLAY={}: {e} (give an absolute path: tests run in their package's folder)", p.display())
            })
        })
    });
    let replaying = std::env::var_os("GIRDER_FUZZ_REPLAY").is_some();
    let iterations = if replaying {
        usize::from(replay.is_some())
    } else {
        iterations
    };
    let mut report = Report {
        target: name.to_string(),
        ..Report::default()
    };
    let start = Instant::now();
    let worker = spawn_worker(exec);
    for i in 0..iterations {
        let input = match &replay {
            Some(input) => input.clone(),
            None => make(&mut rng, i),
        };
        let began = Instant::now();
        worker.inputs.send(input.clone()).unwrap();
        report.executions += 1;
        match worker.outcomes.recv_timeout(limit) {
            Ok(Ok(Ok(()))) => report.accepted += 1,
            Ok(Ok(Err(message))) => match message.strip_prefix(KNOWN) {
                Some(test) => *report.known.entry(test.to_string()).or_default() += 1,
                None => *report.errors.entry(error_kind(&message)).or_default() += 1,
            },
            Ok(Err(panic)) => match known.iter().find(|k| panic.location.ends_with(k.location)) {
                Some(k) => *report.known.entry(k.test.to_string()).or_default() += 1,
                None => {
                    let why = format!("panic at {}: {}", panic.location, panic.message);
                    let path = save_crash(name, i, &input, &why);
                    eprintln!(
                        "fuzz {name}: input {i} panicked ({why}); saved as {}",
                        path.display()
                    );
                    report.crashes.push(path);
                }
            },
            Err(_) => {
                let why = format!("timeout: still running after {} ms", limit.as_millis());
                let path = save_crash(name, i, &input, &why);
                eprintln!(
                    "fuzz {name}: input {i} ran past {} ms; saved as {}",
                    limit.as_millis(),
                    path.display()
                );
                report.crashes.push(path);
                report.slowest = report.slowest.max(began.elapsed());
                break;
            }
        }
        report.slowest = report.slowest.max(began.elapsed());
    }
    report.elapsed = start.elapsed();
    // A worker that timed out is still busy: it is left behind. Otherwise it ends with its
    // channel, and so does what `exec` holds (a server, a runtime).
    let timed_out = report.crashes.iter().any(|p| {
        std::fs::read_to_string(p.with_extension("txt")).is_ok_and(|w| w.starts_with("timeout"))
    });
    drop(worker.inputs);
    if !timed_out {
        let _ = worker.thread.join();
    }
    report
}
