"""The Python package against the CLI: on every encoder, causal-LM, text-to-text and speech
fixture, the outputs of ``girder.pipeline(...)(...)`` equal what ``girder run`` prints for
the same inputs and arguments, shaped as transformers' pipelines return them."""

import json
import os
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

import girder

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "crates" / "girder" / "tests" / "fixtures"
GIRDER = os.environ.get("GIRDER_BIN", str(ROOT / "target" / "debug" / "girder"))

TEXTS = [
    "This is great!",
    "Angela Merkel visited Paris in June.",
    "The quick brown fox jumps over the lazy dog, twice, before breakfast.",
]


def fixtures(suffixes):
    found = sorted(p.name for p in FIXTURES.iterdir()
                   if p.is_dir() and p.name.endswith(suffixes) and not p.name.startswith("peft"))
    assert found, f"no fixtures ending in {suffixes} under {FIXTURES}"
    return found


def cli(task, model, texts, *args):
    """`girder run` on texts: one JSON object per text."""
    out = subprocess.run([GIRDER, "run", task, "--model", str(model), *args, *texts],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def mask_token(model):
    tokenizer = json.loads((FIXTURES / model / "tokenizer.json").read_text())
    return next(t["content"] for t in tokenizer["added_tokens"] if "mask" in t["content"].lower())


@pytest.mark.parametrize("model", fixtures(("-seqcls", "-seqcls-multilabel")))
def test_text_classification_matches_the_cli(model):
    path = FIXTURES / model
    clf = girder.pipeline("text-classification", model=path)
    expected = cli("text-classification", path, TEXTS)
    # transformers' legacy mode: one dict per text in a batch, a one-element list for a string.
    assert clf(TEXTS) == [{"label": e["label"], "score": e["score"]} for e in expected]
    assert clf(TEXTS[0]) == [{"label": expected[0]["label"], "score": expected[0]["score"]}]
    ranked = cli("text-classification", path, TEXTS, "--top-k", "all")
    assert clf(TEXTS, top_k=None) == [e["labels"] for e in ranked]
    top1 = cli("text-classification", path, TEXTS, "--top-k", "1")
    assert clf(TEXTS[1], top_k=1) == top1[1]["labels"]


@pytest.mark.parametrize("model", fixtures(("-tokcls",)))
@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_matches_the_cli(model, strategy):
    path = FIXTURES / model
    ner = girder.pipeline("ner", model=path)
    expected = cli("token-classification", path, TEXTS, "--aggregation", strategy)
    got = ner(TEXTS, aggregation_strategy=strategy)
    assert got == [e["entities"] for e in expected]
    assert ner(TEXTS[1], aggregation_strategy=strategy) == expected[1]["entities"]


@pytest.mark.parametrize("model", fixtures(("-mlm",)))
def test_fill_mask_matches_the_cli(model):
    path = FIXTURES / model
    texts = [f"Paris is the {mask_token(model)} of France.",
             f"The {mask_token(model)} sat on the mat."]
    fill = girder.pipeline("fill-mask", model=path)
    expected = cli("fill-mask", path, texts, "--top-k", "3")
    assert fill(texts, top_k=3) == [e["predictions"] for e in expected]
    assert fill(texts[0], top_k=3) == expected[0]["predictions"]


@pytest.mark.parametrize("model", fixtures(("-base", "-st-cls", "-st-max", "-st-mean")))
def test_embeddings_match_the_cli_as_numpy(model):
    path = FIXTURES / model
    embed = girder.pipeline("feature-extraction", model=path)
    expected = np.array([e["embedding"] for e in cli("embeddings", path, TEXTS)], dtype=np.float32)
    got = embed(TEXTS)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(embed(TEXTS[2]), expected[2])


@pytest.mark.parametrize("model", fixtures(("-causal-lm",)))
def test_text_generation_matches_the_cli(model):
    path = FIXTURES / model
    generate = girder.pipeline("text-generation", model=path)
    prompts = ["Hello", "The capital of France is"]
    expected = cli("text-generation", path, prompts, "--max-new-tokens", "6")
    got = generate(prompts, max_new_tokens=6)
    assert got == [[{"generated_text": e["generated_text"]}] for e in expected]
    assert generate(prompts[1], max_new_tokens=6) == [{"generated_text": expected[1]["generated_text"]}]


def test_truncation_and_max_length_per_call():
    path = FIXTURES / "bert-seqcls"
    clf = girder.pipeline("text-classification", model=path)
    long_text = " ".join(["word"] * 600)
    cut = cli("text-classification", path, [long_text], "--max-length", "16")
    assert clf(long_text, max_length=16) == [{"label": cut[0]["label"], "score": cut[0]["score"]}]
    # The call's limit does not stay: the pipeline's own applies again.
    default = cli("text-classification", path, [long_text])
    assert clf(long_text) == [{"label": default[0]["label"], "score": default[0]["score"]}]
    with pytest.raises(girder.GirderError, match="token"):
        clf(long_text, truncation=False)
    refusing = girder.pipeline("text-classification", model=path, truncation=False)
    with pytest.raises(girder.GirderError):
        refusing(long_text)


def test_bad_arguments_are_errors_that_name_them():
    clf = girder.pipeline("sentiment-analysis", model=FIXTURES / "bert-seqcls")
    with pytest.raises(girder.GirderError, match="aggregation_strategy"):
        clf("text", aggregation_strategy="simple")
    with pytest.raises(girder.GirderError, match="top_k"):
        clf("text", top_k="three")
    with pytest.raises(TypeError, match="input 1"):
        clf(["fine", 3])
    with pytest.raises(girder.GirderError, match="text-generation"):
        girder.pipeline("text-generation", model=FIXTURES / "bert-seqcls")
    with pytest.raises(girder.GirderError, match="no-such-task"):
        girder.pipeline("no-such-task", model=FIXTURES / "bert-seqcls")
    with pytest.raises(girder.GirderError, match="config.json|no-such-folder"):
        girder.pipeline("text-classification", model=FIXTURES / "no-such-folder")
    with pytest.raises(girder.GirderError, match="f32, bf16 or f16"):
        girder.pipeline("text-classification", model=FIXTURES / "bert-seqcls", dtype="int8")
    assert clf([]) == []


def test_check_and_lock(tmp_path):
    report = girder.check(FIXTURES / "bert-seqcls")
    cli_report = json.loads(subprocess.run(
        [GIRDER, "check", "--model", str(FIXTURES / "bert-seqcls"), "--json"],
        capture_output=True, text=True, timeout=300).stdout)
    assert report["ok"] is True
    assert [f["code"] for f in report["findings"]] == [f["code"] for f in cli_report["findings"]]
    pinned = girder.lock(FIXTURES / "bert-seqcls", tmp_path / "girder.lock")
    assert (tmp_path / "girder.lock").exists() and pinned["model_class"]
    assert girder.check(FIXTURES / "bert-seqcls", lock=tmp_path / "girder.lock")["ok"] is True
    other = girder.check(FIXTURES / "roberta-seqcls", lock=tmp_path / "girder.lock")
    assert other["ok"] is False
    assert "lock-model-mismatch" in [f["code"] for f in other["findings"]]


def test_the_gil_is_released_during_compute():
    import threading
    embed = girder.pipeline("embeddings", model=FIXTURES / "bert-st-mean")
    texts = TEXTS * 50
    results = [None, None]

    def work(i):
        results[i] = embed(texts)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(results[0], results[1])
    assert results[0].shape[0] == len(texts)


SEQ2SEQ = [
    ("translation_en_to_de", "t5-seq2seq", "translation_text"),
    ("summarization", "t5-seq2seq", "summary_text"),
    ("summarization", "bart-seq2seq", "summary_text"),
    ("translation", "marian-seq2seq", "translation_text"),
    ("text2text-generation", "t5-seq2seq", "generated_text"),
]


@pytest.mark.parametrize("task,model,key", SEQ2SEQ)
@pytest.mark.parametrize("beams", [1, 3])
def test_text_to_text_matches_the_cli(task, model, key, beams):
    path = FIXTURES / model
    texts = ["The house is wonderful.", "The cat sat on the mat and looked at the dog."]
    pipe = girder.pipeline(task, model=path)
    expected = cli(task, path, texts, "--num-beams", str(beams), "--max-new-tokens", "12")
    got = pipe(texts, num_beams=beams, max_new_tokens=12)
    assert got == [{key: e[key]} for e in expected]
    assert pipe(texts[0], num_beams=beams, max_new_tokens=12) == [{key: expected[0][key]}]


ASR = FIXTURES / "whisper-asr"
WAVS = ["alsa-front-center.wav", "espeak-hello-cat.wav", "silence.wav"]


def read_wav(path):
    """A 16-bit PCM WAV as float samples shaped (channels, samples), and its rate."""
    with wave.open(str(path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        return pcm.reshape(-1, w.getnchannels()).T / 32768, w.getframerate()


def write_wav(path, samples, rate):
    """Float samples shaped (channels, samples) as a 16-bit PCM WAV."""
    pcm = np.round(np.atleast_2d(samples).T * 32768).clip(-32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def transcripts(outputs):
    """The CLI's outputs as the pipeline returns them (no audio_seconds, tuples)."""
    shaped = []
    for o in outputs:
        result = {"text": o["text"]}
        if "chunks" in o:
            result["chunks"] = [{"timestamp": tuple(c["timestamp"]), "text": c["text"]}
                                for c in o["chunks"]]
        shaped.append(result)
    return shaped


def test_speech_recognition_of_files_bytes_and_arrays_matches_the_cli():
    asr = girder.pipeline("automatic-speech-recognition", model=ASR)
    files = [str(ASR / name) for name in WAVS]
    expected = transcripts(cli("automatic-speech-recognition", ASR, files,
                               "--num-beams", "2", "--max-new-tokens", "20"))
    args = {"num_beams": 2, "max_new_tokens": 20}
    assert asr(files, **args) == expected
    assert asr(files[0], **args) == expected[0]
    assert asr(Path(files[1]), generate_kwargs=args) == expected[1]
    assert asr([(ASR / name).read_bytes() for name in WAVS], **args) == expected
    arrays = [read_wav(ASR / name) for name in WAVS]
    assert asr([samples[0] for samples, _ in arrays], **args) == expected
    assert asr([{"raw": s, "sampling_rate": r} for s, r in arrays], **args) == expected
    assert asr({"array": arrays[0][0][0], "sampling_rate": 16000}, **args) == expected[0]
    greedy = transcripts(cli("automatic-speech-recognition", ASR, files[:1],
                             "--num-beams", "1", "--max-new-tokens", "20"))
    assert asr(arrays[0][0][0], num_beams=1, max_new_tokens=20) == greedy[0]


def test_speech_recognition_resamples_and_downmixes_arrays_as_files(tmp_path):
    asr = girder.pipeline("automatic-speech-recognition", model=ASR)
    (speech, rate), = [read_wav(ASR / "espeak-hello-cat.wav")]
    at_8k = speech[:, ::2]
    stereo = np.concatenate([speech, speech[:, ::-1] * 0.25])
    write_wav(tmp_path / "8k.wav", at_8k, 8000)
    write_wav(tmp_path / "stereo.wav", stereo, rate)
    expected = transcripts(cli("automatic-speech-recognition", ASR,
                               [str(tmp_path / "8k.wav"), str(tmp_path / "stereo.wav")],
                               "--max-new-tokens", "20"))
    got = asr([{"raw": at_8k[0], "sampling_rate": 8000}, {"raw": stereo, "sampling_rate": rate}],
              max_new_tokens=20)
    assert got == expected


def test_speech_recognition_timestamps_and_chunking_match_the_cli():
    asr = girder.pipeline("automatic-speech-recognition", model=ASR)
    files = [str(ASR / name) for name in WAVS[:2]]
    expected = transcripts(cli("automatic-speech-recognition", ASR, files,
                               "--return-timestamps", "--max-new-tokens", "20"))
    assert all("chunks" in e for e in expected)
    assert asr(files, return_timestamps=True, max_new_tokens=20) == expected
    chunked = transcripts(cli("automatic-speech-recognition", ASR, files,
                              "--chunk-length-s", "1.5", "--stride-length-s", "0.25",
                              "--max-new-tokens", "10"))
    assert asr(files, chunk_length_s=1.5, stride_length_s=0.25, max_new_tokens=10,
               ignore_warning=True) == chunked
    assert asr(files, chunk_length_s=1.5, stride_length_s=[0.25, 0.25],
               max_new_tokens=10) == chunked


def test_speech_recognition_refuses_bad_audio_naming_the_input():
    asr = girder.pipeline("automatic-speech-recognition", model=ASR)
    samples, _ = read_wav(ASR / "alsa-front-center.wav")
    nan = samples[0].copy()
    nan[7] = np.nan
    refused = [
        ((samples[0] * 32768).astype(np.int16), "integer PCM"),
        (np.zeros((3, 100)), "3 channels"),
        (np.zeros((1, 2, 3)), "shape"),
        (nan, "sample 7 is NaN"),
        ({"raw": samples[0]}, "sampling_rate"),
        ({"raw": samples[0], "sampling_rate": 0}, "sample rate must be positive"),
        (b"not audio at all", "input 0 \\(bytes\\)"),
        ("https://example.com/a.wav", "download it first"),
        (str(ASR / "missing.wav"), "missing.wav"),
        (42, "int"),
    ]
    for audio, message in refused:
        with pytest.raises(girder.GirderError, match=message):
            asr(audio)
    with pytest.raises(girder.GirderError, match="word"):
        asr(samples[0], return_timestamps="word")
    with pytest.raises(girder.GirderError, match="num_beam"):
        asr(samples[0], num_beam=2)
    with pytest.raises(girder.GirderError, match="takes audio"):
        asr._inner.run_json(["speech.wav"], "{}")
    # The pipeline still works after the refusals.
    assert asr(samples[0], max_new_tokens=5)["text"] is not None


def test_text_to_text_arguments_are_generate_s():
    pipe = girder.pipeline("translation_en_to_de", model=FIXTURES / "t5-seq2seq")
    assert pipe("The house.", early_stopping="never", num_beams=2, max_new_tokens=4, prefix="translate English to German: ")
    with pytest.raises(girder.GirderError, match="num_beam"):
        pipe("The house.", num_beam=2)


MINILM = ROOT / "models" / "all-MiniLM-L6-v2"


@pytest.mark.skipif(not (MINILM / "model.safetensors").is_file(),
                    reason="models/all-MiniLM-L6-v2 is missing (scripts/fetch-models)")
def test_quantize_reports_drift_and_refuses_above_the_limit():
    embed = girder.pipeline("embeddings", model=MINILM, quantize="q8_0")
    report = embed.drift_report
    assert report["candidate"] == "q8_0" and report["ok"] is True
    assert report["figures"]["min_cosine"] > 0.995
    assert embed(["A man is eating food."]).shape == (1, 384)
    assert girder.pipeline("embeddings", model=MINILM).drift_report is None
    with pytest.raises(girder.GirderError, match="allow_drift"):
        girder.pipeline("embeddings", model=MINILM, quantize="q4_0", max_drift=0.001,
                        drift_probe=TEXTS)
    loose = girder.pipeline("embeddings", model=MINILM, quantize="q4_0", max_drift=0.001,
                            drift_probe=TEXTS, allow_drift=True)
    assert loose.drift_report["ok"] is False
    with pytest.raises(girder.GirderError, match="nf4"):
        girder.pipeline("embeddings", model=MINILM, quantize="nf4")


@pytest.mark.skipif(not (MINILM / "model.safetensors").is_file(),
                    reason="models/all-MiniLM-L6-v2 is missing (scripts/fetch-models)")
def test_half_precision_reports_drift():
    reference = girder.pipeline("embeddings", model=MINILM)(TEXTS)
    for dtype in ["bfloat16", "torch.float16"]:
        embed = girder.pipeline("embeddings", model=MINILM, dtype=dtype)
        report = embed.drift_report
        assert report["candidate"] in ("bf16", "f16") and report["ok"] is True
        assert report["figures"]["min_cosine"] > 0.999
        got = embed(TEXTS)
        cosines = (got * reference).sum(axis=1)
        assert cosines.min() > 0.999 and not np.array_equal(got, reference)
    with pytest.raises(girder.GirderError, match="pick one"):
        girder.pipeline("embeddings", model=MINILM, dtype="bfloat16", quantize="q8_0")


def test_the_lm_head_can_stay_f32():
    # GPT-2's tied head in bf16 flips a near-tie of the random fixture; kept f32, none.
    for lm_head_f32, agreement in [(False, 0.98), (True, 1.0)]:
        gen = girder.pipeline("text-generation", model=FIXTURES / "gpt2-causal-lm",
                              dtype="bfloat16", lm_head_f32=lm_head_f32)
        top1 = gen.drift_report["figures"]["top1_agreement"]
        assert (top1 == 1.0) if lm_head_f32 else (agreement <= top1 < 1.0), top1
