"""Batch inference on Spark: a local Spark session running two tasks at a time embeds a
Parquet file of texts with girder, and the Parquet it writes holds, for every text, the
embedding the pipeline gives in-process. Runs where ``pyspark``, ``pandas`` and ``pyarrow``
import and a Java runtime is on the PATH (``pip install pyspark pandas pyarrow`` into
.venv-python; Java 17 or later); skipped otherwise."""

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyspark", reason="pyspark is not installed (pip install pyspark pandas pyarrow)")
pytest.importorskip("pandas", reason="pandas is not installed")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")
if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
    pytest.skip("no Java runtime for Spark (java is not on the PATH)", allow_module_level=True)
import pyarrow as pa  # noqa: E402

import girder  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
MODEL = ROOT / "crates" / "girder" / "tests" / "fixtures" / "bert-st-mean"
EXAMPLE = ROOT / "crates" / "girder-python" / "examples" / "spark_embeddings.py"


def load_example():
    spec = importlib.util.spec_from_file_location("spark_embeddings", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spark_embeds_a_parquet_file_with_two_workers(tmp_path, monkeypatch):
    texts = [f"sentence number {i} about {topic}" for i, topic in
             enumerate(["cats", "the sea", "trains", "tax law", "music"] * 40)]
    source = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"text": texts}), source)
    example = load_example()
    # Spark's Python workers find girder (staged by scripts/test-python) on this path, and
    # run on this interpreter.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    spark = example.session("local[2]", app="girder-test")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        count, _ = example.run(spark, MODEL, source, tmp_path / "out", workers=2, batch_size=32)
    finally:
        spark.stop()
    assert count == len(texts)
    written = pq.read_table(tmp_path / "out").to_pydict()
    assert sorted(written["text"]) == sorted(texts)
    expected = girder.pipeline("embeddings", model=MODEL)(texts)
    by_text = dict(zip(written["text"], written["embedding"]))
    got = np.array([by_text[t] for t in texts], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)
