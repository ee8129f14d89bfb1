"""Shared by scripts/bench-asr and scripts/ct2-parity (run with .venv-asr's Python): the speech
manifest, Whisper's English normalizer, word error rates and the machine's description.

Normalization is OpenAI Whisper's EnglishTextNormalizer with its english.json spelling map (the
whisper-normalizer package; transformers' models/whisper/english_normalizer.py is the same code):
lower case, bracketed and filler words removed, contractions and titles expanded ("Mr." ->
"mister", "it's" -> "it is"), spelled-out numbers turned into digits ("twenty-five" -> "25"),
British spellings made American, punctuation removed, spaces collapsed. Both sides of every
comparison go through it. Word error rate is jiwer's word-level Levenshtein alignment
(substitutions + deletions + insertions over reference words), summed over files.
"""
import json
import platform
import subprocess
import time
from pathlib import Path

import jiwer
from whisper_normalizer.english import EnglishTextNormalizer

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "models" / "speech" / "manifest.jsonl"
CT2 = ROOT / "models" / "whisper-tiny.en-ct2"
HF = ROOT / "models" / "whisper-tiny.en"

_normalizer = EnglishTextNormalizer()


def normalize(text):
    return _normalizer(text)


def load_manifest(path=MANIFEST, sets=None, ids=None):
    """The manifest's rows (optionally only some sets or ids), each with `path` relative to ROOT."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run scripts/fetch-speech")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if sets:
        rows = [r for r in rows if r["set"] in sets]
    if ids:
        rows = [r for r in rows if r["id"] in ids]
    for r in rows:
        r["path"] = str((path.parent / r["file"]).resolve().relative_to(ROOT))
    if not rows:
        raise SystemExit("no manifest rows selected")
    return rows


def counts(reference, hypothesis):
    """Word edit counts of one normalized pair: errors, reference words."""
    if not reference.split():
        return len(hypothesis.split()), 0
    o = jiwer.process_words(reference, hypothesis)
    return o.substitutions + o.deletions + o.insertions, o.substitutions + o.deletions + o.hits


def score(rows, hypotheses):
    """Per-file detail and the WER of all files and of each group (set, voice, speed, format)."""
    files = []
    for r, h in zip(rows, hypotheses):
        nr, nh = normalize(r["reference"]), normalize(h)
        err, words = counts(nr, nh)
        files.append({"id": r["id"], "reference": r["reference"], "hypothesis": h,
                      "normalized_reference": nr, "normalized_hypothesis": nh,
                      "errors": err, "reference_words": words})
    groups = {}

    def add(key, f):
        g = groups.setdefault(key, [0, 0, 0])
        g[0] += f["errors"]
        g[1] += f["reference_words"]
        g[2] += 1

    for r, f in zip(rows, files):
        add("all", f)
        add(f"set={r['set']}", f)
        if r["set"] == "sentence":
            add(f"voice={r['voice']}", f)
            add(f"speed={r['speed']}", f)
            add(f"format={r['format']}", f)
    wer = {k: {"wer": e / max(w, 1), "errors": e, "words": w, "files": n} for k, (e, w, n) in groups.items()}
    return files, wer


def group_order(keys):
    def rank(k):
        kind = k.split("=")[0]
        return (["all", "set", "voice", "speed", "format"].index(kind), k)
    return sorted(keys, key=rank)


def cpu_field(key):
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.split(":", 1)[0].strip() == key:
            return line.split(":", 1)[1].strip()
    return "?"


def cpu_name():
    n = sum(1 for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("processor"))
    return (f"{cpu_field('model name')} ({cpu_field('vendor_id')} family {cpu_field('cpu family')} "
            f"model {cpu_field('model')}), {n} logical CPUs")


def load_average():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def now_utc():
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def git_rev():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"
