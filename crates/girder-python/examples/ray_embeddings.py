"""Embeds a Parquet file of texts with girder on a Ray cluster, writing Parquet.

Each Ray worker is an actor that loads the model once; Ray Data streams batches of texts to
the workers (``map_batches``), girder packs each batch without padding, and the embeddings
come back as float32 rows beside their texts.

    python crates/girder-python/examples/ray_embeddings.py \\
        --model models/all-MiniLM-L6-v2 --input texts.parquet --output embeddings/ --workers 2

Prints one JSON line: texts, workers, seconds, texts per second.
"""

import argparse
import json
import os
import time


class Embedder:
    """One Ray worker: the model, loaded once, with ``threads`` compute threads."""

    def __init__(self, model, threads):
        # girder's thread team is as large as rayon's pool, sized on first use.
        os.environ["RAYON_NUM_THREADS"] = str(threads)
        import girder

        self.embed = girder.pipeline("embeddings", model=model)

    def __call__(self, batch):
        texts = [str(t) for t in batch["text"]]
        vectors = self.embed(texts)
        return {"text": texts, "embedding": list(vectors)}


def run(model, source, output, workers, threads_per_worker=1, batch_size=256):
    """Embeds ``source`` (a Parquet file or folder with a ``text`` column) into ``output``
    with ``workers`` actors; returns the number of texts and the seconds it took (reading,
    embedding, writing)."""
    import ray

    started = time.perf_counter()
    texts = ray.data.read_parquet(source)
    embedded = texts.map_batches(
        Embedder,
        fn_constructor_kwargs={"model": str(model), "threads": threads_per_worker},
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=workers,
        num_cpus=threads_per_worker,
    )
    embedded.write_parquet(str(output))
    seconds = time.perf_counter() - started
    return texts.count(), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", required=True, help="Parquet with a `text` column")
    parser.add_argument("--output", required=True, help="a folder for the Parquet output")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    import ray

    # One logical CPU beyond the workers' for Ray Data's read and write tasks, which the
    # workers' CPUs would otherwise starve (the pipeline then waits forever).
    ray.init(num_cpus=args.workers * args.threads_per_worker + 1, include_dashboard=False)
    count, seconds = run(args.model, args.input, args.output, args.workers,
                         args.threads_per_worker, args.batch_size)
    print(json.dumps({"texts": count, "workers": args.workers, "seconds": round(seconds, 2),
                      "texts_per_s": round(count / seconds, 1)}))


if __name__ == "__main__":
    main()
