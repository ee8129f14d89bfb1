#!/usr/bin/env python3
"""The reference side of the encoder benchmark (issue 5): PyTorch and ONNX Runtime on one workload.

    .venv-oracle/bin/python scripts/bench_reference.py --workloads .cache/bench/workloads.json \
        --workload a --engine torch          # or ort, ort-fused
    .venv-oracle/bin/python scripts/bench_reference.py --engine sgemm

Runs one engine on one workload in this process (so that peak RSS belongs to it), with 2 threads,
and prints one JSON line on stdout:

    engine, workload, median_s, min_s, runs, sentences_per_s, tokens_per_s (real, non-pad tokens),
    peak_rss_bytes, embedding0 (first 4 values of text 0's embedding), plus context fields.

One timed run is what a user of transformers or ONNX Runtime pays for a batch of texts: the
tokenizer (pad to the longest text of the batch, truncate at the workload's max_length, as
transformers does), the forward pass on the padded batch, then mean pooling over the attention
mask and L2 normalisation (as sentence-transformers does for all-MiniLM-L6-v2).

Engines:

  torch  transformers AutoModel, attn_implementation="sdpa", under torch.inference_mode;
         torch.set_num_threads(2). Tokenizer: transformers' AutoTokenizer.
  ort    the same BertModel exported once by torch.onnx.export (dynamo exporter, opset 18,
         dynamic batch and sequence axes) to .cache/bench/, run by onnxruntime's
         CPUExecutionProvider with graph optimisation level ALL, intra_op_num_threads=2,
         inter_op_num_threads=1. The export runs in a child process, so this process never
         imports torch (transformers imports it, ~0.5 GiB of RSS): it tokenizes with the
         `tokenizers` package directly, configured as transformers configures it.
  ort-fused  as ort, but the graph ONNX Runtime's own BERT recipe makes: TorchScript exporter,
         then onnxruntime.transformers.optimizer's fused Attention, LayerNorm and Gelu kernels
         (see VARIANTS). The strongest ONNX Runtime baseline for this model.
  sgemm  the 2-thread SGEMM peak: torch.mm on 2048x2048 float32, median of several runs.
"""

import argparse
import json
import math
import pathlib
import resource
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
THREADS = 2
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def rss_bytes() -> int:
    """Resident set now (/proc/self/statm), to tell the libraries' share of the peak."""
    pages = int(pathlib.Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


# --- engines: each returns (run, extra JSON fields); run(texts, max_length) returns
# (embeddings [num_texts, hidden] f32, real tokens, padded tokens) of one batch


def torch_engine(model_dir: pathlib.Path):
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(THREADS)
    torch.set_num_interop_threads(1)
    import_rss = rss_bytes()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="sdpa").eval()

    def run(texts, max_length):
        enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state  # [batch, seq, hidden]
            # sentence_transformers.models.Pooling, pooling_mode_mean_tokens
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            emb = torch.nn.functional.normalize(emb, p=2, dim=1)
        am = enc["attention_mask"]
        return emb.numpy(), int(am.sum()), int(am.numel())

    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "import_rss_bytes": import_rss}
    return run, versions


# Two ONNX graphs of the same BertModel (output last_hidden_state; dynamic batch and sequence):
#   ort        torch.onnx.export's default (dynamo) exporter, opset 18, sdpa attention;
#              onnxruntime's own graph optimisations (level ALL) at load time
#   ort-fused  what ONNX Runtime's BERT recipe does (and Optimum with it): the TorchScript exporter
#              (dynamo=False, opset 17, eager attention), then onnxruntime.transformers.optimizer,
#              which fuses Attention, EmbedLayerNormalization, SkipLayerNormalization and
#              BiasGelu; it finds no Attention pattern in the dynamo graph, hence the other exporter
VARIANTS = {"ort": ("dynamo", 18), "ort-fused": ("torchscript+fusion", 17)}


def onnx_path(model_dir: pathlib.Path, engine: str) -> pathlib.Path:
    _, opset = VARIANTS[engine]
    suffix = ".fused" if engine == "ort-fused" else ""
    return ROOT / ".cache/bench" / f"{model_dir.name}.opset{opset}{suffix}.onnx"


def onnx_stamp(model_dir: pathlib.Path, engine: str) -> dict:
    """What the cached export was made from; a different stamp makes a new export."""
    from importlib.metadata import version

    st = (model_dir / "model.safetensors").stat()
    exporter, opset = VARIANTS[engine]
    return {
        "model": str(model_dir.resolve()),
        "weights_bytes": st.st_size,
        "weights_mtime_ns": st.st_mtime_ns,
        "exporter": exporter,
        "opset": opset,
        "torch": version("torch"),
        "transformers": version("transformers"),
        "onnxruntime": version("onnxruntime"),
    }


def export_onnx(model_dir: pathlib.Path, engine: str):
    """BertModel -> ONNX (last_hidden_state), dynamic batch and sequence axes."""
    import torch
    from transformers import AutoModel

    out = onnx_path(model_dir, engine)
    exporter, opset = VARIANTS[engine]
    attn = "sdpa" if engine == "ort" else "eager"
    model = AutoModel.from_pretrained(str(model_dir), attn_implementation=attn).eval()

    class LastHidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    # Example inputs with batch 2 and a padded second row, so that nothing specialises on them.
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.long)
    mask = (ids != 0).long()
    types = torch.zeros_like(ids)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.onnx")
    if engine == "ort":
        batch = torch.export.Dim("batch")
        seq = torch.export.Dim("sequence", max=512)
        torch.onnx.export(
            LastHidden(model).eval(),
            (ids, mask, types),
            str(partial),
            input_names=INPUT_NAMES,
            output_names=["last_hidden_state"],
            dynamic_shapes={name: {0: batch, 1: seq} for name in INPUT_NAMES},
            opset_version=opset,
            dynamo=True,
            external_data=False,
        )
    else:
        from onnxruntime.transformers import optimizer

        traced = out.with_suffix(".traced.onnx")
        torch.onnx.export(
            LastHidden(model).eval(),
            (ids, mask, types),
            str(traced),
            input_names=INPUT_NAMES,
            output_names=["last_hidden_state"],
            dynamic_axes={name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES},
            opset_version=opset,
            dynamo=False,
        )
        cfg = model.config
        fused = optimizer.optimize_model(
            str(traced),
            model_type="bert",
            num_heads=cfg.num_attention_heads,
            hidden_size=cfg.hidden_size,
            opt_level=0,  # fusions only; onnxruntime applies its own at load time
        )
        stats = fused.get_fused_operator_statistics()
        print(f"fused operators: { {k: v for k, v in stats.items() if v} }", file=sys.stderr)
        if stats.get("Attention", 0) != cfg.num_hidden_layers:
            print("warning: onnxruntime fused no Attention in some layers", file=sys.stderr)
        fused.save_model_to_file(str(partial))
        traced.unlink()
    partial.replace(out)
    out.with_suffix(".json").write_text(json.dumps(onnx_stamp(model_dir, engine), indent=1) + "\n")


def ensure_onnx(model_dir: pathlib.Path, engine: str) -> pathlib.Path:
    path = onnx_path(model_dir, engine)
    stamp_file = path.with_suffix(".json")
    if path.is_file() and stamp_file.is_file():
        if json.loads(stamp_file.read_text()) == onnx_stamp(model_dir, engine):
            return path
    print(f"exporting {model_dir} to {path} (once)", file=sys.stderr)
    subprocess.run(
        [sys.executable, __file__, "--export", engine, "--model", str(model_dir)],
        check=True,
        stdout=sys.stderr,
    )
    return path


def hf_tokenizer(model_dir: pathlib.Path, max_length: int):
    """tokenizer.json configured as transformers' fast tokenizer configures it for
    tok(texts, padding=True, truncation=True, max_length=max_length): the truncation at 128 and
    the fixed padding to 128 baked into all-MiniLM-L6-v2's tokenizer.json are replaced."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    pad = cfg.get("pad_token", "[PAD]")
    tok.no_truncation()
    tok.no_padding()
    tok.enable_truncation(max_length=max_length, strategy="longest_first")
    tok.enable_padding(pad_id=tok.token_to_id(pad), pad_token=pad, pad_type_id=0)  # to longest
    return tok


def ort_engine(model_dir: pathlib.Path, engine: str):
    import numpy as np
    import onnxruntime as ort
    import tokenizers

    path = ensure_onnx(model_dir, engine)
    import_rss = rss_bytes()
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    toks = {}

    def run(texts, max_length):
        tok = toks.get(max_length) or toks.setdefault(max_length, hf_tokenizer(model_dir, max_length))
        encs = tok.encode_batch(texts)
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        types = np.array([e.type_ids for e in encs], dtype=np.int64)
        (hidden,) = session.run(
            None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        )  # [batch, seq, hidden]
        m = mask[..., None].astype(hidden.dtype)
        emb = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return emb, int(mask.sum()), int(mask.size)

    versions = {"onnxruntime": ort.__version__, "tokenizers": tokenizers.__version__,
                "onnx_file": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
                "import_rss_bytes": import_rss}
    return run, versions


# --- measurement


def bench(run, texts, max_length, warmup: int, min_runs: int, seconds: float, runs: int | None):
    t_warm = None
    for _ in range(max(warmup, 1)):
        t0 = time.perf_counter()
        emb, real, padded = run(texts, max_length)
        t_warm = time.perf_counter() - t0
    if runs is None:
        runs = max(min_runs, math.ceil(seconds / max(t_warm, 1e-6)))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(texts, max_length)
        times.append(time.perf_counter() - t0)
    return times, emb, real, padded


def sgemm(n: int = 2048, runs: int = 10):
    import torch

    torch.set_num_threads(THREADS)
    torch.set_num_interop_threads(1)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    c = torch.empty(n, n)
    for _ in range(3):
        torch.mm(a, b, out=c)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        times.append(time.perf_counter() - t0)
    flop = 2 * n**3
    med = statistics.median(times)
    return {
        "engine": "sgemm",
        "n": n,
        "threads": THREADS,
        "median_s": med,
        "min_s": min(times),
        "runs": runs,
        "gflop_per_s": flop / med / 1e9,
        "gflop_per_s_best": flop / min(times) / 1e9,
        "peak_rss_bytes": peak_rss_bytes(),
        "torch": torch.__version__,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default=str(ROOT / ".cache/bench/workloads.json"))
    ap.add_argument("--workload", choices=["a", "b", "c", "s"])
    ap.add_argument("--engine", choices=["torch", *VARIANTS, "sgemm"])
    ap.add_argument("--model", default=str(ROOT / "models/all-MiniLM-L6-v2"))
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    ap.add_argument("--seconds", type=float, default=5.0, help="timed runs to fill about this long")
    ap.add_argument("--min-runs", type=int, default=5)
    ap.add_argument("--runs", type=int, help="exact number of timed runs (overrides --seconds)")
    ap.add_argument("--export", choices=list(VARIANTS), help=argparse.SUPPRESS)  # child of ort*
    args = ap.parse_args()
    model_dir = pathlib.Path(args.model)

    if args.export:
        export_onnx(model_dir, args.export)
        return
    if args.engine is None:
        ap.error("--engine is required")
    if args.engine == "sgemm":
        print(json.dumps(sgemm()), flush=True)
        return
    if args.workload is None:
        ap.error("--workload is required for torch and ort*")
    if not (model_dir / "config.json").is_file():
        sys.exit(f"error: {model_dir} has no config.json: run scripts/fetch-models")
    doc = json.loads(pathlib.Path(args.workloads).read_text())
    w = doc["workloads"][args.workload]
    texts, max_length = w["texts"], w["max_length"]

    if args.engine == "torch":
        run, versions = torch_engine(model_dir)
    else:
        run, versions = ort_engine(model_dir, args.engine)
    times, emb, real, padded = bench(
        run, texts, max_length, args.warmup, args.min_runs, args.seconds, args.runs
    )
    if "total_tokens" in w and real != w["total_tokens"]:
        print(
            f"warning: tokenized {real} real tokens, the workload file says {w['total_tokens']}",
            file=sys.stderr,
        )
    med = statistics.median(times)
    out = {
        "engine": args.engine,
        "workload": args.workload,
        "median_s": med,
        "min_s": min(times),
        "runs": len(times),
        "sentences_per_s": len(texts) / med,
        "tokens_per_s": real / med,
        "peak_rss_bytes": peak_rss_bytes(),
        "embedding0": [round(float(x), 6) for x in emb[0][:4]],
        "num_texts": len(texts),
        "real_tokens": real,
        "padded_tokens": padded,
        "threads": THREADS,
        "timed": "tokenize + forward + mean pool + normalize",
        **versions,
    }
    if "flops" in w:
        out["useful_gflop_per_s"] = w["flops"] / med / 1e9
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
