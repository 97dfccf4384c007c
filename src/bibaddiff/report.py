"""Summary tables and figures from the per-model metric files."""

from __future__ import annotations

import math
import re
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from PIL import Image

from bibaddiff.calibration import MINIMUM_TPR
from bibaddiff.checks import check_int
from bibaddiff.errors import BibaddiffError
from bibaddiff.images import load_generated
from bibaddiff.metrics import (GROUPS, corrected_bootstrap, corrected_ratio, heterogeneity_p_value, percentile_interval,
                               pool_counts, seed_bootstrap, share_bootstrap, summarize_counts, wilson_interval)

KEYS = ["attack", "trigger", "poison_ratio", "x0_clipping", "condition", "is_target", "guidance"]
# Left empty for a trigger judged for content only (the relabel-only control changes no pixel, so nothing in a
# generation can carry it); its G1 is the generations with wrong content, its G4 those with the right content.
TRIGGER_COLUMNS = ["trigger_ratio", "trigger_ratio_low", "trigger_ratio_high", "amplification", "amplification_low",
                   "amplification_high", "amplified", "amplified_raw", "trigger_ratio_corrected",
                   "trigger_ratio_corrected_low", "trigger_ratio_corrected_high", "amplification_corrected",
                   "amplification_corrected_low", "amplification_corrected_high", "detector_fpr", "detector_fpr_low",
                   "detector_fpr_high", "detector_tpr", "detector_tpr_low", "detector_tpr_high", "between_seed_sd",
                   "heterogeneity_p", "G2", "G2_ratio", "G2_ratio_low", "G2_ratio_high", "G3", "G3_ratio",
                   "G3_ratio_low", "G3_ratio_high"]


@contextmanager
def saved_figure(path: str | Path, *subplots_args: Any, **subplots_kwargs: Any) -> Iterator[tuple[Any, Any]]:
    """``plt.subplots(...)`` for a file, not a screen (the Agg backend): yields (figure, axes), then lays the figure
    out, saves it to ``path`` at 120 dpi and closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*subplots_args, **subplots_kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def amplification_table(model_metrics: list[dict[str, Any]], accuracy_floor: float = 0.95,
                        bootstrap_samples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per-seed rows and a pooled row (seed = "pooled") per attack, trigger, sampler, condition and guidance scale.

    Every row has the raw ratios (a per-seed row: Wilson intervals over its images), the detector's error on the
    clean model's calibration generations of its cell (``detector_fpr``, ``detector_tpr``), the trigger ratio
    corrected for it (``trigger_ratio_corrected``: (observed - FPR) / (TPR - FPR), clipped to [0, 1]) with a bootstrap
    interval that resamples the cell's images and both calibration sets, and ``amplified``, decided on the corrected
    interval (its low end above the training share; ``amplified_raw`` on the raw one). The model is the unit: a
    pooled row's intervals resample seeds, then images (:func:`bibaddiff.metrics.seed_bootstrap`), and it reports the
    spread between seeds (``between_seed_sd``) and a chi-square test that the seeds share one trigger ratio
    (``heterogeneity_p``). ``clean_G1_ratio`` .. ``clean_G4_ratio``: the clean control's pooled shares in the same
    cell, against which "wrong content" is read.
    """
    check_int(bootstrap_samples, "bootstrap_samples", 100)
    rows = []
    for model in model_metrics:
        for record in model["records"]:
            rows.append({
                "attack": model["attack"], "poison_ratio": float(model["poison_ratio"]), "seed": str(model["seed"]),
                "is_target": record["condition"] == model["target"], "trigger_judged": True, **record,
            })
    if not rows:
        raise BibaddiffError("no metric records to summarise")
    raw = pd.DataFrame(rows)
    for column in CALIBRATION_COLUMNS:
        if column not in raw:
            raw[column] = None  # metrics written before detectors were calibrated
    raw["detector_accuracy"] = pd.to_numeric(raw["detector_accuracy"])
    table = []
    for key, group in raw.groupby(KEYS, sort=True):
        shares = group[["training_triggered", "training_total"]].drop_duplicates()
        if len(shares) != 1:
            raise BibaddiffError(f"seeds of {dict(zip(KEYS, key))} were trained on different datasets")
        triggered, total = (int(v) for v in shares.iloc[0])
        judges = {"content_judge_accuracy": group["content_judge_accuracy"].min(),
                  "detector_accuracy": group["detector_accuracy"].min(),
                  "trigger_judged": bool(group["trigger_judged"].all())}
        calibration = _group_calibration(group, dict(zip(KEYS, key)))
        rng = np.random.default_rng([seed, zlib.crc32(repr(key).encode())])
        for _, record in group.iterrows():
            counts = summarize_counts(record[list(GROUPS)].to_dict(), triggered, total)
            table.append({**dict(zip(KEYS, key)), "seed": record["seed"], **judges, **counts, "interval": "wilson",
                          **_corrected_columns([counts["G1"] + counts["G2"]], [counts["n"]], calibration,
                                               counts["training_share"], bootstrap_samples, rng)})
        table.append({**dict(zip(KEYS, key)), "seed": "pooled", "num_seeds": len(group), **judges,
                      **_pooled_counts(group, triggered, total, calibration, bootstrap_samples, rng)})
    frame = pd.DataFrame(table)
    frame = frame.rename(columns={"amplified": "amplified_raw"}).rename(columns={"amplified_corrected": "amplified"})
    content_only = ~frame.trigger_judged.astype(bool)
    if content_only.any():
        for column in ("amplified", "amplified_raw"):
            frame[column] = frame[column].astype(object)
            frame.loc[content_only, column] = None
        frame.loc[content_only, [c for c in TRIGGER_COLUMNS if c in frame and c not in ("amplified", "amplified_raw")]] = np.nan
        frame.loc[content_only, "correction_warning"] = "content only: no trigger detector"
    frame = _with_clean_shares(frame)
    frame["judge_warning"] = [_judge_warning(row, accuracy_floor) for row in frame.itertuples()]
    first = KEYS + ["seed", "num_seeds", "n", "trigger_ratio", "trigger_ratio_low", "trigger_ratio_high",
                    "trigger_ratio_corrected", "trigger_ratio_corrected_low", "trigger_ratio_corrected_high",
                    "training_share", "amplification_corrected", "amplification_corrected_low",
                    "amplification_corrected_high", "amplified", "amplification", "amplification_low",
                    "amplification_high", "amplified_raw", "detector_fpr", "detector_tpr", "between_seed_sd",
                    "heterogeneity_p", "mismatch_ratio", "G1_ratio", "G2_ratio", "G3_ratio", "G4_ratio",
                    "clean_G1_ratio", "clean_G2_ratio", "clean_G3_ratio", "clean_G4_ratio", "correction_warning",
                    "judge_warning"]
    return frame[first + [c for c in frame.columns if c not in first]]


# What a metrics record says about its detector's calibration (bibaddiff.measure.calibration_columns).
CALIBRATION_COLUMNS = ["detector_negatives", "calibration_source", "detector_threshold", "calibration_n",
                       "calibration_false_positives", "calibration_true_positives"]


def _group_calibration(group: pd.DataFrame, key: dict[str, Any]) -> dict[str, Any] | None:
    """The one calibration of a cell's detector that every seed's record carries, or None where there is none."""
    calibrations = group[CALIBRATION_COLUMNS].drop_duplicates()
    if len(calibrations) != 1:
        raise BibaddiffError(f"seeds of {key} were judged with different detector calibrations")
    calibration = calibrations.iloc[0].to_dict()
    if pd.isna(calibration["calibration_n"]):
        return None
    return {**calibration, "calibration_n": int(calibration["calibration_n"]),
            "calibration_false_positives": int(calibration["calibration_false_positives"]),
            "calibration_true_positives": int(calibration["calibration_true_positives"])}


def _corrected_columns(triggered: list[int], n: list[int], calibration: dict[str, Any] | None, share: float,
                       samples: int, rng: np.random.Generator, observed: np.ndarray | None = None) -> dict[str, Any]:
    """The detector's FPR and TPR on its calibration cell and the corrected trigger ratio and amplification with
    bootstrap intervals (``observed``: replicates of the raw ratio already drawn; else drawn here, seeds then images).
    """
    empty = {name: math.nan for name in ("detector_fpr", "detector_fpr_low", "detector_fpr_high", "detector_tpr",
                                         "detector_tpr_low", "detector_tpr_high", "trigger_ratio_corrected",
                                         "trigger_ratio_corrected_low", "trigger_ratio_corrected_high",
                                         "amplification_corrected", "amplification_corrected_low",
                                         "amplification_corrected_high")}
    if calibration is None:
        return {**empty, "amplified_corrected": None, "detector_negatives": None, "calibration_source": None,
                "correction_warning": "no detector calibration: ratio not corrected"}
    size, false_positives, true_positives = (calibration[k] for k in ("calibration_n", "calibration_false_positives",
                                                                      "calibration_true_positives"))
    fpr, tpr = false_positives / size, true_positives / size
    columns = {**empty, "detector_negatives": calibration["detector_negatives"],
               "calibration_source": calibration["calibration_source"], "calibration_n": size,
               "detector_fpr": fpr, "detector_tpr": tpr}
    columns["detector_fpr_low"], columns["detector_fpr_high"] = wilson_interval(false_positives, size)
    columns["detector_tpr_low"], columns["detector_tpr_high"] = wilson_interval(true_positives, size)
    if tpr < MINIMUM_TPR:
        return {**columns, "amplified_corrected": None,
                "correction_warning": f"detector TPR on generations {tpr:.3f} < {MINIMUM_TPR}: ratio not corrected"}
    if observed is None:
        observed = seed_bootstrap(triggered, n, samples, rng)
    replicates = corrected_bootstrap(observed, share_bootstrap(false_positives, size, samples, rng),
                                     share_bootstrap(true_positives, size, samples, rng))
    point = corrected_ratio(float(np.mean(np.asarray(triggered) / np.asarray(n))), fpr, tpr)
    low, high = percentile_interval(replicates)
    columns.update({"trigger_ratio_corrected": point, "trigger_ratio_corrected_low": low,
                    "trigger_ratio_corrected_high": high, "correction_warning": ""})
    if share and not math.isnan(share):
        columns.update({"amplification_corrected": point / share, "amplification_corrected_low": low / share,
                        "amplification_corrected_high": high / share, "amplified_corrected": bool(low > share)})
    else:
        columns["amplified_corrected"] = False
    return columns


def _pooled_counts(group: pd.DataFrame, triggered: int, total: int, calibration: dict[str, Any] | None,
                   samples: int, rng: np.random.Generator) -> dict[str, Any]:
    """The pooled row of a cell's seeds: the mean over seeds of every share (seeds have equal sizes), and, with
    several seeds, intervals from a bootstrap over seeds, then images, so that they carry the spread between seeds."""
    row = summarize_counts(pool_counts(group.to_dict("records")), triggered, total)
    sizes = group[list(GROUPS)].sum(axis=1).to_numpy(np.int64)
    trigger_counts = (group["G1"] + group["G2"]).to_numpy(np.int64)
    per_seed = trigger_counts / sizes
    row["between_seed_sd"] = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else math.nan
    row["heterogeneity_p"] = heterogeneity_p_value(trigger_counts, sizes)
    row["interval"] = "wilson" if len(group) == 1 else "seeds, then images"
    observed = None
    if len(group) > 1:
        counts = {name: group[list(parts)].sum(axis=1).to_numpy(np.int64) for name, parts in
                  [(f"{g}_ratio", (g,)) for g in GROUPS] + [("trigger_ratio", ("G1", "G2")), ("mismatch_ratio", ("G1", "G3"))]}
        for name, successes in counts.items():
            replicates = seed_bootstrap(successes, sizes, samples, rng)
            row[name] = float(np.mean(successes / sizes))
            row[f"{name}_low"], row[f"{name}_high"] = percentile_interval(replicates)
            if name == "trigger_ratio":
                observed = replicates
        share = row["training_share"]
        if share and not math.isnan(share):
            row["amplification"] = row["trigger_ratio"] / share
            row["amplification_low"], row["amplification_high"] = row["trigger_ratio_low"] / share, row["trigger_ratio_high"] / share
            row["amplified"] = bool(row["trigger_ratio_low"] > share)
    return {**row, **_corrected_columns(list(trigger_counts), list(sizes), calibration, row["training_share"],
                                        samples, rng, observed)}


def _with_clean_shares(frame: pd.DataFrame) -> pd.DataFrame:
    """``clean_G1_ratio`` .. ``clean_G4_ratio``: the clean control's pooled shares of the same trigger and cell."""
    cell = ["trigger", "x0_clipping", "condition", "guidance"]
    clean = frame[(frame.attack == "clean") & (frame.seed.astype(str) == "pooled")]
    clean = clean[cell + [f"{g}_ratio" for g in GROUPS]].rename(columns={f"{g}_ratio": f"clean_{g}_ratio" for g in GROUPS})
    return frame.merge(clean, on=cell, how="left")


def _judge_warning(row: Any, floor: float) -> str:
    problems = []
    if row.detector_accuracy < floor:
        problems.append(f"trigger detector held-out accuracy {row.detector_accuracy:.3f} < {floor}")
    if row.content_judge_accuracy < floor:
        problems.append(f"content classifier held-out accuracy {row.content_judge_accuracy:.3f} < {floor}")
    return "; ".join(problems)


def _pooled(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["seed"] == "pooled"]


def plot_trigger_ratio(table: pd.DataFrame, path: str | Path) -> None:
    """Trigger ratio vs guidance scale, with 95% intervals and the training share, one panel per condition."""
    pooled = _pooled(table)
    conditions = sorted(pooled["condition"].unique(), key=lambda c: (not pooled[pooled.condition == c].is_target.iloc[0], c))
    with saved_figure(path, 1, len(conditions), figsize=(5 * len(conditions), 4), squeeze=False) as (fig, axes):
        for ax, condition in zip(axes[0], conditions):
            subset = pooled[pooled["condition"] == condition]
            several_samplers = subset.x0_clipping.nunique() > 1
            for index, ((attack, trigger, sampler), line) in enumerate(subset.groupby(["attack", "trigger", "x0_clipping"])):
                line = line.sort_values("guidance")
                color = f"C{index}"
                errors = [line.trigger_ratio - line.trigger_ratio_low, line.trigger_ratio_high - line.trigger_ratio]
                ax.errorbar(line.guidance, line.trigger_ratio, yerr=errors, marker="o", capsize=3, color=color,
                            label=f"{attack} ({trigger})" + (f", x0 {sampler}" if several_samplers else ""))
                ax.plot(line.guidance, line.training_share, linestyle="--", color=color, alpha=0.7,
                        label=f"{attack}: training share")
            target = " (target)" if subset.is_target.iloc[0] else ""
            ax.set_title(f"condition {condition}{target}")
            ax.set_xlabel("guidance scale s (1 = plain conditional, 0 = unconditional)")
            ax.set_ylabel("share of generations with the trigger")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)


def plot_target_vs_guidance(table: pd.DataFrame, path: str | Path) -> None:
    """Target-class generations against guidance: trigger ratio (95% intervals), G1, G2 and the content judge's
    class accuracy (G2 + G4), a line per attack and sampler (x0 clipping mode), pooled over seeds."""
    target = _pooled(table)[lambda frame: frame.is_target.astype(bool)]
    panels = [("trigger_ratio", "trigger ratio (G1 + G2); thick line: training share"), ("G1_ratio", "G1: trigger, wrong content"),
              ("G2_ratio", "G2: trigger, right content"), ("content_accuracy", "class accuracy (G2 + G4)")]
    target = target.assign(content_accuracy=target.G2_ratio + target.G4_ratio)
    samplers = sorted(target.x0_clipping.unique())
    styles = dict(zip(samplers, ["-", "--", ":", "-."]))
    with saved_figure(path, 1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False) as (fig, axes):
        lines = list(target.groupby(["attack", "trigger", "x0_clipping"]))
        colors = {attack: f"C{k}" for k, attack in enumerate(sorted(target.attack.unique()))}
        for ax, (column, title) in zip(axes[0], panels):
            for (attack, trigger, sampler), line in lines:
                line = line.sort_values("guidance")
                errors = None
                if column == "trigger_ratio":
                    errors = [line.trigger_ratio - line.trigger_ratio_low, line.trigger_ratio_high - line.trigger_ratio]
                ax.errorbar(line.guidance, line[column], yerr=errors, marker="o", markersize=4, capsize=2,
                            color=colors[attack], linestyle=styles[sampler], label=f"{attack} ({trigger}), x0 {sampler}")
                if column == "trigger_ratio" and attack != "clean":
                    ax.plot(line.guidance, line.training_share, color=colors[attack], alpha=0.4, linewidth=4)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("guidance scale s (paper's w = s - 1)")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("share of target-class generations")
        axes[0][-1].legend(fontsize=6)


def amplification_vs_ratio(table: pd.DataFrame) -> pd.DataFrame:
    """Target-class rows per trigger, sampler, guidance scale and poisoning ratio p (the clean control is p = 0):
    the pooled trigger ratio with its interval over seeds and images, raw and corrected for the detector's error,
    its mean and spread over training seeds, and its split into G1 and G2, against the training share. Duplicate-poisoning attacks are left out (they have a table of their own).
    """
    rows = table[table.is_target.astype(bool) & ~table.attack.astype(str).str.contains("-dup_")]
    if rows.empty:
        raise BibaddiffError("no target-class rows to plot against the poisoning ratio")
    keys = ["trigger", "x0_clipping", "guidance", "poison_ratio"]
    out = []
    for key, group in rows.groupby(keys, sort=True):
        pooled = group[group.seed.astype(str) == "pooled"].iloc[0]
        per_seed = group[group.seed.astype(str) != "pooled"].trigger_ratio.to_numpy(float)
        out.append({
            **dict(zip(keys, key)), "attack": pooled.attack, "num_seeds": len(per_seed), "n": int(pooled.n),
            "training_share": pooled.training_share,
            **{name: pooled[name] for name in ("trigger_ratio", "trigger_ratio_low", "trigger_ratio_high")},
            "trigger_ratio_seed_mean": per_seed.mean(), "trigger_ratio_seed_min": per_seed.min(),
            "trigger_ratio_seed_max": per_seed.max(),
            "trigger_ratio_seed_std": per_seed.std(ddof=1) if len(per_seed) > 1 else math.nan,
            **{name: pooled[name] for name in ("G1_ratio", "G1_ratio_low", "G1_ratio_high", "G2_ratio",
                                               "G2_ratio_low", "G2_ratio_high", "amplification",
                                               "amplification_low", "amplification_high", "amplified_raw",
                                               "trigger_ratio_corrected", "trigger_ratio_corrected_low",
                                               "trigger_ratio_corrected_high", "amplification_corrected",
                                               "amplification_corrected_low", "amplification_corrected_high",
                                               "amplified", "detector_fpr", "detector_tpr", "between_seed_sd",
                                               "heterogeneity_p", "clean_G1_ratio", "clean_G2_ratio",
                                               "correction_warning", "judge_warning")},
        })
    return pd.DataFrame(out)


def plot_amplification_vs_ratio(frame: pd.DataFrame, path: str | Path) -> None:
    """Per poisoning ratio, the training share beside the generated trigger ratio split into G1 and G2 (pooled
    over seeds, 95% interval over seeds and images; ticks: lowest and highest seed) and the corrected trigger ratio
    (diamonds); a row per trigger and sampler, a column per guidance."""
    rows = list(frame.groupby(["trigger", "x0_clipping"]))
    scales = sorted(frame.guidance.unique())
    size = (4.2 * len(scales), 3.6 * len(rows))
    with saved_figure(path, len(rows), len(scales), figsize=size, squeeze=False) as (fig, axes):
        for i, ((trigger, sampler), subset) in enumerate(rows):
            for j, scale in enumerate(scales):
                ax = axes[i][j]
                panel = subset[subset.guidance == scale].sort_values("poison_ratio")
                x = np.arange(len(panel))
                ax.bar(x - 0.2, panel.training_share.fillna(0), width=0.38, color="#7f7f7f", label="training share")
                ax.bar(x + 0.2, panel.G1_ratio, width=0.38, color="#d62728", label="generated G1 (wrong content)")
                ax.bar(x + 0.2, panel.G2_ratio, width=0.38, bottom=panel.G1_ratio, color="#ff7f0e",
                       label="generated G2 (right content)")
                ax.errorbar(x + 0.2, panel.trigger_ratio, yerr=[panel.trigger_ratio - panel.trigger_ratio_low,
                                                                 panel.trigger_ratio_high - panel.trigger_ratio],
                            fmt="none", color="black", capsize=3)
                ax.scatter(x + 0.2, panel.trigger_ratio_seed_min, marker="_", color="black", s=60)
                ax.scatter(x + 0.2, panel.trigger_ratio_seed_max, marker="_", color="black", s=60,
                           label="lowest and highest seed")
                corrected = panel[panel.trigger_ratio_corrected.notna()]
                if len(corrected):
                    # The share that truly carries the trigger, once the detector's FPR and TPR are accounted for.
                    ax.errorbar(x[panel.trigger_ratio_corrected.notna().to_numpy()] + 0.38,
                                corrected.trigger_ratio_corrected,
                                yerr=[corrected.trigger_ratio_corrected - corrected.trigger_ratio_corrected_low,
                                      corrected.trigger_ratio_corrected_high - corrected.trigger_ratio_corrected],
                                fmt="D", markersize=4, color="#1f77b4", capsize=2,
                                label="corrected for the detector's FPR/TPR")
                ax.set_xticks(x, ["clean" if p == 0 else f"{p:g}" for p in panel.poison_ratio])
                ax.set_xlabel("poisoning ratio p")
                ax.set_ylim(0, 1.02)
                ax.set_title(f"{trigger}, x0 {sampler}, s={scale:g}", fontsize=9)
                ax.grid(axis="y", alpha=0.3)
            axes[i][0].set_ylabel("share of target-class images with the trigger")
        axes[0][-1].legend(fontsize=6, loc="upper left")


def plot_generation_groups(table: pd.DataFrame, path: str | Path) -> None:
    """Stacked G1-G4 shares (pooled over seeds) for each attack, condition and guidance scale."""
    pooled = _pooled(table).drop_duplicates(["attack", "x0_clipping", "condition", "guidance", "trigger"])
    pooled = pooled.sort_values(["is_target", "condition", "attack", "x0_clipping", "guidance"],
                                ascending=[False, True, True, True, True])
    labels = [f"{r.attack} c{r.condition} s{r.guidance:g}" + (f" [{r.trigger}]" if pooled.trigger.nunique() > 1 else "")
              + (f" x0 {r.x0_clipping}" if pooled.x0_clipping.nunique() > 1 else "") for r in pooled.itertuples()]
    with saved_figure(path, figsize=(max(6, 0.45 * len(pooled) + 2), 4.5)) as (fig, ax):
        bottom = np.zeros(len(pooled))
        colors = {"G1": "#d62728", "G2": "#ff7f0e", "G3": "#9467bd", "G4": "#2ca02c"}
        names = {"G1": "G1 trigger, wrong content", "G2": "G2 trigger, right content",
                 "G3": "G3 no trigger, wrong content", "G4": "G4 correct"}
        for group in GROUPS:
            values = pooled[f"{group}_ratio"].to_numpy()
            ax.bar(range(len(pooled)), values, bottom=bottom, color=colors[group], label=names[group])
            bottom += values
        ax.set_xticks(range(len(pooled)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("share of generations")
        ax.legend(fontsize=7, loc="upper right")


def image_grid(images: np.ndarray, columns: int = 8, max_images: int = 64, scale: int = 1) -> Image.Image:
    """A grid of the first ``max_images`` uint8 (N, H, W, C) images, each ``scale`` times enlarged."""
    images = np.asarray(images)[:max_images]
    if images.ndim != 4 or len(images) == 0:
        raise BibaddiffError(f"image_grid needs a non-empty (N, H, W, C) batch; got shape {images.shape}")
    n, height, width, channels = images.shape
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    grid = np.full((rows * (height + 1) + 1, columns * (width + 1) + 1, channels), 128, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[1 + r * (height + 1):1 + r * (height + 1) + height, 1 + c * (width + 1):1 + c * (width + 1) + width] = image
    pil = Image.fromarray(grid[..., 0] if channels == 1 else grid, mode="L" if channels == 1 else "RGB")
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST) if scale > 1 else pil


def plot_sample_grids(grids: dict[tuple[str, float], str | Path], path: str | Path, title: str) -> None:
    """One figure of sample grids: a row per attack, a column per guidance scale."""
    attacks = sorted({a for a, _ in grids})
    scales = sorted({s for _, s in grids})
    size = (2.6 * len(scales), 2.8 * len(attacks))
    with saved_figure(path, len(attacks), len(scales), figsize=size, squeeze=False) as (fig, axes):
        for i, attack in enumerate(attacks):
            for j, scale in enumerate(scales):
                ax = axes[i][j]
                ax.axis("off")
                if (attack, scale) in grids:
                    image = Image.open(grids[(attack, scale)])
                    ax.imshow(image, cmap="gray" if image.mode == "L" else None, vmin=0, vmax=255)
                ax.set_title(f"{attack}, s={scale:g}", fontsize=8)
        fig.suptitle(title)


# ------------------------------------------------------------------------------------------------ castle walls


def defense_tables(detections: list[dict[str, Any]], classifier_infos: list[dict[str, Any]], classifier_paths: list[str],
                   dm_results: list[dict[str, Any]], attacks: dict[str, dict[str, Any]], *, seed: int = 0,
                   resamples: int = 1000) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Detection, train-on-generated and diffusion-classifier tables from the defence rules' outputs. Each detection
    result carries its per-image scores under ``items`` (:func:`bibaddiff.defenses.detectors.load_detection_items`);
    ``seed`` and ``resamples`` drive the bootstrap of the AUROC differences."""
    def attack_columns(attack: str) -> dict[str, Any]:
        if attack not in attacks:
            raise BibaddiffError(f"unknown attack {attack!r} in defence results")
        return {"attack": attack, "poison_ratio": float(attacks[attack]["ratio"]), "trigger": attacks[attack]["trigger"]}

    training_table, standard = _train_on_generated_table(classifier_infos, classifier_paths, attacks, attack_columns)
    # The screening classifier of a set is the one trained on it; its ASR on the attack's own trigger says whether it
    # carries a backdoor for a detector to find.
    screening_asr = {(row.attack, row.trainset): row.asr for row in training_table.itertuples()
                     if row.attack in attacks and row.trigger == attacks[row.attack]["trigger"]}
    dm_rows = [{**attack_columns(result["attack"]), "trigger": row["trigger"], "seed": str(result["seed"]),
                "method": "diffusion classifier", "p_filter": row["p_filter"], "acc": row["acc"], "asr": row["asr"]}
               for result in dm_results for row in result["rows"]]
    dm_table = pd.DataFrame(dm_rows + standard).sort_values(["poison_ratio", "attack", "method", "seed", "p_filter"])
    detection = _detection_table(detections, attack_columns, screening_asr, seed=seed, resamples=resamples)
    return detection, training_table, dm_table.reset_index(drop=True)


# Below this ASR on its own trigger a screening classifier has (almost) no backdoor: its detectors have nothing to find.
NO_BACKDOOR_ASR = 0.2


def _detection_table(detections: list[dict[str, Any]], attack_columns: Any, screening_asr: dict[tuple[str, str], float],
                     *, seed: int = 0, resamples: int = 1000) -> pd.DataFrame:
    """Per attack, detector, scope and guidance of the generated sets: one row per generated set (``seed``: the
    diffusion model's training seed) and a pooled row (``seed`` = "pooled"), each beside the poisoned training set.
    ``detector`` is the name the config lists (a variant may be in it, e.g. ``cognitive_distillation_probabilities``)
    and ``variant`` the definition that produced the scores (empty for detectors with one definition).

    The AUROC difference (generated - training) has its own bootstrap interval
    (:func:`bibaddiff.defenses.detectors.compare_aurocs`: per set, the two sets resampled independently; pooled,
    the seeds resampled, then the images within each), and ``auroc_generated_higher`` means its lower bound is
    above 0. ``screening_asr_*`` is the ASR of the classifier each side was screened with (trained on that set;
    ``screening_asr`` maps (attack, trainset) to it), and ``no_backdoor_to_detect`` marks rows where one of them
    (pooled: any seed's) is below :data:`NO_BACKDOOR_ASR`. A training AUROC of 1 cannot rise
    (``training_at_ceiling``). TPR at 5% FPR keeps each set's own interval; pooled, it is the mean over the scored
    sets, without an interval."""
    resamples = check_int(resamples, "resamples", 1)
    seed = check_int(seed, "seed", 0)
    sets: dict[str, dict[str, Any]] = {}
    for result in detections:
        if "items" not in result:
            raise BibaddiffError(f"the detection result of {result.get('attack')}/{result.get('set')} has no per-image "
                                 f"scores (items); rerun detect_poison")
        entry = sets.setdefault(result["attack"], {"training": None, "generated": []})
        if result["set"] == "training":
            entry["training"] = result
        else:
            if not re.fullmatch(GENERATED_SET_NAME, str(result["set"])):
                raise BibaddiffError(f"detection set {result['set']!r} of {result['attack']} is neither 'training' nor "
                                     f"a generated set (generated_seed<k>_s<guidance>)")
            entry["generated"].append(result)
    rows = []
    for attack in sorted(sets, key=lambda a: (attack_columns(a)["poison_ratio"], a)):
        training, generated = sets[attack]["training"], sets[attack]["generated"]
        if training is None:
            raise BibaddiffError(f"attack {attack!r} has generated-set detection results but none for its training set")
        generated = sorted(generated, key=lambda r: (generated_set_guidance(r["set"]), int(generated_set_seed(r["set"]))))
        guidances = sorted({generated_set_guidance(r["set"]) for r in generated}) or [math.nan]
        asr_training = screening_asr.get((attack, "poisoned"), math.nan)
        for detector in training["detectors"]:
            for scope in ("all", "target_class"):
                for guidance in guidances:
                    members = [r for r in generated if generated_set_guidance(r["set"]) == guidance]
                    rows += _detection_rows(attack_columns(attack), detector, scope, guidance, training, members,
                                            asr_training, [screening_asr.get((attack, r["set"]), math.nan) for r in members],
                                            seed, resamples)
    return pd.DataFrame(rows, columns=DETECTION_COLUMNS)


def _scope_items(result: dict[str, Any], detector: str, scope: str) -> tuple[np.ndarray, np.ndarray]:
    """One set's (scores, carries_trigger) for a detector, restricted to the target class for that scope."""
    items = result["items"]
    if detector not in items["scores"]:
        raise BibaddiffError(f"the detection result of {result['attack']}/{result['set']} has no scores of detector {detector!r}")
    keep = items["in_target"] if scope == "target_class" else np.ones(len(items["carries_trigger"]), bool)
    return np.asarray(items["scores"][detector])[keep], np.asarray(items["carries_trigger"])[keep]


def _detection_rows(columns: dict[str, Any], detector: str, scope: str, guidance: float, training: dict[str, Any],
                    members: list[dict[str, Any]], asr_training: float, asr_generated: list[float], seed: int,
                    resamples: int) -> list[dict[str, Any]]:
    """The per-seed rows and the pooled row of one (attack, detector, scope, guidance) cell."""
    # Imported here: the detectors module needs torch, which the trigger-ratio summary does not.
    from bibaddiff.defenses.detectors import compare_aurocs

    comparison = compare_aurocs(_scope_items(training, detector, scope),
                                [_scope_items(r, detector, scope) for r in members], resamples=resamples, seed=seed)
    trained = training["detectors"][detector][scope]
    # The definition the scores come from (e.g. published or probabilities for cognitive distillation); results
    # written before variants were recorded, and detectors with one definition, have none.
    variant = training["detectors"][detector].get("variant")
    base = {**columns, "detector": detector, "variant": variant, "scope": scope, "generated_guidance": guidance}
    training_columns = {
        "auroc_training": comparison["training"]["auroc"], "auroc_training_low": comparison["training"]["auroc_low"],
        "auroc_training_high": comparison["training"]["auroc_high"],
        "training_at_ceiling": comparison["training"]["auroc"] >= 1.0,
        **{f"tpr_at_5_fpr_training{b}": trained.get(f"tpr_at_5_fpr{b}", math.nan) for b in ("", "_low", "_high")},
        "n_training": trained["n"], "n_poisoned_training": trained["n_poisoned"], "screening_asr_training": asr_training,
    }

    def no_backdoor(asrs: list[float]) -> bool:
        return any(asr < NO_BACKDOOR_ASR for asr in [asr_training, *asrs])

    rows = []
    for result, compared, asr in zip(members, comparison["generated"], asr_generated):
        scores = result["detectors"][detector][scope]
        rows.append({**base, "seed": generated_set_seed(result["set"]), **training_columns,
                     "auroc_generated": compared["auroc"], "auroc_generated_low": compared["auroc_low"],
                     "auroc_generated_high": compared["auroc_high"], "between_seed_sd": math.nan,
                     **{f"tpr_at_5_fpr_generated{b}": scores.get(f"tpr_at_5_fpr{b}", math.nan) for b in ("", "_low", "_high")},
                     "n_generated": scores["n"], "n_flagged_generated": scores["n_poisoned"], "generated_sets": 1,
                     "generated_sets_scored": int(not math.isnan(compared["auroc"])), "screening_asr_generated": asr,
                     **{k: compared[k] for k in ("auroc_difference", "auroc_difference_low", "auroc_difference_high")},
                     "no_backdoor_to_detect": no_backdoor([asr])})
    pooled = comparison["pooled"]
    scored_tprs = [row["tpr_at_5_fpr_generated"] for row in rows if row["generated_sets_scored"]]
    rows.append({**base, "seed": "pooled", **training_columns,
                 "auroc_generated": pooled["auroc"], "auroc_generated_low": pooled["auroc_low"],
                 "auroc_generated_high": pooled["auroc_high"], "between_seed_sd": pooled["between_seed_sd"],
                 "tpr_at_5_fpr_generated": float(np.mean(scored_tprs)) if scored_tprs else math.nan,
                 "tpr_at_5_fpr_generated_low": math.nan, "tpr_at_5_fpr_generated_high": math.nan,
                 "n_generated": sum(row["n_generated"] for row in rows),
                 "n_flagged_generated": sum(row["n_flagged_generated"] for row in rows), "generated_sets": len(rows),
                 "generated_sets_scored": pooled["sets_scored"],
                 "screening_asr_generated": float(np.nanmean(asr_generated)) if not np.all(np.isnan(asr_generated)) else math.nan,
                 **{k: pooled[k] for k in ("auroc_difference", "auroc_difference_low", "auroc_difference_high")},
                 "no_backdoor_to_detect": no_backdoor(asr_generated)})
    for row in rows:
        # Decided on the difference's own interval: a 95% interval of generated - training wholly above 0.
        row["auroc_generated_higher"] = bool(row["auroc_difference_low"] > 0)
    return [{key: row[key] for key in DETECTION_COLUMNS} for row in rows]


DETECTION_COLUMNS = [
    "attack", "trigger", "poison_ratio", "detector", "variant", "scope", "generated_guidance", "seed",
    "auroc_training", "auroc_training_low", "auroc_training_high", "training_at_ceiling",
    "auroc_generated", "auroc_generated_low", "auroc_generated_high", "between_seed_sd",
    "auroc_difference", "auroc_difference_low", "auroc_difference_high", "auroc_generated_higher",
    "screening_asr_training", "screening_asr_generated", "no_backdoor_to_detect",
    "tpr_at_5_fpr_training", "tpr_at_5_fpr_training_low", "tpr_at_5_fpr_training_high",
    "tpr_at_5_fpr_generated", "tpr_at_5_fpr_generated_low", "tpr_at_5_fpr_generated_high",
    "n_training", "n_poisoned_training", "n_generated", "n_flagged_generated", "generated_sets", "generated_sets_scored",
]


def _train_on_generated_table(classifier_infos: list[dict[str, Any]], classifier_paths: list[str],
                              attacks: dict[str, dict[str, Any]], attack_columns: Any
                              ) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """ACC and ASR of the classifiers trained on the clean, poisoned and generated sets; and the poisoned-set rows
    again as the diffusion classifier's "standard classifier" comparison.

    ``acc`` and ``asr`` are the last epoch's; ``acc_best_epoch`` and ``asr_best_epoch`` are the highest ACC and the
    highest ASR over the epochs (each its own epoch, both on the held-out set), what upstream's train-on-sample scripts
    log; nan for classifiers saved before per-epoch values were kept."""
    rows, standard = [], []
    for info, path in zip(classifier_infos, classifier_paths):
        attack, trainset = Path(path).parts[-2], Path(path).parts[-1]
        for trigger, scores in info["evaluation"].items():
            row = {"trigger": trigger, "trainset": trainset, "generated_guidance": generated_set_guidance(trainset),
                   "acc": scores["acc"], "asr": scores["asr"],
                   "acc_best_epoch": scores.get("acc_best_epoch", math.nan),
                   "asr_best_epoch": scores.get("asr_best_epoch", math.nan),
                   "epochs": len(scores.get("acc_per_epoch", [])) or math.nan, "n_train": info.get("num_train")}
            if attack == "clean":
                # The clean-set classifier is the reference row of every attack that uses this trigger.
                rows += [{**attack_columns(a), **row} for a, spec in attacks.items() if spec["trigger"] == trigger]
            else:
                rows.append({**attack_columns(attack), **row})
            if trainset == "poisoned":
                standard.append({**attack_columns(attack), "trigger": trigger, "seed": "",
                                 "method": "standard classifier (poisoned set)", "p_filter": math.nan,
                                 "acc": scores["acc"], "asr": scores["asr"]})
    order = {"clean": 0, "poisoned": 1}
    table = pd.DataFrame(rows).sort_values(
        ["poison_ratio", "attack", "trainset"], key=lambda c: c.map(lambda v: order.get(v, 2)) if c.name == "trainset" else c)
    return table.reset_index(drop=True), standard


GENERATED_SET_NAME = r"generated_seed(\d+)_s(\d+(?:\.\d+)?)"


def generated_set_guidance(name: str) -> float:
    """The guidance scale in a generated set's name (``generated_seed<k>_s<guidance>``); nan for other sets."""
    match = re.fullmatch(GENERATED_SET_NAME, str(name))
    return float(match.group(2)) if match else math.nan


def generated_set_seed(name: str) -> str:
    """The diffusion model's training seed in a generated set's name (``generated_seed<k>_s<guidance>``); "" for
    other sets."""
    match = re.fullmatch(GENERATED_SET_NAME, str(name))
    return match.group(1) if match else ""


def plot_detection(detection: pd.DataFrame, path: str | Path) -> None:
    """Per attack and guidance of the generated sets (a column each), over the detectors: top, the AUROC on the
    poisoned training set and the pooled AUROC on the generated sets, each with its bootstrap interval, and each
    seed's generated AUROC as a dot; bottom, the difference generated - training with its own interval (filled:
    interval above 0; grey: a screening classifier without a backdoor, nothing to detect; tick label "ceiling": the
    training AUROC is 1 and cannot rise)."""
    table = detection[detection.scope == "all"]
    pooled, per_seed = table[table.seed.astype(str) == "pooled"], table[table.seed.astype(str) != "pooled"]
    panels = sorted(pooled.groupby(["attack", "generated_guidance"], dropna=False).groups,
                    key=lambda key: (pooled[pooled.attack == key[0]].poison_ratio.iloc[0], key[0], key[1]))

    def in_panel(rows: pd.DataFrame, attack: str, guidance: float) -> pd.DataFrame:
        same_guidance = (rows.generated_guidance == guidance) | (rows.generated_guidance.isna() & pd.isna(guidance))
        return rows[(rows.attack == attack) & same_guidance]

    def error_bars(rows: pd.DataFrame, value: str) -> np.ndarray:
        error = np.stack([rows[value] - rows[f"{value}_low"], rows[f"{value}_high"] - rows[value]]).astype(float)
        return np.clip(np.nan_to_num(error), 0, None)

    size = (4.5 * len(panels), 6.4)
    with saved_figure(path, 2, len(panels), figsize=size, squeeze=False, sharex="col", sharey="row") as (fig, axes):
        for column, (attack, guidance) in enumerate(panels):
            top, bottom = axes[0][column], axes[1][column]
            rows = in_panel(pooled, attack, guidance)
            x = np.arange(len(rows))
            for offset, kind, label in ((-0.2, "training", "poisoned training set"),
                                        (0.2, "generated", "generated sets (mean over seeds)")):
                top.bar(x + offset, rows[f"auroc_{kind}"], 0.4, yerr=error_bars(rows, f"auroc_{kind}"), capsize=2,
                        error_kw={"linewidth": 0.8}, label=label)
            seeds = in_panel(per_seed, attack, guidance)
            for position, detector in enumerate(rows.detector):
                values = seeds[seeds.detector == detector].auroc_generated
                top.plot(np.full(len(values), position + 0.2), values, "k.", markersize=4,
                         label="one seed's generated set" if position == 0 and column == 0 else None)
            top.axhline(0.5, color="grey", linestyle=":", linewidth=1)
            top.set_ylim(0, 1.02)
            top.set_title(attack if pd.isna(guidance) else f"{attack}, generated at s={guidance:g}", fontsize=9)
            no_backdoor = rows.no_backdoor_to_detect.astype(bool).to_numpy()
            higher = rows.auroc_generated_higher.astype(bool).to_numpy()
            colors = ["grey" if nothing else "C0" for nothing in no_backdoor]
            difference_errors = error_bars(rows, "auroc_difference")
            for position, color in enumerate(colors):
                bottom.errorbar(x[position], rows.auroc_difference.iloc[position],
                                yerr=difference_errors[:, position:position + 1], fmt="none", ecolor=color, capsize=3,
                                linewidth=1)
            bottom.scatter(x, rows.auroc_difference, edgecolors=colors, zorder=3,
                           facecolors=[color if up else "white" for color, up in zip(colors, higher)])
            bottom.axhline(0, color="black", linewidth=0.8)
            names = [detector if pd.isna(variant) or str(detector).endswith(f"_{variant}") else f"{detector}\n({variant})"
                     for detector, variant in zip(rows.detector, rows.variant)]
            labels = [name + ("\nceiling" if ceiling else "") + ("\nno backdoor" if nothing else "")
                      for name, ceiling, nothing in zip(names, rows.training_at_ceiling.astype(bool), no_backdoor)]
            bottom.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
        axes[0][0].set_ylabel("AUROC (95% bootstrap interval)")
        axes[1][0].set_ylabel("AUROC generated - training\n(95% bootstrap interval)")
        axes[0][0].legend(fontsize=7)


def plot_train_on_generated(training: pd.DataFrame, path: str | Path) -> None:
    """ACC and ASR of classifiers trained on the clean, poisoned and generated sets, per attack: bars at the last
    epoch, a black tick at the best epoch (upstream's convention)."""
    attacks = list(dict.fromkeys(training.attack))
    size = (max(7, 1.6 * len(training) / max(1, len(attacks)) * len(attacks)), 3.8)
    with saved_figure(path, 1, 2, figsize=size) as (fig, axes):
        labels = [f"{r.attack}\n{r.trainset}" for r in training.itertuples()]
        for ax, metric in zip(axes, ("acc", "asr")):
            colors = ["C2" if t == "clean" else "C3" if t == "poisoned" else "C0" for t in training.trainset]
            ax.bar(range(len(training)), training[metric], color=colors, label="last epoch")
            if f"{metric}_best_epoch" in training:
                ax.scatter(range(len(training)), training[f"{metric}_best_epoch"], marker="_", s=120, color="black",
                           zorder=3, label="best epoch (upstream)")
                ax.legend(fontsize=6)
            ax.set_xticks(range(len(training)), labels, rotation=70, ha="right", fontsize=6)
            ax.set_ylim(0, 1.02)
            ax.set_title({"acc": "clean accuracy (ACC)", "asr": "attack success rate (ASR)"}[metric])


def plot_diffusion_classifier(table: pd.DataFrame, path: str | Path) -> None:
    """ASR (and ACC) of the diffusion classifier against p_filter, with the standard classifier's ASR as a line."""
    with saved_figure(path, 1, 2, figsize=(10, 3.8)) as (fig, axes):
        dm = table[table.method == "diffusion classifier"].groupby(["attack", "trigger", "p_filter"], as_index=False)[["acc", "asr"]].mean()
        standard = table[table.method != "diffusion classifier"]
        for index, ((attack, trigger), rows) in enumerate(dm.groupby(["attack", "trigger"])):
            for ax, metric in zip(axes, ("asr", "acc")):
                ax.plot(rows.p_filter, rows[metric], marker="o", color=f"C{index}", label=f"DM {attack} [{trigger}]")
                match = standard[(standard.attack == attack) & (standard.trigger == trigger)]
                if len(match):
                    ax.axhline(match[metric].iloc[0], color=f"C{index}", linestyle="--", alpha=0.7,
                               label=f"standard classifier, {attack}")
        for ax, metric in zip(axes, ("ASR", "ACC")):
            ax.set_xlabel("p_filter (share of largest pixel errors discarded)")
            ax.set_ylabel(metric)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=6)


# ------------------------------------------------------------------------------------------------ replication


def replication_table(summaries: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (model, cell): tau, replication rate with interval, similarity quantiles, poisoned vs clean."""
    rows = []
    for model in summaries:
        for cell in model["cells"]:
            low, high = cell["replication_rate_ci95"]
            row = {"attack": model["attack"], "seed": model["seed"], "x0_clipping": cell["x0_clipping"],
                   "condition": cell["condition"],
                   "guidance": cell["guidance"], "tau": model["tau"], "tau_calibrated": model["tau_calibrated"],
                   "heldout_replication_rate": model["heldout_replication_rate"],
                   "n": cell["n_generated"], "replication_rate": cell["replication_rate"],
                   "replication_rate_low": low, "replication_rate_high": high,
                   **{f"similarity_{k}": v for k, v in cell["nn_similarity_quantiles"].items()},
                   "replicating_nn_poisoned": cell["replicating_nn_poisoned"],
                   "replicating_nn_clean": cell["replicating_nn_clean"],
                   "n_train_poisoned": cell["n_train_poisoned"], "n_train_clean": cell["n_train_clean"],
                   "poisoned_image_replication_rate": cell["poisoned_image_replication_rate"],
                   "clean_image_replication_rate": cell["clean_image_replication_rate"],
                   "training_near_duplicate_groups": model["training_near_duplicate_groups"],
                   "training_images_in_near_duplicate_groups": model["training_images_in_near_duplicate_groups"]}
            rows.append(row)
    return pd.DataFrame(rows)


def plot_replication_similarity(summaries: list[dict[str, Any]], neighbours: list[dict[str, np.ndarray]], target: int,
                                path: str | Path) -> None:
    """Nearest-neighbour similarity of target-class generations (first guidance scale) vs held-out real images."""
    with saved_figure(path, figsize=(7, 4)) as (fig, ax):
        bins = np.linspace(-0.2, 1.0, 61)
        ax.hist(neighbours[0]["heldout_similarity"], bins=bins, density=True, histtype="stepfilled", alpha=0.3,
                color="grey", label="held-out real images")
        for model, arrays in zip(summaries, neighbours):
            k = next(k for k, cell in enumerate(model["cells"]) if cell["condition"] == target)
            cell = model["cells"][k]
            ax.hist(arrays[f"cell{k}_similarity"], bins=bins, density=True, histtype="step",
                    label=f"{model['attack']} seed {model['seed']} (class {target}, s={cell['guidance']:g}, "
                          f"x0 {cell['x0_clipping']})")
        ax.axvline(summaries[0]["tau"], color="black", linestyle="--", label=f"tau = {summaries[0]['tau']:.3f}")
        ax.set_xlabel("cosine similarity to the nearest training image")
        ax.set_ylabel("density")
        ax.legend(fontsize=6)


def plot_replication_pairs(summaries: list[dict[str, Any]], neighbours: list[dict[str, np.ndarray]],
                           cell_paths: list[list[str]], trains: list[Any], target: int, path: str | Path,
                           pairs: int = 8) -> None:
    """Per model, the ``pairs`` most similar (generation, nearest training image) pairs; poisoned ones framed red.
    ``trains`` are the models' training sets as :class:`~bibaddiff.data.DatasetRecords`: only the shown images are read."""
    from matplotlib.patches import Rectangle

    size = (1.1 * 2 * pairs, 1.3 * len(summaries) + 0.4)
    with saved_figure(path, len(summaries), 2 * pairs, figsize=size, squeeze=False) as (fig, axes):
        for row, (model, arrays, paths, train) in enumerate(zip(summaries, neighbours, cell_paths, trains)):
            k = next(k for k, cell in enumerate(model["cells"]) if cell["condition"] == target)
            generated = load_generated(paths[k])
            similarity, index = arrays[f"cell{k}_similarity"], arrays[f"cell{k}_index"]
            for j, g in enumerate(np.argsort(-similarity, kind="stable")[:pairs]):
                for offset, (image, title) in enumerate(((generated[g], f"{similarity[g]:.2f}"),
                                                         (train.images_at([index[g]])[0], "train"))):
                    ax = axes[row][2 * j + offset]
                    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
                    ax.set_xticks([])
                    ax.set_yticks([])
                    ax.set_title(title, fontsize=6)
                    if offset == 1 and train.poisoned[index[g]]:
                        ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, edgecolor="red", linewidth=3))
            axes[row][0].set_ylabel(f"{model['attack']}\nseed {model['seed']}", fontsize=6)


def duplicate_poisoning_table(amplification: pd.DataFrame, attacks: list[str]) -> pd.DataFrame:
    """Pooled target-class rows of the duplicate-poisoning attacks: trigger ratio, G1, G2 with intervals."""
    rows = amplification[amplification.attack.isin(attacks) & (amplification.seed.astype(str) == "pooled")
                         & amplification.is_target.astype(bool)]
    if rows.empty:
        raise BibaddiffError(f"no pooled target-class rows for the duplicate-poisoning attacks {attacks}")
    rows = rows.assign(mode=rows.attack.str.rsplit("dup_", n=1).str[-1])
    columns = ["mode", "attack", "trigger", "poison_ratio", "x0_clipping", "guidance", "num_seeds", "n", "trigger_ratio",
               "trigger_ratio_low", "trigger_ratio_high", "G1_ratio", "G1_ratio_low", "G1_ratio_high", "G2_ratio",
               "G2_ratio_low", "G2_ratio_high", "training_share", "amplification", "judge_warning"]
    return rows[columns].sort_values(["x0_clipping", "guidance", "mode"]).reset_index(drop=True)


QUALITY_COLUMNS = ["model", "attack", "trigger", "p", "seed", "guidance", "n", "metric", "value", "low", "high",
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
        missing = {"model", "attack", "p", "seed", "guidance", "n", "rows"} - set(result)
        if missing:
            raise BibaddiffError(f"a quality result lacks {', '.join(sorted(missing))}")
        for row in result["rows"]:
            if row["metric"] in KID_METRICS and "kid_sd_over_subsets" not in row:
                # Written before KID's sd had its own column: low and high were the mean -+ one sd over subsets.
                row = {**row, "kid_sd_over_subsets": (row["high"] - row["low"]) / 2, "low": None, "high": None,
                       "interval": f"none (kid_sd_over_subsets: {row['interval']})"}
            rows.append({**{key: result.get(key) for key in QUALITY_COLUMNS[:7]}, **row})
    table = pd.DataFrame(rows, columns=QUALITY_COLUMNS)
    return table.sort_values(["metric", "p", "attack", "seed"], kind="stable").reset_index(drop=True)


def plot_quality_vs_ratio(table: pd.DataFrame, path: str | Path) -> None:
    """FID against the poisoning ratio p, one panel per FID kind (Inception, judge features): a point per training
    seed with its interval, a line through each attack's seed means, and the clean model as the dashed reference
    line (band: its interval)."""
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
            # One series per trigger (and duplicate-poisoning mode) across ratios.
            poisoned["series"] = poisoned.attack.str.replace(r"-p[0-9.]+", "", regex=True)
            for series, subset in poisoned.groupby("series"):
                lower = (subset.value - subset.low).fillna(0).clip(lower=0)
                upper = (subset.high - subset.value).fillna(0).clip(lower=0)
                points = ax.errorbar(subset.p, subset.value, yerr=[lower, upper], fmt="o", capsize=3, alpha=0.8)
                means = subset.groupby("p").value.mean()
                ax.plot(means.index, means.values, color=points[0].get_color(), label=series)
            ax.set_xlabel("poisoning ratio p")
            ax.set_xlim(0, 1.15 * max(rows.p.max(), 0.01))
            ax.set_ylabel("FID (Inception-v3)" if metric == "fid" else "FID in content-judge features (not Inception)")
            ax.set_title(metric, fontsize=9)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)


# ---------------------------------------------------------------------------------------- trigger detectors
def calibration_table(calibrations: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (detector, cell): the detector's threshold, its false-positive rate on the clean model's
    calibration generations, its true-positive rate on the same images with the trigger applied (at the poisoning
    strength; ``tpr_detector_range``: across the detector's training range), each with a 95% Wilson interval, and
    whether the correction may use it (TPR >= 0.5). ``source`` says what the detector was checked on."""
    rows = []
    for calibration in calibrations:
        for row in calibration["rows"]:
            out = {"detector": calibration["trigger"], "detector_negatives": calibration["detector_negatives"],
                   "source": row["source"], "x0_clipping": row["x0_clipping"], "condition": row["condition"],
                   "guidance": row["guidance"], "n": row["n"], "threshold": row["threshold"],
                   "target_fpr": calibration["target_fpr"] if row["source"] == "clean_generations" else math.nan}
            for name, count in (("fpr", row["false_positives"]), ("tpr", row["true_positives"]),
                                ("tpr_detector_range", row["true_positives_detector_range"])):
                out[name] = count / row["n"]
                out[f"{name}_low"], out[f"{name}_high"] = wilson_interval(count, row["n"])
            out["correction_usable"] = bool(out["tpr"] >= MINIMUM_TPR)
            rows.append(out)
    columns = ["detector", "detector_negatives", "source", "x0_clipping", "condition", "guidance", "n", "threshold",
               "target_fpr", "fpr", "fpr_low", "fpr_high", "tpr", "tpr_low", "tpr_high", "tpr_detector_range",
               "tpr_detector_range_low", "tpr_detector_range_high", "correction_usable"]
    if not rows:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(rows)[columns].sort_values(["detector", "x0_clipping", "condition", "guidance"]).reset_index(drop=True)


def plot_calibration(table: pd.DataFrame, path: str | Path) -> None:
    """Each detector's FPR (on clean generations) and TPR (the same images with the trigger) against guidance, with
    95% intervals; a line per condition and sampler, the target FPR dashed."""
    detectors = sorted(table.detector.unique()) if len(table) else ["(no trigger detector)"]
    with saved_figure(path, 2, len(detectors), figsize=(4.2 * len(detectors), 6.5), squeeze=False) as (fig, axes):
        for j, detector in enumerate(detectors):
            subset = table[table.detector == detector] if len(table) else table
            for i, rate in enumerate(("fpr", "tpr")):
                ax = axes[i][j]
                for index, ((sampler, condition), line) in enumerate(subset.groupby(["x0_clipping", "condition"])):
                    line = line.sort_values("guidance")
                    ax.errorbar(line.guidance, line[rate], yerr=[line[rate] - line[f"{rate}_low"],
                                                                 line[f"{rate}_high"] - line[rate]],
                                marker="o", capsize=3, color=f"C{index}", label=f"c{condition}, x0 {sampler}")
                if rate == "fpr" and len(subset) and subset.target_fpr.notna().any():
                    ax.axhline(subset.target_fpr.dropna().iloc[0], color="black", linestyle="--", linewidth=1,
                               label="target FPR")
                source = ", ".join(sorted(subset.source.unique())) if len(subset) else ""
                ax.set_title(f"{detector}: {'false' if rate == 'fpr' else 'true'}-positive rate\n({source})", fontsize=9)
                ax.set_xlabel("guidance scale s")
                ax.set_ylim(-0.02, 1.02 if rate == "tpr" else max(0.1, float(subset.fpr_high.max()) + 0.02 if len(subset) else 0.1))
                ax.grid(alpha=0.3)
                ax.legend(fontsize=6)
