"""Batch inference on Spark: a local Spark session running two tasks at a time embeds a
Parquet file of texts with girder, and the Parquet it writes holds, for every text, the
embedding the pipeline gives in-process. Runs where ``pyspark``, ``pandas`` and ``pyarrow``
import and a Java runtime is on the PATH (``pip install pyspark pandas pyarrow`` into
.venv-python; Java 17 or later); skipped otherwise."""

import os
import shutil
import sys

import pytest

pytest.importorskip("pyspark", reason="pyspark is not installed (pip install pyspark pandas pyarrow)")
pytest.importorskip("pandas", reason="pandas is not installed")
pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")
if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
    pytest.skip("no Java runtime for Spark (java is not on the PATH)", allow_module_level=True)


def test_spark_embeds_a_parquet_file_with_two_workers(batch_job, monkeypatch):
    example = batch_job.example("spark_embeddings")
    # Spark's Python workers find girder (staged by scripts/test-python) on this path, and
    # run on this interpreter.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    spark = example.session("local[2]", app="girder-test")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        count, _ = example.run(spark, batch_job.model, batch_job.source, batch_job.output,
                               workers=2, batch_size=32)
    finally:
        spark.stop()
    batch_job.check(count)
