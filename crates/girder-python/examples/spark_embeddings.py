"""Embeds a Parquet file of texts with girder on Spark, writing Parquet.

Each Spark task hands its partition's rows to a Python worker in Arrow batches
(``mapInPandas``); the worker loads the model once and keeps it for every later batch and
partition (Spark reuses Python workers), girder packs each batch without padding, and the
embeddings come back as float32 arrays beside their texts.

    python crates/girder-python/examples/spark_embeddings.py \\
        --model models/all-MiniLM-L6-v2 --input texts.parquet --output embeddings/ --workers 2

Prints one JSON line: texts, workers, seconds, texts per second. ``--master`` runs it on a
cluster instead of ``local[workers]``: every executor then needs the girder wheel installed
and the model at the same path.
"""

import argparse
import json
import os
import time

_PIPELINES = {}


def _embedder(model, threads):
    """The worker's pipeline for ``model``, loaded on its first batch."""
    if model not in _PIPELINES:
        # girder's thread team is as large as rayon's pool, sized on first use.
        os.environ["RAYON_NUM_THREADS"] = str(threads)
        import girder

        _PIPELINES[model] = girder.pipeline("embeddings", model=model)
    return _PIPELINES[model]


def embed_partitions(model, threads):
    """The ``mapInPandas`` function: batches of ``text`` rows in, ``text`` and ``embedding``
    out."""

    def embed(batches):
        import pandas as pd

        pipeline = _embedder(model, threads)
        for batch in batches:
            texts = [str(t) for t in batch["text"]]
            vectors = pipeline(texts)
            yield pd.DataFrame({"text": texts, "embedding": list(vectors)})

    return embed


def run(spark, model, source, output, workers, threads_per_worker=1, batch_size=256):
    """Embeds ``source`` (Parquet with a ``text`` column) into ``output`` with ``workers``
    tasks at a time; returns the number of texts and the seconds it took (reading,
    embedding, writing)."""
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    started = time.perf_counter()
    texts = spark.read.parquet(str(source))
    # Several partitions per worker, so a worker that finishes early takes the next one.
    embedded = texts.repartition(workers * 4).mapInPandas(
        embed_partitions(str(model), threads_per_worker),
        schema="text string, embedding array<float>",
    )
    embedded.write.mode("overwrite").parquet(str(output))
    seconds = time.perf_counter() - started
    return spark.read.parquet(str(output)).count(), seconds


def session(master, app="girder-embeddings"):
    from pyspark.sql import SparkSession

    return (SparkSession.builder.master(master).appName(app)
            .config("spark.ui.enabled", "false")
            .config("spark.python.worker.reuse", "true")
            .getOrCreate())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", required=True, help="Parquet with a `text` column")
    parser.add_argument("--output", required=True, help="a folder for the Parquet output")
    parser.add_argument("--workers", type=int, default=2, help="tasks run at once")
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--master", help="a Spark master URL (default: local[workers])")
    args = parser.parse_args()

    spark = session(args.master or f"local[{args.workers}]")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        count, seconds = run(spark, args.model, args.input, args.output, args.workers,
                             args.threads_per_worker, args.batch_size)
    finally:
        spark.stop()
    print(json.dumps({"texts": count, "workers": args.workers, "seconds": round(seconds, 2),
                      "texts_per_s": round(count / seconds, 1)}))


if __name__ == "__main__":
    main()
