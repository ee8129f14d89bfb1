//! Helpers shared by the integration tests: fixture discovery, expected values, diffs.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `crates/girder/tests/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every tiny-model fixture folder (those with an expected.json), sorted by name.
pub fn fixture_folders() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("expected.json").is_file() && p.join("config.json").is_file())
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no fixtures found under {}",
        fixtures_dir().display()
    );
    dirs
}

#[derive(Debug, Deserialize)]
pub struct ExpectedEncoding {
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    pub tokens: Vec<String>,
    pub offsets: Vec<(usize, usize)>,
    pub word_ids: Vec<Option<u32>>,
    pub special_tokens_mask: Vec<u32>,
    pub truncated: bool,
}

#[derive(Debug, Deserialize)]
pub struct ExpectedPipeline {
    pub task: String,
    pub options: serde_json::Value,
    pub outputs: Vec<serde_json::Value>,
}

/// The oracle's expected.json.
#[derive(Debug, Deserialize)]
pub struct Expected {
    pub architecture: String,
    pub kind: String,
    pub max_length: usize,
    pub texts: Vec<String>,
    pub encodings: Vec<ExpectedEncoding>,
    #[serde(default)]
    pub pipelines: Vec<ExpectedPipeline>,
}

pub struct Fixture {
    pub name: String,
    pub dir: PathBuf,
    pub expected: Expected,
    pub tensors: HashMap<String, Tensor>,
}

impl Fixture {
    pub fn load(dir: &Path) -> Fixture {
        let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
        let expected: Expected = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: bad expected.json: {e}", dir.display()));
        let tensors =
            candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu)
                .unwrap_or_else(|e| panic!("{}: bad expected.safetensors: {e}", dir.display()));
        Fixture {
            name: dir.file_name().unwrap().to_string_lossy().into_owned(),
            dir: dir.to_path_buf(),
            expected,
            tensors,
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }
}

/// Largest absolute elementwise difference; panics on a shape mismatch.
pub fn max_abs_diff(a: &Tensor, b: &Tensor, what: &str) -> f32 {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            if x.is_nan() || y.is_nan() {
                f32::INFINITY
            } else {
                (x - y).abs()
            }
        })
        .fold(0.0, f32::max)
}

/// Largest absolute difference between two JSON documents of the same shape: numbers are
/// compared with tolerance, everything else must be equal. Returns Err with the path of
/// the first structural difference.
pub fn json_diff(
    expected: &serde_json::Value,
    actual: &serde_json::Value,
    path: &str,
) -> Result<f64, String> {
    use serde_json::Value;
    match (expected, actual) {
        (Value::Number(a), Value::Number(b)) => {
            Ok((a.as_f64().unwrap() - b.as_f64().unwrap()).abs())
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                return Err(format!(
                    "{path}: expected {} items, got {}: expected {expected}, got {actual}",
                    a.len(),
                    b.len()
                ));
            }
            a.iter().zip(b).enumerate().try_fold(0.0, |m, (i, (x, y))| {
                Ok(f64::max(m, json_diff(x, y, &format!("{path}[{i}]"))?))
            })
        }
        (Value::Object(a), Value::Object(b)) => {
            let ka: Vec<_> = a.keys().collect();
            let kb: Vec<_> = b.keys().collect();
            if ka != kb {
                return Err(format!("{path}: keys {ka:?} != {kb:?}"));
            }
            a.iter().try_fold(0.0, |m, (k, x)| {
                Ok(f64::max(m, json_diff(x, &b[k], &format!("{path}.{k}"))?))
            })
        }
        (a, b) if a == b => Ok(0.0),
        (a, b) => Err(format!("{path}: expected {a}, got {b}")),
    }
}

/// A scratch copy of a fixture folder that tests may damage; removed on drop.
pub struct ScratchModel {
    pub dir: PathBuf,
}

impl ScratchModel {
    /// Copies `tests/fixtures/<fixture>` into a fresh temporary folder.
    pub fn copy_of(fixture: &str, tag: &str) -> ScratchModel {
        let dir = std::env::temp_dir().join(format!("girder-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        copy_dir(&fixtures_dir().join(fixture), &dir);
        ScratchModel { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn as_str(&self) -> &str {
        self.dir.to_str().unwrap()
    }
}

impl Drop for ScratchModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
