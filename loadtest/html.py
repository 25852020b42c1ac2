"""HTML reports for people: the table, plus plots (matplotlib, inlined as SVG) of
throughput and latency percentiles over time, the latency spectrum (HdrHistogram's
percentile distribution) and the error rate. One page per run or per comparison;
no network needed to open it."""

from __future__ import annotations

import io
import json
from pathlib import Path

from jinja2 import Environment, select_autoescape

from loadtest.recorder import PERCENTILES
from loadtest.report import chosen_step, compare_table, steps_table, total

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; }
 pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 12px; }
 figure { margin: 1em 0; } h2 { border-bottom: 1px solid #ddd; }
</style></head><body>
<h1>{{ title }}</h1>
<p>{{ subtitle }}</p>
<pre>{{ table }}</pre>
{% for fig in figures %}<figure>{{ fig | safe }}</figure>{% endfor %}
<h2>Plans</h2>
{% for plan in plans %}<pre>{{ plan }}</pre>{% endfor %}
</body></html>
"""


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _timeline(report: dict) -> list[tuple[float, dict, float]]:
    """(seconds since the first step began, interval, its step's rate) for every interval."""
    points, offset = [], 0.0
    for step in report["steps"]:
        for iv in step["timeline"]:
            points.append((offset + iv["second"] + 1, iv, step["target_rate"]))
        offset += len(step["timeline"])
    return points


def over_time(report: dict) -> str:
    plt = _plt()
    points = _timeline(report)
    fig, (rate_ax, lat_ax, err_ax) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    xs = [t for t, _, _ in points]
    rate_ax.plot(xs, [iv["ok"] for _, iv, _ in points], label="OK / s")
    rate_ax.step(xs, [r for _, _, r in points], where="post", linestyle="--", label="target")
    rate_ax.set_ylabel("requests / s")
    rate_ax.legend()
    for p in PERCENTILES:
        lat_ax.plot(xs, [iv[f"p{p:g}_ms"] for _, iv, _ in points], label=f"p{p:g}")
    lat_ax.plot(xs, [iv["max_ms"] for _, iv, _ in points], label="max", linestyle=":")
    lat_ax.set_yscale("log")
    lat_ax.set_ylabel("latency ms (from scheduled start)")
    lat_ax.legend(ncol=5, fontsize=8)
    err_ax.plot(
        xs,
        [1 - iv["ok"] / iv["completed"] if iv["completed"] else 0 for _, iv, _ in points],
        color="tab:red",
    )
    err_ax.set_ylabel("error rate")
    err_ax.set_xlabel("seconds")
    fig.suptitle(report["label"])
    return _svg(fig)


def spectrum(reports: list[dict]) -> str:
    """Latency by percentile on HdrHistogram's 1 / (1 - p) axis, one line per step/report."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 5))
    for report in reports:
        steps = [chosen_step(report)] if len(reports) > 1 else report["steps"]
        for step in steps:
            hist = total(step).histogram
            if hist.get_total_count() == 0:
                continue
            xs, ys = [], []
            for item in hist.get_percentile_iterator(5):
                p = item.percentile_level_iterated_to / 100
                if p >= 1:
                    break
                xs.append(1 / (1 - p))
                ys.append(item.value_iterated_to / 1000)
            label = report["label"] if len(reports) > 1 else f"{step['target_rate']:g}/s"
            ax.plot(xs, ys, label=label)
    ax.set_xscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000]
    ax.set_xticks(ticks, ["0%", "50%", "90%", "99%", "99.9%", "99.99%"])
    ax.set_yscale("log")
    ax.set_ylabel("latency ms")
    ax.set_xlabel("percentile")
    ax.set_title("latency spectrum")
    ax.legend(fontsize=8)
    return _svg(fig)


def _text(table) -> str:
    from rich.console import Console

    console = Console(width=150, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def _page(title: str, subtitle: str, table: str, figures: list[str], plans: list) -> str:
    env = Environment(autoescape=select_autoescape(default=True))
    return env.from_string(PAGE).render(
        title=title, subtitle=subtitle, table=table, figures=figures, plans=plans
    )


def _plan_text(report: dict) -> str:
    return f"{report['label']}\n" + json.dumps(
        {"plan": report["plan"], "machine": report["machine"], "created": report["created"]},
        indent=1,
    )


def render_run(report: dict, path: Path) -> Path:
    figures = [over_time(report), spectrum([report])]
    subtitle = (
        f"{report['plan']['scenario']['name']} against {report['plan']['target']}, "
        f"{report['plan']['arrivals']} arrivals, {report['plan']['processes']} process(es)"
    )
    path.write_text(
        _page(report["label"], subtitle, _text(steps_table(report)), figures, [_plan_text(report)])
    )
    return path


def render_compare(reports: list[dict], path: Path) -> Path:
    figures = [spectrum(reports)] + [over_time(r) for r in reports]
    path.write_text(
        _page(
            "tenfold load comparison",
            f"{len(reports)} reports",
            _text(compare_table(reports)),
            figures,
            [_plan_text(r) for r in reports],
        )
    )
    return path
