"""Generation quality (rule summarize_quality): FID, KID and the CLIP score of every model, against the poisoning
ratio."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from bibaddiff.errors import BibaddiffError
from bibaddiff.report.figures import saved_figure
from bibaddiff.report.origin import Origins, with_origin
from bibaddiff.utils import read_json

QUALITY_COLUMNS = ["model", "attack", "trigger", "poison_ratio", "seed", "guidance", "n", "metric", "value", "low", "high",
                   "kid_sd_over_subsets", "interval"]
KID_METRICS = ("kid", "kid_judge")


def quality_table(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (model, metric) from the quality stage's per-model results: FID/KID (``fid``, ``kid``: Inception
    features; ``fid_judge``, ``kid_judge``: the content judge's), ``clip_score``. FID and the CLIP score have a 95%
    interval (``low``, ``high``); KID has none, only its standard deviation over subsets (``kid_sd_over_subsets``)."""
    if not results:
        raise BibaddiffError("quality_table needs at least one model's quality result")
    rows = []
    for result in results:
        if "poison_ratio" not in result and "p" in result:
            result = {**result, "poison_ratio": result["p"]}  # written before the column had the tables' name
        missing = {"model", "attack", "poison_ratio", "seed", "guidance", "n", "rows"} - set(result)
        if missing:
            raise BibaddiffError(f"a quality result lacks {', '.join(sorted(missing))}")
        for row in result["rows"]:
            if row["metric"] in KID_METRICS and "kid_sd_over_subsets" not in row:
                # Written before KID's sd had its own column: low and high were the mean -+ one sd over subsets.
                row = {**row, "kid_sd_over_subsets": (row["high"] - row["low"]) / 2, "low": None, "high": None,
                       "interval": f"none (kid_sd_over_subsets: {row['interval']})"}
            rows.append({**{key: result.get(key) for key in QUALITY_COLUMNS[:7]}, **row})
    table = pd.DataFrame(rows, columns=QUALITY_COLUMNS)
    return table.sort_values(["metric", "poison_ratio", "attack", "seed"], kind="stable").reset_index(drop=True)


def plot_quality_vs_ratio(table: pd.DataFrame, path: str | Path, series: dict[str, str] | None = None) -> None:
    """FID against the poisoning ratio p, one panel per FID kind (Inception, judge features): a point per training
    seed with its interval, a line through each series' seed means, and the clean model as the dashed reference
    line (band: its interval). ``series`` maps each attack to its line (:meth:`bibaddiff.plan.Plan.series`: one per
    trigger and duplicate-poisoning mode, across ratios); without it, each attack is a line of its own."""
    metrics = [m for m in ("fid", "fid_judge") if m in set(table.metric)]
    if not metrics:
        raise BibaddiffError("the quality table has no FID rows (fid or fid_judge) to plot")
    with saved_figure(path, 1, len(metrics), figsize=(4.8 * len(metrics), 3.8), squeeze=False) as (fig, axes):
        for ax, metric in zip(axes[0], metrics):
            rows = table[table.metric == metric]
            clean = rows[rows.attack == "clean"]
            if len(clean):
                ax.axhline(clean.value.mean(), color="black", linestyle="--", label="clean model")
                if clean.low.notna().all():
                    ax.axhspan(clean.low.min(), clean.high.max(), color="black", alpha=0.08)
            poisoned = rows[rows.attack != "clean"].copy()
            poisoned["series"] = poisoned.attack.map(series) if series else poisoned.attack
            for series, subset in poisoned.groupby("series"):
                lower = (subset.value - subset.low).fillna(0).clip(lower=0)
                upper = (subset.high - subset.value).fillna(0).clip(lower=0)
                points = ax.errorbar(subset.poison_ratio, subset.value, yerr=[lower, upper], fmt="o", capsize=3, alpha=0.8)
                means = subset.groupby("poison_ratio").value.mean()
                ax.plot(means.index, means.values, color=points[0].get_color(), label=series)
            ax.set_xlabel("poisoning ratio p")
            ax.set_xlim(0, 1.15 * max(rows.poison_ratio.max(), 0.01))
            ax.set_ylabel("FID (Inception-v3)" if metric == "fid" else "FID in content-judge features (not Inception)")
            ax.set_title(metric, fontsize=9)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)


def write_quality_summary(result_files: list[str], outputs: Mapping[str, str],
                          series: dict[str, str] | None = None, origins: Origins | None = None) -> pd.DataFrame:
    """The generation-quality table of every model and the figure of FID against the poisoning ratio (``outputs``:
    ``table``, ``figure``; ``series``: each attack's line, see :func:`plot_quality_vs_ratio`; ``origins``: each
    model's origin, :meth:`bibaddiff.plan.Plan.origins`)."""
    table = with_origin(quality_table([read_json(path) for path in result_files]), origins)
    table.to_csv(outputs["table"], index=False)
    plot_quality_vs_ratio(table, outputs["figure"], series)
    print(table.to_string(index=False))
    return table
