"""Batch inference on Ray Data: a local cluster with two workers embeds a Parquet file of
texts with girder, and the Parquet it writes holds, for every text, the embedding the
pipeline gives in-process. Runs where ``ray`` and ``pyarrow`` import (``pip install
"ray[data]" pyarrow`` into .venv-python); skipped otherwise."""

import sys

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'ray[data]' pyarrow)")
pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")


def test_ray_data_embeds_a_parquet_file_with_two_workers(batch_job):
    example = batch_job.example("ray_embeddings")
    # Two CPUs for the two workers, one for Ray Data's read and write tasks (light work
    # that the workers' CPUs would otherwise starve).
    ray.init(num_cpus=3, include_dashboard=False, ignore_reinit_error=True,
             runtime_env={"env_vars": {"PYTHONPATH": ":".join(sys.path)}})
    try:
        count, _ = example.run(batch_job.model, str(batch_job.source), batch_job.output,
                               workers=2, batch_size=32)
    finally:
        ray.shutdown()
    batch_job.check(count)
