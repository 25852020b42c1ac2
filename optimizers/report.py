"""The optimizer's report: speed-ups against PyTorch eager, as a terminal table,
markdown (for docs/benchmarks.md) and JSON (the manifest itself)."""

from __future__ import annotations

from rich.table import Table


def with_speedups(rows: list[dict]) -> list[dict]:
    """Add ``speedup_vs_pytorch`` to each timing (when a PyTorch eager row exists)."""
    base = next((r for r in rows if r["stage"].startswith("pytorch")), None)
    ref = {t["batch"]: t["latency_ms"] for t in base["timings"]} if base else {}
    for row in rows:
        for t in row["timings"]:
            if t["batch"] in ref:
                t["speedup_vs_pytorch"] = ref[t["batch"]] / t["latency_ms"]
    return rows


#: the figures shown in tables (the manifest holds them all)
SHOWN = (
    "max_abs_diff",
    "worst_auc_change",
    "top10_agreement",
    "recall_at_100_change",
    "min_psnr_db",
)


def _figures(parity: dict) -> str:
    return ", ".join(f"{k} {parity[k]:.4g}" for k in SHOWN if k in parity)


def _cell(t: dict) -> str:
    text = f"{t['latency_ms']:.3g} ms"
    if "speedup_vs_pytorch" in t:
        text += f" ({t['speedup_vs_pytorch']:.1f}x)"
    return text


def passes_table(manifest: dict) -> Table:
    table = Table(title=f"{manifest['model']}: passes ({manifest['target']})")
    for col in ("pass", "status", "parity", "detail"):
        table.add_column(col)
    for p in manifest["passes"]:
        detail = "; ".join([p["detail"], *p["failures"]]).strip("; ")
        table.add_row(p["name"], p["status"], _figures(p["parity"]), detail)
    return table


def bench_table(manifest: dict) -> Table | None:
    b = manifest.get("benchmark")
    if not b:
        return None
    table = Table(
        title=f"{manifest['model']}: median latency per batch (speed-up vs PyTorch eager), "
        f"{b['threads']} intra-op thread(s)"
    )
    table.add_column("stage")
    for batch in b["batch_sizes"]:
        table.add_column(f"batch {batch}", justify="right")
    for row in b["rows"]:
        table.add_row(row["stage"], *(_cell(t) for t in row["timings"]))
    return table


def markdown(manifest: dict) -> str:
    lines = [
        f"### {manifest['model']} (target {manifest['target']}, version {manifest.get('version')})",
        "",
    ]
    lines += ["| pass | status | parity | detail |", "|---|---|---|---|"]
    for p in manifest["passes"]:
        detail = "; ".join([p["detail"], *p["failures"]]).strip("; ")
        lines.append(f"| {p['name']} | {p['status']} | {_figures(p['parity'])} | {detail} |")
    b = manifest.get("benchmark")
    if b:
        lines += [
            "",
            f"Median latency per call, {b['threads']} intra-op thread(s); "
            "in brackets the speed-up against PyTorch eager:",
            "",
        ]
        lines.append("| stage | " + " | ".join(f"batch {x}" for x in b["batch_sizes"]) + " |")
        lines.append("|---|" + "---:|" * len(b["batch_sizes"]))
        for row in b["rows"]:
            lines.append(
                f"| {row['stage']} | " + " | ".join(_cell(t) for t in row["timings"]) + " |"
            )
    t = manifest.get("tuning")
    if t:
        splits = ", ".join(
            f"{c['instances']}x{c['threads']}t {c['rows_per_s']:,.0f} rows/s"
            for c in t["candidates"]
        )
        lines += [
            "",
            f"Tuning (instances x threads, at the largest batch): {splits}; chosen "
            f"{t['instances']} instance(s) x {t['threads']} thread(s), preferred batch "
            f"sizes {list(t['preferred_batch_sizes'])}.",
        ]
    return "\n".join(lines) + "\n"
