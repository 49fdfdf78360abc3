"""``posttrain-dashboard``: the project's W&B workspace, built in code with ``wandb-workspaces``.

Five sections, each on the metric names that posttrain/tracking/tracker.py logs (docs/tracking.md):

- **Budget**: the ledger's cumulative spend against the cap (x = ``budget/entry``, the ledger row),
  GPU-hours and API dollars, spend per run and per sweep.
- **Losses**: SFT and DPO ``train/loss`` on one ``train/global_step`` axis, DPO reward margins and
  accuracies, the final margin/accuracy per negative type, the DPO step-0 check.
- **Success rates**: each eval run's success rate with its Wilson 95% bounds and its error count.
- **Comparison**: the sweep comparison run's ``comparison/models`` and ``comparison/pairs`` tables.
- **Transcripts**: the eval jobs' ``eval/transcripts`` tables (conversation, replies, checks, verdict,
  category, template, spot-check verdict), filterable in the W&B UI.

Online (``WANDB_MODE=online`` or unset, after ``wandb login``) it saves the workspace to W&B and
prints its URL. With ``--dry-run``, or when ``WANDB_MODE`` is offline/disabled (the default here),
it writes the definition to a JSON file (the workspace spec that would be saved, plus a list of
every panel and the metrics or tables it names) and prints the command that pushes it later.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from posttrain.tracking.tracker import ATLAS_TABLES, COMPARISON_TABLES, TRANSCRIPTS_KEY

SECTIONS = ("Budget", "Losses", "Success rates", "Comparison", "Transcripts")


def _ws() -> tuple[Any, Any]:
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError as exc:  # an optional extra: say how to get it
        raise SystemExit("posttrain-dashboard needs wandb-workspaces: pip install -e '.[dashboard]' "
                         f"(or `make setup`, whose EXTRAS include it). Nothing was written. ({exc})") from exc
    return ws, wr


def build_workspace(project: str, entity: str, name: str = "posttrain") -> Any:
    """The workspace (``wandb_workspaces.workspaces.Workspace``); builds objects only, no network."""
    from posttrain.training.negatives import CONTENT_TYPES  # the default mix (leaky types are opt-in)

    ws, wr = _ws()

    def line(title: str, x: str, y: list[str]) -> Any:
        return wr.LinePlot(title=title, x=x, y=y)

    def bars(title: str, metrics: list[str]) -> Any:
        return wr.BarPlot(title=title, metrics=metrics, orientation="v")

    def table(key: str) -> Any:
        return wr.WeavePanelSummaryTable(table_name=key, layout=wr.Layout(w=24, h=12))

    budget = ws.Section(name="Budget", is_open=True, panels=[
        line("Cumulative spend vs cap (USD)", "budget/entry", ["budget/cum_usd", "budget/cap_usd"]),
        line("Remaining budget (USD)", "budget/entry", ["budget/remaining_usd"]),
        line("Cumulative GPU-hours", "budget/entry", ["budget/cum_gpu_hours"]),
        line("Cumulative GPU and API dollars", "budget/entry", ["budget/cum_gpu_usd", "budget/cum_api_usd"]),
        bars("Spend per run (USD)", ["budget/run_gpu_usd", "budget/run_api_usd", "budget/run_usd"]),
        bars("Spend per sweep (USD, comparison runs)", ["budget/sweep_gpu_usd", "budget/sweep_api_usd",
                                                        "budget/sweep_usd"]),
    ])
    losses = ws.Section(name="Losses", is_open=True, panel_settings=ws.SectionPanelSettings(x_axis="train/global_step"),
                        panels=[
        line("Training loss (SFT and DPO)", "train/global_step", ["train/loss"]),
        line("DPO reward margin", "train/global_step", ["train/rewards/margins"]),
        line("DPO reward accuracy", "train/global_step", ["train/rewards/accuracies"]),
        bars("DPO final margin per negative type", [f"final/margins/{t}" for t in CONTENT_TYPES]),
        bars("DPO final accuracy per negative type", [f"final/accuracies/{t}" for t in CONTENT_TYPES]),
        bars("DPO step-0 check (loss = ln 2, margin = 0)", ["step0/loss", "step0/rewards_margins", "step0/passed"]),
    ])
    rates = ws.Section(name="Success rates", is_open=True, panels=[
        bars("Success rate with Wilson 95% interval", ["success_rate_ci95_low", "success_rate",
                                                       "success_rate_ci95_high"]),
        bars("Judge errors (never counted as pass or fail)", ["n_error"]),
        wr.MarkdownPanel(markdown="Success rate = pass / (pass + fail) per eval run; the bars either side are the "
                                  "Wilson 95% bounds. The paired tests between models are in the Comparison "
                                  "section (McNemar, Holm-adjusted p, Cohen's h)."),
    ])
    comparison = ws.Section(name="Comparison", is_open=True, panels=[table(k) for k in COMPARISON_TABLES])
    transcripts = ws.Section(name="Transcripts", is_open=True, panels=[table(TRANSCRIPTS_KEY)])
    atlas = ws.Section(name="Capability atlas", is_open=True, panels=[
        *(table(k) for k in ATLAS_TABLES),
        wr.MarkdownPanel(markdown="One row per capability: base (its best format, chosen on the train split) vs "
                                  "instruct on the test split, with cluster 95% intervals, the gap gate's verdict "
                                  "and the Holm-adjusted p across capabilities. atlas/cells is the heatmap: every "
                                  "model@format on both splits (docs/comparisons.md, \"The capability atlas\")."),
    ])
    return ws.Workspace(entity=entity, project=project, name=name,
                        sections=[budget, losses, rates, comparison, transcripts, atlas])


def panel_manifest(workspace: Any) -> list[dict[str, Any]]:
    """Every panel of ``workspace``: section, kind, title and the metrics or tables it names."""
    out = []
    for section in workspace.sections:
        for p in section.panels:
            metrics: list[str] = []
            tables: list[str] = []
            for attr in ("x", "y", "metrics", "metric"):
                v = getattr(p, attr, None)
                metrics += [str(m) for m in (v if isinstance(v, list) else [v]) if m]
            if getattr(p, "table_name", None):
                tables.append(p.table_name)
            out.append({"section": section.name, "kind": type(p).__name__, "title": getattr(p, "title", None),
                        "metrics": metrics, "tables": tables})
    return out


def definition(workspace: Any) -> dict[str, Any]:
    """The file a dry run writes: the exact view spec W&B would store, and the panel manifest."""
    spec = workspace._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")
    return {"project": workspace.project, "entity": workspace.entity, "name": workspace.name,
            "sections": [s.name for s in workspace.sections], "panels": panel_manifest(workspace),
            "wandb_workspaces_spec": spec}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``posttrain-dashboard``."""
    parser = argparse.ArgumentParser(prog="posttrain-dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="posttrain", help="W&B project (tracking.project)")
    parser.add_argument("--entity", default=None, help="W&B entity; online default: your default entity")
    parser.add_argument("--name", default="posttrain", help="the workspace's name in the W&B UI")
    parser.add_argument("--dry-run", action="store_true", help="write the definition to --out, save nothing")
    parser.add_argument("--out", type=Path, default=Path("dashboard.json"), help="where a dry run writes")
    args = parser.parse_args(argv)

    mode = os.environ.get("WANDB_MODE", "online")
    offline = args.dry_run or mode in ("offline", "disabled", "dryrun")
    entity = args.entity
    if entity is None and not offline:
        try:
            import wandb

            entity = wandb.Api().default_entity
        except Exception as exc:  # not logged in, or no network
            print(f"posttrain-dashboard: error: W&B is not reachable ({type(exc).__name__}: {exc}). Run `wandb login` "
                  "and pass --entity, or write the definition with --dry-run. Nothing was saved.", file=sys.stderr)
            return 2
    workspace = build_workspace(args.project, entity or "YOUR_ENTITY", args.name)
    if offline:
        from posttrain.records import write_json

        write_json(args.out, definition(workspace))
        why = "--dry-run" if args.dry_run else f"WANDB_MODE={mode}"
        push = (f"WANDB_MODE=online posttrain-dashboard --project {args.project} "
                f"--entity {args.entity or 'YOUR_ENTITY'} --name {args.name!r}")
        print(f"posttrain-dashboard: {why}: wrote the workspace definition ({len(workspace.sections)} sections, "
              f"{sum(len(s.panels) for s in workspace.sections)} panels) to {args.out}; nothing was saved to W&B.\n"
              f"Push it later (after `wandb login` and `wandb sync` of the offline runs): {push}")
        return 0
    try:
        saved = workspace.save()
    except Exception as exc:
        print(f"posttrain-dashboard: error: saving the workspace to {entity}/{args.project} failed "
              f"({type(exc).__name__}: {exc}). Check `wandb login`, --entity and --project, or use --dry-run. "
              "Nothing was saved.", file=sys.stderr)
        return 2
    print(f"posttrain-dashboard: saved workspace {args.name!r} to {entity}/{args.project}: {saved.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
