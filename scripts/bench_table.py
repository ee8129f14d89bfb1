#!/usr/bin/env python3
"""Turns the encoder benchmark's JSON lines into one table (issue 5), as text and as markdown.

    python3 scripts/bench_table.py --workloads .cache/bench/workloads.json RESULTS.jsonl

RESULTS.jsonl holds one JSON line per run, as printed by `girder bench` (engine "girder") and by
scripts/bench_reference.py (engines torch, ort, ort-fused, and sgemm for the peak). Lines that
are not JSON objects are ignored. Per workload and engine the table gives: median time, texts/s,
real (non-pad) tokens/s, GFLOP/s of useful work (the workload file's FLOPs over the median time),
that as a percentage of the measured 2-thread SGEMM peak, girder's speed-up over each peer
(peer median / girder median: above 1 means girder is faster), and peak RSS. A last row per
workload, "limit", is the time its useful FLOPs would take at the SGEMM peak.

Standard library only.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys

PEERS = ["torch", "ort", "ort-fused"]
ORDER = ["girder", *PEERS]


def read_results(path):
    rows = []
    for line in pathlib.Path(path).read_text().splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"warning: skipping a line that is not JSON: {line[:80]}", file=sys.stderr)
    return rows


def cpu_name():
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fmt_time(s):
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def fmt_rate(x):
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def build_rows(results, workloads):
    sgemm = [r for r in results if r.get("engine") == "sgemm"]
    peak = sgemm[-1]["gflop_per_s"] if sgemm else None
    runs = {}
    for r in results:
        if r.get("engine") in ORDER and r.get("workload") in workloads:
            runs[(r["workload"], r["engine"])] = r  # the last line wins
    header = ["workload", "engine", "median", "texts/s", "tokens/s", "GFLOP/s", "% peak",
              *[f"vs {p}" for p in PEERS], "peak RSS MiB"]
    rows = []
    notes = []
    for w, spec in workloads.items():
        flops = spec["flops"]
        tokens = spec["total_tokens"]
        present = [e for e in ORDER if (w, e) in runs]
        if not present:
            continue
        for e in present:
            r = runs[(w, e)]
            med = r["median_s"]
            gflops = flops / med / 1e9
            row = [w, e, fmt_time(med), fmt_rate(spec["num_texts"] / med), fmt_rate(tokens / med),
                   f"{gflops:.1f}", f"{100 * gflops / peak:.0f}%" if peak else "-"]
            for p in PEERS:
                if e == "girder" and (w, p) in runs:
                    row.append(f"{runs[(w, p)]['median_s'] / med:.2f}x")
                else:
                    row.append("")
            rss = r.get("peak_rss_bytes")
            row.append(f"{rss / 2**20:.0f}" if rss else "-")
            rows.append(row)
            real = r.get("real_tokens", r.get("tokens"))
            if real is not None and real != tokens:
                notes.append(f"{w}/{e}: counted {real} real tokens, the workload has {tokens}")
        if peak:
            t = flops / (peak * 1e9)
            rows.append([w, "limit", fmt_time(t), fmt_rate(spec["num_texts"] / t),
                         fmt_rate(tokens / t), f"{peak:.1f}", "100%", *[""] * len(PEERS), ""])
        # Cross-check: the first values of text 0's embedding, against torch's.
        ref = runs.get((w, "torch"), {}).get("embedding0")
        for e in present:
            emb = runs[(w, e)].get("embedding0")
            if ref and emb and e != "torch":
                diff = max(abs(a - b) for a, b in zip(ref, emb))
                if diff > 1e-4:
                    notes.append(f"{w}/{e}: embedding of text 0 differs from torch's by {diff:.2e}")
    # Drop peer columns that no girder row uses, so a run without girder stays narrow.
    keep = [i for i, h in enumerate(header)
            if not h.startswith("vs ") or any(r[i] for r in rows)]
    header = [header[i] for i in keep]
    rows = [[r[i] for i in keep] for r in rows]
    return header, rows, peak, notes


def text_table(header, rows):
    right = [h not in ("workload", "engine") for h in header]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right))

    out = [line(header), line(["-" * w for w in widths])]
    prev = None
    for r in rows:
        if prev is not None and r[0] != prev:
            out.append("")
        out.append(line(r))
        prev = r[0]
    return "\n".join(out)


def markdown_table(header, rows):
    right = [h not in ("workload", "engine") for h in header]
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    for r in rows:
        out.append("| " + " | ".join(c if c else " " for c in r) + " |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="JSON lines from girder bench and bench_reference.py")
    ap.add_argument("--workloads", default=".cache/bench/workloads.json")
    args = ap.parse_args()

    doc = json.loads(pathlib.Path(args.workloads).read_text())
    workloads = doc["workloads"]
    results = read_results(args.results)
    header, rows, peak, notes = build_rows(results, workloads)
    if not rows:
        sys.exit("error: no benchmark results to show")

    versions = {}
    for r in results:
        for k in ("girder", "torch", "transformers", "onnxruntime", "tokenizers"):
            if k in r and isinstance(r[k], str):
                versions.setdefault(k, r[k])
    model = doc.get("model", {})
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{cpu_name()}, {os.cpu_count()} logical CPUs, 2 threads per engine"
    peak_txt = f"{peak:.1f} GFLOP/s (torch.mm 2048x2048 f32, 2 threads)" if peak else "not measured"
    about = [
        f"model: {pathlib.Path(model.get('path', '?')).name} "
        f"({model.get('num_hidden_layers')} layers, hidden {model.get('hidden_size')}), f32",
        f"machine: {machine}",
        f"SGEMM peak: {peak_txt}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"date: {date}",
        "timed: tokenize + forward + mean pool + L2 normalise, median of >= 5 runs;"
        " GFLOP/s counts useful (non-pad) work only",
    ]
    shown = {r[0] for r in rows}
    descr = [f"({w}) {s['description']}: {s['total_tokens']} real tokens,"
             f" {s['flops'] / 1e9:.1f} GFLOP" for w, s in workloads.items() if w in shown]

    print("\n".join(about))
    print("\n".join(descr))
    print()
    print(text_table(header, rows))
    for n in notes:
        print(f"note: {n}")
    print()
    print("Markdown:")
    print()
    for a in about:
        print(f"- {a}")
    for d in descr:
        print(f"- {d}")
    print()
    print(markdown_table(header, rows))
    for n in notes:
        print(f"\nNote: {n}")


if __name__ == "__main__":
    main()
