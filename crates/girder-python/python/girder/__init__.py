"""girder from Python: transformers' ``pipeline`` API over girder's Rust library.

>>> import girder
>>> classifier = girder.pipeline("text-classification", model="models/minilm-sentiment")
>>> classifier("This is great!")                                   # doctest: +SKIP
[{'label': 'positive', 'score': 0.995...}]

Calls take transformers' arguments and return transformers' output shapes (lists of
dicts); the ``embeddings`` task returns NumPy arrays, as sentence-transformers' ``encode``
does. ``automatic-speech-recognition`` takes what transformers' takes: a file path, a file's
bytes, a NumPy array at 16 kHz, or ``{"raw": array, "sampling_rate": rate}``. Every model loads through girder's one loader: a Hugging Face folder, a ``.gguf``
file or a hub id in the local cache. Work runs with the GIL released, a batch of texts
packed without padding.
"""

import json as _json
import os as _os

import numpy as _np

from ._girder import GirderError, Pipeline as _Pipeline
from ._girder import check_json as _check_json
from ._girder import lock_json as _lock_json
from ._girder import tasks, version

__all__ = ["GirderError", "Pipeline", "pipeline", "check", "lock", "tasks", "version"]
__version__ = version()


def pipeline(task, model, *, tokenizer=None, device=None, dtype=None, adapter=None,
             max_length=None, truncation=True, quantize=None, max_drift=0.02,
             allow_drift=False, drift_probe=None, lm_head_f32=False):
    """Loads ``model`` for ``task`` and returns a callable :class:`Pipeline`.

    ``task``: a name of :func:`tasks` or an alias (``sentiment-analysis``, ``ner``,
    ``feature-extraction``, ``translation_en_to_de`` …). ``tokenizer``: another tokenizer folder in the model's
    place (girder's guard checks it at load). ``device``: ``"cpu"`` (or -1, or ``None``).
    ``dtype``: ``"float32"`` (the default, or ``"auto"``), ``"bfloat16"`` or ``"float16"``
    (or ``torch.bfloat16`` …): linear layers and embeddings kept in half precision (half the
    memory, activations float32), after the same comparison with f32 as ``quantize``.
    ``adapter``: a PEFT LoRA adapter folder merged at load.
    ``max_length`` / ``truncation``: the input limit in tokens, and whether a longer input
    is cut (``True``, reported) or refused (``False``: :class:`GirderError`).
    ``quantize``: ``"q8_0"``, ``"q6_k"``, ``"q5_k"``, ``"q5_0"``, ``"q4_k"`` or ``"q4_0"``
    quantizes the linear layers and embedding tables at load, after comparing the quantized
    model with f32 on probe texts (``drift_probe``, a list of texts, or 52 built-in
    sentences): a drift above ``max_drift`` raises :class:`GirderError` unless
    ``allow_drift``; the report is :attr:`Pipeline.drift_report`. ``lm_head_f32=True``
    keeps the output projection (an LM head, tied or not) in float32 while ``dtype`` or
    ``quantize`` reduce the rest.
    """
    if device in (None, -1, "cpu"):
        device = "cpu"
    return Pipeline(_Pipeline(task, str(model), tokenizer=_path(tokenizer),
                              device=str(device), dtype=_dtype_name(dtype),
                              adapter=_path(adapter), max_length=max_length,
                              truncation=truncation, quantize=quantize,
                              max_drift=max_drift, allow_drift=allow_drift,
                              drift_probe=None if drift_probe is None else list(drift_probe),
                              lm_head_f32=lm_head_f32))


class Pipeline:
    """A task on a loaded model; call it with one text or a list of texts."""

    def __init__(self, inner):
        self._inner = inner

    @property
    def task(self):
        """The task's canonical name."""
        return self._inner.task

    @property
    def model(self):
        """The model reference it was loaded from."""
        return self._inner.model

    @property
    def drift_report(self):
        """With ``quantize``: the accuracy report against f32 (``drift``, ``max_drift``,
        ``ok``, ``figures``); ``None`` otherwise."""
        report = self._inner.drift_report_json
        return None if report is None else _json.loads(report)

    def __repr__(self):
        return repr(self._inner)

    def __call__(self, inputs, **kwargs):
        if self.task == "automatic-speech-recognition":
            return self._transcribe(inputs, kwargs)
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"input {i} is {type(text).__name__}, not str")
        arguments = _json.dumps(kwargs)
        if self.task == "embeddings":
            vectors = self._inner.embed(texts, arguments)
            return vectors[0] if single else vectors
        outputs = _json.loads(self._inner.run_json(texts, arguments))
        shaped = [_shape(self.task, output, kwargs) for output in outputs]
        if single:
            return _single(self.task, shaped[0])
        return shaped


    def _transcribe(self, inputs, kwargs):
        """Speech recognition: ``{"text": ...}`` per input (with ``"chunks"`` when
        ``return_timestamps=True``), a list for a list of inputs."""
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        audio = [_audio_input(i, item) for i, item in enumerate(items)]
        outputs = _json.loads(self._inner.transcribe(audio, _json.dumps(kwargs)))
        shaped = []
        for output in outputs:
            result = {"text": output["text"]}
            if "chunks" in output:
                result["chunks"] = [{"timestamp": tuple(c["timestamp"]), "text": c["text"]}
                                    for c in output["chunks"]]
            shaped.append(result)
        return shaped[0] if single else shaped


def _audio_input(index, item):
    """One speech input as the extension takes it: ``(kind, payload, sampling_rate)``."""
    if isinstance(item, (str, _os.PathLike)):
        path = _os.fspath(item)
        if path.startswith(("http://", "https://")):
            raise GirderError(f"input {index}: {path} is a URL; girder reads local files, "
                              "so download it first")
        return ("file", path, None)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return ("bytes", bytes(item), None)
    if isinstance(item, dict):
        raw = item.get("raw", item.get("array"))
        if raw is None or "sampling_rate" not in item:
            raise GirderError(
                f"input {index}: a dict input needs the samples under \"raw\" (or \"array\") "
                "and their rate under \"sampling_rate\"")
        return ("samples", _mono(index, raw), int(item["sampling_rate"]))
    if hasattr(item, "__array__"):
        return ("samples", _mono(index, item), None)
    raise GirderError(f"input {index} is {type(item).__name__}: pass a file path, bytes, a "
                      "NumPy array or {\"raw\": array, \"sampling_rate\": rate}")


def _mono(index, samples):
    """Float32 mono samples, contiguous: ``(channels, samples)`` with one or two channels
    is averaged over the channels, as transformers' ``_to_mono``."""
    array = _np.asarray(samples)
    if array.dtype.kind in "iub":
        raise GirderError(
            f"input {index}: samples of type {array.dtype} (integer PCM); pass floats in "
            "[-1, 1], e.g. samples / 32768 for int16")
    if array.ndim == 2:
        if array.shape[0] > 2:
            raise GirderError(
                f"input {index}: shape {array.shape} is read as (channels, samples), and "
                f"{array.shape[0]} channels is more than 2; transpose a (samples, channels) "
                "array, or downmix it yourself")
        array = array.mean(axis=0)
    elif array.ndim != 1:
        raise GirderError(f"input {index}: expected samples shaped (samples,) or "
                          f"(channels, samples), got shape {array.shape}")
    return _np.ascontiguousarray(array, dtype=_np.float32)


def _shape(task, output, kwargs):
    """One text's output in a batched call, as transformers returns it."""
    if task == "text-classification":
        if "labels" in output:
            return output["labels"]
        return {"label": output["label"], "score": output["score"]}
    if task == "token-classification":
        return output["entities"]
    if task == "fill-mask":
        return output["predictions"]
    if task == "text-generation":
        return [{"generated_text": output["generated_text"]}]
    if task in _TEXT_TO_TEXT:
        return {key: value for key, value in output.items() if key.endswith("_text")}
    return output


_TEXT_TO_TEXT = ("text2text-generation", "summarization", "translation")


def _single(task, shaped):
    """A single string's output: text-classification's legacy dict and the text-to-text
    tasks' dict are wrapped in a one-element list, as transformers does."""
    if task in ("text-classification",) + _TEXT_TO_TEXT and isinstance(shaped, dict):
        return [shaped]
    return shaped


def check(model, *, tokenizer=None, probe=None, lock=None):
    """``girder check``: the pre-flight guard's report, ``{"ok": bool, "findings": [...]}``
    (each finding: severity, code, message, fix). ``lock``: a lock file to compare with."""
    return _json.loads(_check_json(str(model), tokenizer=_path(tokenizer), probe=probe,
                                   lock=_path(lock)))


def lock(model, out, *, tokenizer=None, probe=None, allow_mismatch=False):
    """``girder lock``: writes a lock pinning ``model``'s tokenization (and a classifier's
    outputs) on the probe texts to ``out``; returns it as a dict."""
    return _json.loads(_lock_json(str(model), str(out), tokenizer=_path(tokenizer),
                                  probe=probe, allow_mismatch=allow_mismatch))


def _path(value):
    return None if value is None else str(value)


def _dtype_name(dtype):
    if dtype is None:
        return None
    return str(dtype)
