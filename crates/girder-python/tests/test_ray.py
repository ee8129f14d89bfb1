"""Batch inference on Ray Data: a local cluster with two workers embeds a Parquet file of
texts with girder, and the Parquet it writes holds, for every text, the embedding the
pipeline gives in-process. Runs where ``ray`` and ``pyarrow`` import (``pip install
"ray[data]" pyarrow`` into .venv-python); skipped otherwise."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'ray[data]' pyarrow)")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")
import pyarrow as pa  # noqa: E402

import girder  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
MODEL = ROOT / "crates" / "girder" / "tests" / "fixtures" / "bert-st-mean"
EXAMPLE = ROOT / "crates" / "girder-python" / "examples" / "ray_embeddings.py"


def load_example():
    spec = importlib.util.spec_from_file_location("ray_embeddings", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ray_data_embeds_a_parquet_file_with_two_workers(tmp_path):
    texts = [f"sentence number {i} about {topic}" for i, topic in
             enumerate(["cats", "the sea", "trains", "tax law", "music"] * 40)]
    source = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"text": texts}), source)
    example = load_example()
    # Two CPUs for the two workers, one for Ray Data's read and write tasks (light work
    # that the workers' CPUs would otherwise starve).
    ray.init(num_cpus=3, include_dashboard=False, ignore_reinit_error=True,
             runtime_env={"env_vars": {"PYTHONPATH": ":".join(sys.path)}})
    try:
        count, seconds = example.run(MODEL, str(source), tmp_path / "out", workers=2,
                                     batch_size=32)
    finally:
        ray.shutdown()
    assert count == len(texts)
    written = pq.read_table(tmp_path / "out").to_pydict()
    assert sorted(written["text"]) == sorted(texts)
    expected = girder.pipeline("embeddings", model=MODEL)(texts)
    by_text = dict(zip(written["text"], written["embedding"]))
    got = np.array([by_text[t] for t in texts], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)
