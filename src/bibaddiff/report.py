"""Summary tables and figures from the per-model metric files."""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from PIL import Image

from bibaddiff.errors import BibaddiffError
from bibaddiff.images import load_generated
from bibaddiff.metrics import GROUPS, pool_counts, summarize_counts

KEYS = ["attack", "trigger", "poison_ratio", "x0_clipping", "condition", "is_target", "guidance"]
# Left empty for a trigger judged for content only (the relabel-only control changes no pixel, so nothing in a
# generation can carry it); its G1 is the generations with wrong content, its G4 those with the right content.
TRIGGER_COLUMNS = ["trigger_ratio", "trigger_ratio_low", "trigger_ratio_high", "amplification", "amplification_low",
                   "amplification_high", "amplified", "G2", "G2_ratio", "G2_ratio_low", "G2_ratio_high", "G3", "G3_ratio",
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


def amplification_table(model_metrics: list[dict[str, Any]], accuracy_floor: float = 0.95) -> pd.DataFrame:
    """Per-seed rows and a pooled row (seed = "pooled") per attack, trigger, sampler, condition and guidance scale."""
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
        for _, record in group.iterrows():
            table.append({**dict(zip(KEYS, key)), "seed": record["seed"], **judges,
                          **summarize_counts(record[list(GROUPS)].to_dict(), triggered, total)})
        table.append({**dict(zip(KEYS, key)), "seed": "pooled", "num_seeds": len(group), **judges,
                      **summarize_counts(pool_counts(group.to_dict("records")), triggered, total)})
    frame = pd.DataFrame(table)
    content_only = ~frame.trigger_judged.astype(bool)
    if content_only.any():
        frame["amplified"] = frame["amplified"].astype(object)
        frame.loc[content_only, "amplified"] = None
        frame.loc[content_only, [c for c in TRIGGER_COLUMNS if c != "amplified"]] = np.nan
    frame["judge_warning"] = [_judge_warning(row, accuracy_floor) for row in frame.itertuples()]
    first = KEYS + ["seed", "num_seeds", "n", "trigger_ratio", "trigger_ratio_low", "trigger_ratio_high",
                    "training_share", "amplification", "amplification_low", "amplification_high", "amplified",
                    "mismatch_ratio", "G1_ratio", "G2_ratio", "G3_ratio", "G4_ratio", "judge_warning"]
    return frame[first + [c for c in frame.columns if c not in first]]


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
    the pooled trigger ratio with its Wilson interval, its mean and spread over training seeds, and its split into
    G1 and G2, against the training share. Duplicate-poisoning attacks are left out (they have a table of their own).
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
                                               "amplification_low", "amplification_high", "amplified",
                                               "judge_warning")},
        })
    return pd.DataFrame(out)


def plot_amplification_vs_ratio(frame: pd.DataFrame, path: str | Path) -> None:
    """Per poisoning ratio, the training share beside the generated trigger ratio split into G1 and G2 (pooled
    over seeds, 95% Wilson interval; dots: single seeds); a row per trigger and sampler, a column per guidance."""
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
                   dm_results: list[dict[str, Any]], attacks: dict[str, dict[str, Any]]
                   ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Detection, train-on-generated and diffusion-classifier tables from the defence rules' outputs."""
    def attack_columns(attack: str) -> dict[str, Any]:
        if attack not in attacks:
            raise BibaddiffError(f"unknown attack {attack!r} in defence results")
        return {"attack": attack, "poison_ratio": float(attacks[attack]["ratio"]), "trigger": attacks[attack]["trigger"]}

    training_table, standard = _train_on_generated_table(classifier_infos, classifier_paths, attacks, attack_columns)
    dm_rows = [{**attack_columns(result["attack"]), "trigger": row["trigger"], "seed": str(result["seed"]),
                "method": "diffusion classifier", "p_filter": row["p_filter"], "acc": row["acc"], "asr": row["asr"]}
               for result in dm_results for row in result["rows"]]
    dm_table = pd.DataFrame(dm_rows + standard).sort_values(["poison_ratio", "attack", "method", "seed", "p_filter"])
    return _detection_table(detections, attack_columns), training_table, dm_table.reset_index(drop=True)


def _detection_table(detections: list[dict[str, Any]], attack_columns: Any) -> pd.DataFrame:
    """Each AUROC and TPR at 5% FPR with its bootstrap interval (``*_low``, ``*_high``; nan for results written
    before detection had intervals), training set beside generated sets. Over several generated sets of one guidance
    (training seeds) the estimate is their mean and the interval the envelope of theirs (lowest low, highest high),
    a conservative span; with one generated set it is that set's interval."""
    bounds = [f"{m}{b}" for m in ("auroc", "tpr_at_5_fpr") for b in ("_low", "_high")]
    long = []
    for result in detections:
        kind = "training" if result["set"] == "training" else "generated"
        for detector, scores in result["detectors"].items():
            for scope in ("all", "target_class"):
                long.append({**attack_columns(result["attack"]), "detector": detector, "scope": scope, "kind": kind,
                             "set": result["set"],
                             **{k: scores[scope][k] for k in ("auroc", "tpr_at_5_fpr", "n", "n_poisoned")},
                             **{k: scores[scope].get(k, math.nan) for k in bounds}})
    long = pd.DataFrame(long)
    long["generated_guidance"] = [generated_set_guidance(name) for name in long["set"]]
    keys = ["attack", "trigger", "poison_ratio", "detector", "scope"]
    training = long[long.kind == "training"].set_index(keys)
    # A set without an interval leaves the envelope unknown (nan), not narrower. A generated set in which the trigger
    # detector flagged nothing has no AUROC at all: it counts in the sizes and in generated_sets, but not in the
    # estimate or its envelope (generated_sets_scored says how many sets these come from).
    lowest, highest = (lambda v: v.min(skipna=False)), (lambda v: v.max(skipna=False))
    group = keys + ["generated_guidance"]
    generated_rows = long[long.kind == "generated"]
    sizes = generated_rows.groupby(group, dropna=False).agg(
        n_generated=("n", "sum"), n_flagged_generated=("n_poisoned", "sum"), generated_sets=("set", "count"))
    scores = generated_rows[generated_rows["auroc"].notna()].groupby(group, dropna=False).agg(
        auroc_generated=("auroc", "mean"), auroc_generated_low=("auroc_low", lowest),
        auroc_generated_high=("auroc_high", highest), tpr_at_5_fpr_generated=("tpr_at_5_fpr", "mean"),
        tpr_at_5_fpr_generated_low=("tpr_at_5_fpr_low", lowest), tpr_at_5_fpr_generated_high=("tpr_at_5_fpr_high", highest),
        generated_sets_scored=("set", "count"))
    generated = scores.join(sizes, how="right")
    generated["generated_sets_scored"] = generated["generated_sets_scored"].fillna(0).astype(int)
    detection = pd.DataFrame({
        "auroc_training": training["auroc"], "auroc_training_low": training["auroc_low"],
        "auroc_training_high": training["auroc_high"], "tpr_at_5_fpr_training": training["tpr_at_5_fpr"],
        "tpr_at_5_fpr_training_low": training["tpr_at_5_fpr_low"],
        "tpr_at_5_fpr_training_high": training["tpr_at_5_fpr_high"],
        "n_training": training["n"], "n_poisoned_training": training["n_poisoned"],
    }).reset_index().merge(generated.reset_index(), on=keys, how="outer")
    detection = detection[keys + ["generated_guidance"] + [c for c in detection.columns
                                                           if c not in keys and c != "generated_guidance"]]
    detection["auroc_gain"] = detection["auroc_generated"] - detection["auroc_training"]
    # "Easier on generated data" is claimed only when the two 95% intervals do not overlap.
    detection["auroc_generated_higher"] = detection["auroc_generated_low"] > detection["auroc_training_high"]
    return detection


def _train_on_generated_table(classifier_infos: list[dict[str, Any]], classifier_paths: list[str],
                              attacks: dict[str, dict[str, Any]], attack_columns: Any
                              ) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """ACC and ASR of the classifiers trained on the clean, poisoned and generated sets; and the poisoned-set rows
    again as the diffusion classifier's "standard classifier" comparison."""
    rows, standard = [], []
    for info, path in zip(classifier_infos, classifier_paths):
        attack, trainset = Path(path).parts[-2], Path(path).parts[-1]
        for trigger, scores in info["evaluation"].items():
            row = {"trigger": trigger, "trainset": trainset, "generated_guidance": generated_set_guidance(trainset),
                   "acc": scores["acc"], "asr": scores["asr"], "n_train": info.get("num_train")}
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


def generated_set_guidance(name: str) -> float:
    """The guidance scale in a generated set's name (``generated_seed<k>_s<guidance>``); nan for other sets."""
    match = re.fullmatch(r"generated_seed\d+_s(\d+(?:\.\d+)?)", str(name))
    return float(match.group(1)) if match else math.nan


def plot_detection(detection: pd.DataFrame, path: str | Path) -> None:
    """AUROC on the training set vs on generated data, per detector, one panel per attack, with the bootstrap
    intervals as error bars where the table has them."""
    table = detection[detection.scope == "all"]
    panels = sorted(table.groupby(["attack", "generated_guidance"], dropna=False).groups,
                    key=lambda key: (table[table.attack == key[0]].poison_ratio.iloc[0], key[0], key[1]))
    size = (4.5 * len(panels), 3.8)
    with saved_figure(path, 1, len(panels), figsize=size, squeeze=False, sharey=True) as (fig, axes):
        for ax, (attack, guidance) in zip(axes[0], panels):
            rows = table[(table.attack == attack)
                         & ((table.generated_guidance == guidance) | (table.generated_guidance.isna() & pd.isna(guidance)))]
            x = np.arange(len(rows))
            for offset, kind, label in ((-0.2, "training", "poisoned training set"), (0.2, "generated", "generated set")):
                value, low, high = (f"auroc_{kind}", f"auroc_{kind}_low", f"auroc_{kind}_high")
                error = None
                if low in rows and high in rows:
                    error = np.stack([rows[value] - rows[low], rows[high] - rows[value]]).astype(float)
                    error = np.clip(np.nan_to_num(error), 0, None)
                ax.bar(x + offset, rows[value], 0.4, yerr=error, capsize=2, error_kw={"linewidth": 0.8}, label=label)
            ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
            ax.set_xticks(x, rows.detector, rotation=30, ha="right", fontsize=8)
            ax.set_title(attack if pd.isna(guidance) else f"{attack}, generated at s={guidance:g}", fontsize=9)
            ax.set_ylim(0, 1.02)
        axes[0][0].set_ylabel("AUROC")
        axes[0][0].legend(fontsize=7)


def plot_train_on_generated(training: pd.DataFrame, path: str | Path) -> None:
    """ACC and ASR of classifiers trained on the clean, poisoned and generated sets, per attack."""
    attacks = list(dict.fromkeys(training.attack))
    size = (max(7, 1.6 * len(training) / max(1, len(attacks)) * len(attacks)), 3.8)
    with saved_figure(path, 1, 2, figsize=size) as (fig, axes):
        labels = [f"{r.attack}\n{r.trainset}" for r in training.itertuples()]
        for ax, metric in zip(axes, ("acc", "asr")):
            colors = ["C2" if t == "clean" else "C3" if t == "poisoned" else "C0" for t in training.trainset]
            ax.bar(range(len(training)), training[metric], color=colors)
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


QUALITY_COLUMNS = ["model", "attack", "trigger", "p", "seed", "guidance", "n", "metric", "value", "low", "high", "interval"]


def quality_table(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (model, metric) from the quality stage's per-model results: FID/KID (``fid``, ``kid``: Inception
    features; ``fid_judge``, ``kid_judge``: the content judge's), ``clip_score``, each with its interval."""
    if not results:
        raise BibaddiffError("quality_table needs at least one model's quality result")
    rows = []
    for result in results:
        missing = {"model", "attack", "p", "seed", "guidance", "n", "rows"} - set(result)
        if missing:
            raise BibaddiffError(f"a quality result lacks {', '.join(sorted(missing))}")
        for row in result["rows"]:
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
