//! The encoder-decoder tasks through the `girder` binary: translation, summarization,
//! text2text-generation and speech recognition on the fixtures print what transformers'
//! pipelines return (the fixtures' expected outputs), and bad audio or checkpoints end in
//! one line naming the file.

mod common;

use common::{fixture, girder_with, json_lines, one_line_error, scratch};
use serde_json::Value;

/// The pipeline cases transformers recorded for a fixture.
fn pipeline_cases(fixture_name: &str) -> Vec<Value> {
    let path = fixture(fixture_name).join("expected_seq2seq.json");
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    expected["pipeline"].as_array().unwrap().clone()
}

/// The command-line flags of a case's pipeline keyword arguments.
fn flags(kwargs: &Value) -> Vec<String> {
    let mut flags = Vec::new();
    for (name, value) in kwargs.as_object().unwrap() {
        let flag = match name.as_str() {
            "max_length" => "--max-output-length".to_string(),
            other => format!("--{}", other.replace('_', "-")),
        };
        match value {
            Value::Bool(true) => flags.push(flag),
            Value::Bool(false) => {}
            other => {
                flags.push(flag);
                flags.push(other.to_string().trim_matches('"').to_string());
            }
        }
    }
    flags
}

#[test]
fn text_tasks_print_what_the_pipelines_return() {
    for fixture_name in ["t5-seq2seq", "bart-seq2seq", "marian-seq2seq"] {
        let model = fixture(fixture_name);
        for case in pipeline_cases(fixture_name) {
            let task = case["task"].as_str().unwrap();
            let mut args: Vec<String> = vec![
                "run".into(),
                task.into(),
                "-m".into(),
                model.to_str().unwrap().into(),
            ];
            args.extend(flags(&case["kwargs"]));
            for input in case["inputs"].as_array().unwrap() {
                args.push(input.as_str().unwrap().into());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let lines = json_lines(&girder_with(&args, None, &[]));
            let expected = case["outputs"].as_array().unwrap();
            assert_eq!(lines.len(), expected.len(), "{fixture_name} {task}");
            for (line, want) in lines.iter().zip(expected) {
                // The pipeline returns a list of one result per input.
                let want = &want[0];
                for (key, value) in want.as_object().unwrap() {
                    assert_eq!(
                        &line[key], value,
                        "{fixture_name} {task} {:?}",
                        case["kwargs"]
                    );
                }
            }
        }
    }
}

#[test]
fn summarization_reads_json_lines_and_keeps_their_order() {
    let dir = scratch("summarize-jsonl");
    let input = dir.join("articles.jsonl");
    std::fs::write(
        &input,
        "{\"text\": \"the small dog sees a red ball in the park .\"}\n\
         {\"text\": \"a quiet mouse finds our key under the bridge .\", \"id\": 7}\n",
    )
    .unwrap();
    let model = fixture("bart-seq2seq");
    let lines = json_lines(&girder_with(
        &[
            "run",
            "summarization",
            "-m",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ],
        None,
        &[],
    ));
    let texts: Vec<&str> = lines
        .iter()
        .map(|l| l["summary_text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["dog sees ball in park .", "mouse finds key under bridge ."]
    );
}

#[test]
fn speech_recognition_transcribes_files_as_the_pipeline_does() {
    let model = fixture("whisper-asr");
    for case in pipeline_cases("whisper-asr") {
        let mut args: Vec<String> = vec![
            "run".into(),
            "automatic-speech-recognition".into(),
            "-m".into(),
            model.to_str().unwrap().into(),
        ];
        args.extend(flags(&case["kwargs"]));
        for file in case["inputs"].as_array().unwrap() {
            args.push(model.join(file.as_str().unwrap()).to_str().unwrap().into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let lines = json_lines(&girder_with(&args, None, &[]));
        let expected = case["outputs"].as_array().unwrap();
        assert_eq!(lines.len(), expected.len());
        for (line, want) in lines.iter().zip(expected) {
            assert_eq!(line["text"], want["text"], "{:?}", case["kwargs"]);
            let Some(chunks) = want.get("chunks") else {
                continue;
            };
            let got = line["chunks"].as_array().unwrap();
            assert_eq!(got.len(), chunks.as_array().unwrap().len(), "{line}");
            for (got, want) in got.iter().zip(chunks.as_array().unwrap()) {
                assert_eq!(got["text"], want["text"]);
                for (a, b) in got["timestamp"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .zip(want["timestamp"].as_array().unwrap())
                {
                    let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                    assert!((a - b).abs() < 1e-6, "{got} vs {want}");
                }
            }
        }
    }
}

#[test]
fn bad_audio_and_bad_checkpoints_name_the_file() {
    let dir = scratch("bad-audio");
    let model = fixture("whisper-asr");
    let model = model.to_str().unwrap();
    // Text in a .wav file.
    let not_audio = dir.join("notes.wav");
    std::fs::write(&not_audio, "these are not samples").unwrap();
    let err = one_line_error(&girder_with(
        &[
            "run",
            "automatic-speech-recognition",
            "-m",
            model,
            not_audio.to_str().unwrap(),
        ],
        None,
        &[],
    ));
    assert!(err.contains("notes.wav"), "{err}");
    // A file that is not there.
    let err = one_line_error(&girder_with(
        &[
            "run",
            "automatic-speech-recognition",
            "-m",
            model,
            "/no/such/clip.flac",
        ],
        None,
        &[],
    ));
    assert!(err.contains("/no/such/clip.flac"), "{err}");
    // A WAV cut inside its header.
    let clip = std::fs::read(fixture("whisper-asr").join("silence.wav")).unwrap();
    let cut = dir.join("cut.wav");
    std::fs::write(&cut, &clip[..20]).unwrap();
    let err = one_line_error(&girder_with(
        &[
            "run",
            "automatic-speech-recognition",
            "-m",
            model,
            cut.to_str().unwrap(),
        ],
        None,
        &[],
    ));
    assert!(err.contains("cut.wav"), "{err}");
    // A text model given audio names the task's model kind.
    let t5 = fixture("t5-seq2seq");
    let err = one_line_error(&girder_with(
        &[
            "run",
            "automatic-speech-recognition",
            "-m",
            t5.to_str().unwrap(),
            cut.to_str().unwrap(),
        ],
        None,
        &[],
    ));
    assert!(err.contains("WhisperForConditionalGeneration"), "{err}");
    // convert: a file that is no CTranslate2 model.
    let source = dir.join("ct2");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("model.bin"), b"\x02\x00\x00\x00garbage").unwrap();
    let err = one_line_error(&girder_with(
        &[
            "convert",
            "--from",
            "ctranslate2",
            source.to_str().unwrap(),
            "--out",
            dir.join("out").to_str().unwrap(),
        ],
        None,
        &[],
    ));
    assert!(err.contains("model.bin"), "{err}");
    assert!(!dir.join("out").join("model.safetensors").exists());
    // convert: a folder with files in it is not written into without --force.
    let occupied = dir.join("occupied");
    std::fs::create_dir_all(&occupied).unwrap();
    std::fs::write(occupied.join("config.json"), "{}").unwrap();
    let err = one_line_error(&girder_with(
        &[
            "convert",
            "--from",
            "ctranslate2",
            source.to_str().unwrap(),
            "--out",
            occupied.to_str().unwrap(),
        ],
        None,
        &[],
    ));
    assert!(
        err.contains("is not empty") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(occupied.join("config.json")).unwrap(),
        "{}"
    );
}
