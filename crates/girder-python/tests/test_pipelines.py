"""The Python package against the CLI: on every encoder and causal-LM fixture, the outputs
of ``girder.pipeline(...)(...)`` equal what ``girder run`` prints for the same texts and
arguments, shaped as transformers' pipelines return them."""

import json
import os
import subprocess
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
    with pytest.raises(girder.GirderError, match="float32"):
        girder.pipeline("text-classification", model=FIXTURES / "bert-seqcls", dtype="float16")
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


def test_speech_recognition_is_refused_with_a_pointer_to_the_cli():
    with pytest.raises(girder.GirderError, match="audio"):
        girder.pipeline("automatic-speech-recognition",
                        model=FIXTURES / "whisper-asr")("speech.wav")


def test_text_to_text_arguments_are_generate_s():
    pipe = girder.pipeline("translation_en_to_de", model=FIXTURES / "t5-seq2seq")
    assert pipe("The house.", early_stopping="never", num_beams=2, max_new_tokens=4, prefix="translate English to German: ")
    with pytest.raises(girder.GirderError, match="num_beam"):
        pipe("The house.", num_beam=2)
