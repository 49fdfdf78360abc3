"""Plots of a comparison record (``comparison.json``), drawn FROM the record, never from raw runs.

Figures are built with matplotlib's object API on the Agg canvas, so nothing here touches a
display or pyplot's global state; matplotlib is imported inside the functions.

A plot is decoration on a result, never a condition for it: :func:`write_plots` draws each figure
on its own, logs a figure that fails and returns the failure, so the caller still writes
``comparison.json`` and ``comparison.md`` (and records the failure in ``plot_errors``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

SUCCESS_PNG = "success_rates.png"
DISCORDANT_PNG = "discordant_pairs.png"

log = logging.getLogger(__name__)


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def error_bar(rate: float, ci95: list[float] | tuple[float, float]) -> tuple[float, float]:
    """The lengths of an error bar below and above ``rate``, never negative.

    statsmodels' Wilson interval puts the lower bound of 0/n at 2.8e-17 (n = 7, 9, 14, 28, ...) and
    the upper bound of n/n at 0.9999999999999999, so ``rate - low`` is -2.8e-17 for a category at 0%
    and matplotlib's ``errorbar`` raises on a negative ``yerr``. Bounds are clipped to [0, 1] and to
    the rate itself before subtracting.
    """
    low = min(max(float(ci95[0]), 0.0), rate)
    high = max(min(float(ci95[1]), 1.0), rate)
    return rate - low, high - rate


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
            below, above = error_bar(rate, b["ci95"])
            xs.append(g - 0.4 + width * (k + 0.5))
            ys.append(rate)
            lo.append(below)
            hi.append(above)
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


def write_plots(comparison: dict[str, Any], out_dir: str | Path) -> tuple[list[Path], list[dict[str, str]]]:
    """Write the success-rate and discordant-pair PNGs into ``out_dir``, each on its own.

    Returns:
        The paths written, and one ``{"plot", "error"}`` record per figure that failed (logged as a
        warning). A failing figure never raises: the comparison it decorates must still be written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = [(SUCCESS_PNG, success_rates_figure)]
    if comparison["pairs"]:
        figures.append((DISCORDANT_PNG, discordant_figure))
    paths: list[Path] = []
    errors: list[dict[str, str]] = []
    for name, draw in figures:
        try:
            draw(comparison).savefig(out / name)
        except Exception as exc:  # any plotting failure is reported, never fatal
            log.warning("plot %s not written (%s: %s); comparison.json and comparison.md are unaffected",
                        name, type(exc).__name__, exc)
            errors.append({"plot": name, "error": f"{type(exc).__name__}: {exc}"})
            (out / name).unlink(missing_ok=True)  # no half-written PNG beside the records
        else:
            paths.append(out / name)
    return paths, errors
