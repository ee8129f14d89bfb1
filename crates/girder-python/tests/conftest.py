"""What the batch-job tests (Ray Data, Spark) share: a Parquet file of texts, the example
script as a module, and the check that the Parquet it wrote holds, for every text, the
embedding the pipeline gives in-process."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]


class BatchJob:
    """A batch embedding job's input and its checks (needs pyarrow)."""

    model = ROOT / "crates" / "girder" / "tests" / "fixtures" / "bert-st-mean"

    def __init__(self, tmp_path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pq = pq
        self.texts = [f"sentence number {i} about {topic}" for i, topic in
                      enumerate(["cats", "the sea", "trains", "tax law", "music"] * 40)]
        self.source = tmp_path / "texts.parquet"
        self.output = tmp_path / "out"
        pq.write_table(pa.table({"text": self.texts}), self.source)

    @staticmethod
    def example(name):
        """`crates/girder-python/examples/<name>.py` as a module."""
        path = ROOT / "crates" / "girder-python" / "examples" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def check(self, count):
        import girder

        assert count == len(self.texts)
        written = self._pq.read_table(self.output).to_pydict()
        assert sorted(written["text"]) == sorted(self.texts)
        expected = girder.pipeline("embeddings", model=self.model)(self.texts)
        by_text = dict(zip(written["text"], written["embedding"]))
        got = np.array([by_text[t] for t in self.texts], dtype=np.float32)
        np.testing.assert_array_equal(got, expected)


@pytest.fixture
def batch_job(tmp_path):
    return BatchJob(tmp_path)
