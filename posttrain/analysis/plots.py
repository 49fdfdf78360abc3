"""Plots of a comparison record (``comparison.json``), drawn FROM the record, never from raw runs.

Figures are built with matplotlib's object API on the Agg canvas, so nothing here touches a
display or pyplot's global state; matplotlib is imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SUCCESS_PNG = "success_rates.png"
DISCORDANT_PNG = "discordant_pairs.png"


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def success_rates_figure(comparison: dict[str, Any]) -> Any:
    """Grouped bars: each model's success rate with its Wilson 95% interval, overall and per category."""
    models = [m["model"] for m in comparison["models"]]
    cats = comparison["per_category"]["categories"]
    groups = ["overall", *cats]
    blocks = {m["model"]: {"overall": m, **comparison["per_category"]["models"].get(m["model"], {})}
              for m in comparison["models"]}
    fig = _figure(min(14.0, 2.0 + len(groups) * (0.9 + 0.3 * len(models))), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(models))
    for k, model in enumerate(models):
        xs, ys, lo, hi = [], [], [], []
        for g, group in enumerate(groups):
            b = blocks[model].get(group)
            if not b or b.get("success_rate") is None:
                continue
            rate = b["success_rate"]
            xs.append(g - 0.4 + width * (k + 0.5))
            ys.append(rate)
            lo.append(rate - b["ci95"][0])
            hi.append(b["ci95"][1] - rate)
        ax.bar(xs, ys, width=width * 0.95, yerr=[lo, hi], capsize=3, label=model)
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (Wilson 95% CI)")
    ax.set_title("Success rate per model")
    ax.axhline(comparison["thresholds"]["base_max_success"], color="grey", ls=":", lw=1, label="gate: base max")
    ax.axhline(comparison["thresholds"]["instruct_min_success"], color="grey", ls="--", lw=1,
               label="gate: instruct min")
    if models:
        ax.legend(fontsize="small", ncols=min(3, len(models)))
    return fig


def discordant_figure(comparison: dict[str, Any]) -> Any:
    """Per pair of models, the discordant items: passed by a only vs by b only (with McNemar p)."""
    pairs = comparison["pairs"]
    fig = _figure(max(5.0, 1.6 * len(pairs) + 2), 3.8)
    ax = fig.add_subplot()
    xs = range(len(pairs))
    ax.bar([x - 0.2 for x in xs], [p["a_only"] for p in pairs], width=0.4, label="a only passes")
    ax.bar([x + 0.2 for x in xs], [p["b_only"] for p in pairs], width=0.4, label="b only passes")
    for x, p in zip(xs, pairs, strict=True):
        top = max(p["a_only"], p["b_only"])
        label = f"p={p['mcnemar_p']:.2g}" + (f"\ncluster p={p['cluster_p']:.2g}" if p.get("cluster_p") is not None else "")
        ax.annotate(label, (x, top), ha="center", va="bottom", fontsize="small", xytext=(0, 3),
                    textcoords="offset points")
    ax.set_xticks(list(xs), [f"a={p['a']}\nb={p['b']}" for p in pairs], fontsize="small")
    ax.set_ylabel("discordant items")
    ax.set_ylim(bottom=0, top=max([1] + [max(p["a_only"], p["b_only"]) for p in pairs]) * 1.35)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Discordant pairs (item-level exact McNemar p, cluster sign-flip p)")
    if pairs:
        ax.legend(fontsize="small")
    return fig


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes (for notebooks: ``IPython.display.Image(data=png_bytes(fig))``)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_plots(comparison: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write the success-rate and discordant-pair PNGs into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / SUCCESS_PNG]
    success_rates_figure(comparison).savefig(paths[0])
    if comparison["pairs"]:
        paths.append(out / DISCORDANT_PNG)
        discordant_figure(comparison).savefig(paths[1])
    return paths
