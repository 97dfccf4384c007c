"""Trigger amplification (rule summarize): the per-seed and pooled table of every model's G1-G4 counts, corrected
for each trigger detector's calibration, the table against the poisoning ratio, the detectors' calibration table,
and their figures."""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from PIL import Image

from bibaddiff.calibration import MINIMUM_TPR
from bibaddiff.checks import check_int
from bibaddiff.errors import BibaddiffError
from bibaddiff.metrics import (GROUPS, corrected_bootstrap, corrected_ratio, heterogeneity_p_value, percentile_interval,
                               pool_counts, seed_bootstrap, share_bootstrap, summarize_counts, wilson_interval)
from bibaddiff.report.figures import saved_figure
from bibaddiff.report.origin import Origins, origin_of, with_origin
from bibaddiff.utils import read_json

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
    if "training_share_stated" not in raw:
        raw["training_share_stated"] = None  # every model's training set was at hand
    for key, group in raw.groupby(KEYS, sort=True):
        shares = group[["training_triggered", "training_total", "training_share_stated"]].drop_duplicates()
        if len(shares) != 1:
            raise BibaddiffError(f"seeds of {dict(zip(KEYS, key))} were trained on different datasets (or state "
                                 "different training shares)")
        triggered, total, stated = _share_of(shares.iloc[0])
        judges = {"content_judge_accuracy": group["content_judge_accuracy"].min(),
                  "detector_accuracy": group["detector_accuracy"].min(),
                  "trigger_judged": bool(group["trigger_judged"].all())}
        calibration = _group_calibration(group, dict(zip(KEYS, key)))
        rng = np.random.default_rng([seed, zlib.crc32(repr(key).encode())])
        for _, record in group.iterrows():
            counts = summarize_counts(record[list(GROUPS)].to_dict(), triggered, total, stated_share=stated)
            table.append({**dict(zip(KEYS, key)), "seed": record["seed"], **judges, **counts, "interval": "wilson",
                          **_corrected_columns([counts["G1"] + counts["G2"]], [counts["n"]], calibration,
                                               counts["training_share"], bootstrap_samples, rng)})
        table.append({**dict(zip(KEYS, key)), "seed": "pooled", "num_seeds": len(group), **judges,
                      **_pooled_counts(group, triggered, total, calibration, bootstrap_samples, rng, stated)})
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


def _share_of(shares: pd.Series) -> tuple[int | None, int | None, float | None]:
    """(triggered, total, None) of a counted training share; (None, None, share) of a stated one."""
    stated = shares["training_share_stated"]
    if stated is not None and not pd.isna(stated):
        return None, None, float(stated)
    return int(shares["training_triggered"]), int(shares["training_total"]), None


def _pooled_counts(group: pd.DataFrame, triggered: int | None, total: int | None, calibration: dict[str, Any] | None,
                   samples: int, rng: np.random.Generator, stated: float | None = None) -> dict[str, Any]:
    """The pooled row of a cell's seeds: the mean over seeds of every share (seeds have equal sizes), and, with
    several seeds, intervals from a bootstrap over seeds, then images, so that they carry the spread between seeds."""
    row = summarize_counts(pool_counts(group.to_dict("records")), triggered, total, stated_share=stated)
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


def amplification_vs_ratio(table: pd.DataFrame, duplicate_attacks: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """Target-class rows per trigger, sampler, guidance scale and poisoning ratio p (the clean control is p = 0):
    the pooled trigger ratio with its interval over seeds and images, raw and corrected for the detector's error,
    its mean and spread over training seeds, and its split into G1 and G2, against the training share. The
    ``duplicate_attacks`` are left out (they have a table of their own: :func:`duplicate_poisoning_table`).
    """
    rows = table[table.is_target.astype(bool) & ~table.attack.isin(list(duplicate_attacks))]
    if rows.empty:
        raise BibaddiffError("no target-class rows to plot against the poisoning ratio")
    keys = ["trigger", "x0_clipping", "guidance", "poison_ratio"]
    out = []
    for key, group in rows.groupby(keys, sort=True):
        pooled = group[group.seed.astype(str) == "pooled"].iloc[0]
        per_seed = group[group.seed.astype(str) != "pooled"].trigger_ratio.to_numpy(float)
        out.append({
            **dict(zip(keys, key)), "attack": pooled.attack, "num_seeds": len(per_seed), "n": int(pooled.n),
            "training_share": pooled.training_share, **({"origin": pooled.origin} if "origin" in group else {}),
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


def write_amplification_summary(metric_files: list[str], calibration_files: list[str],
                                grids: list[tuple[dict[str, Any], str]], outputs: Mapping[str, str], *,
                                accuracy_floor: float, bootstrap_samples: int, seed: int, target: int,
                                duplicate_attacks: list[str] | tuple[str, ...] = (), origins: Origins | None = None
                                ) -> pd.DataFrame:
    """The stage's tables and figures from every model's metrics file and every detector's calibration file.
    ``origins`` (:meth:`bibaddiff.plan.Plan.origins`) gives each row's ``origin``; a calibration row on clean
    generations has the origin of the clean model that drew them.

    ``grids``: each target-class sample grid with what it shows (``attack``, ``guidance``); ``outputs`` names the
    files: ``table``, ``ratio_figure``, ``groups_figure``, ``guidance_figure``, ``ratio_table``, ``by_ratio_figure``,
    ``samples``, ``calibration_table``, ``calibration_figure``. Returns the amplification table."""
    calibration = calibration_table([read_json(path) for path in calibration_files])
    drawn_by = origin_of(origins, "clean", next(iter(origins["clean"]))) if origins and "clean" in origins else ""
    calibration["origin"] = [drawn_by if source == "clean_generations" else "" for source in calibration.source]
    calibration.to_csv(outputs["calibration_table"], index=False)
    plot_calibration(calibration, outputs["calibration_figure"])
    print(calibration[["detector", "source", "x0_clipping", "condition", "guidance", "n", "fpr", "fpr_high", "tpr",
                       "tpr_detector_range"]].to_string(index=False))
    for detector in sorted(set(calibration.loc[~calibration.correction_usable.astype(bool), "detector"])):
        print(f"WARNING: trigger detector {detector!r} has a TPR below 0.5 on generations in some cells: their "
              "trigger ratios are not corrected (flagged in correction_warning)")
    table = with_origin(amplification_table([read_json(path) for path in metric_files], accuracy_floor,
                                            bootstrap_samples, seed), origins)
    table.to_csv(outputs["table"], index=False)
    plot_trigger_ratio(table, outputs["ratio_figure"])
    plot_generation_groups(table, outputs["groups_figure"])
    plot_target_vs_guidance(table, outputs["guidance_figure"])
    by_ratio = amplification_vs_ratio(table, duplicate_attacks)
    by_ratio.to_csv(outputs["ratio_table"], index=False)
    plot_amplification_vs_ratio(by_ratio, outputs["by_ratio_figure"])
    plot_sample_grids({(shown["attack"], float(shown["guidance"])): path for shown, path in grids}, outputs["samples"],
                      f"target class {target}: first 64 generations")
    flagged = table[table.judge_warning != ""]
    if len(flagged):
        print(f"WARNING: {len(flagged)} summary rows are flagged: {sorted(set(flagged.judge_warning))}")
    pooled = table[(table.seed == "pooled") & table.is_target]
    print(pooled[["attack", "trigger", "x0_clipping", "guidance", "n", "trigger_ratio", "trigger_ratio_low",
                  "trigger_ratio_high", "trigger_ratio_corrected", "training_share", "amplification_corrected",
                  "amplified", "G1_ratio", "G2_ratio"]].to_string(index=False))
    return table
