"""Replication (rules summarize_replication, summarize_duplicate_poisoning): nearest-neighbour similarity of the
generations to the training images, and random vs duplicated-image poisoning."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from bibaddiff.data import read_records
from bibaddiff.errors import BibaddiffError
from bibaddiff.images import load_generated
from bibaddiff.metrics import GROUPS, percentile_interval, seed_bootstrap, share_bootstrap
from bibaddiff.report.figures import saved_figure
from bibaddiff.report.origin import Origins, with_origin
from bibaddiff.utils import read_json

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


def duplicate_poisoning_table(amplification: pd.DataFrame, attacks: dict[str, str]) -> pd.DataFrame:
    """Pooled target-class rows of the duplicate-poisoning ``attacks`` (each with its mode: random, duplicates):
    trigger ratio, G1, G2 with intervals."""
    rows = amplification[amplification.attack.isin(list(attacks)) & (amplification.seed.astype(str) == "pooled")
                         & amplification.is_target.astype(bool)]
    if rows.empty:
        raise BibaddiffError(f"no pooled target-class rows for the duplicate-poisoning attacks {list(attacks)}")
    rows = rows.assign(mode=rows.attack.map(attacks))
    columns = ["mode", "attack", "trigger", "poison_ratio", "x0_clipping", "guidance", "num_seeds", "n", "trigger_ratio",
               "trigger_ratio_low", "trigger_ratio_high", "trigger_ratio_corrected", "trigger_ratio_corrected_low",
               "trigger_ratio_corrected_high", "G1_ratio", "G1_ratio_low", "G1_ratio_high", "G2_ratio",
               "G2_ratio_low", "G2_ratio_high", "training_share", "amplification", "judge_warning"]
    columns += ["origin"] if "origin" in rows else []
    pooled = rows[columns].sort_values(["x0_clipping", "guidance", "mode"]).reset_index(drop=True)
    differences = duplicate_poisoning_differences(amplification, attacks)
    return pd.concat([pooled, differences], ignore_index=True) if not differences.empty else pooled


DIFFERENCE_SHARES = {"trigger_ratio": ("G1", "G2"), "G1_ratio": ("G1",), "G2_ratio": ("G2",)}


def duplicate_poisoning_differences(amplification: pd.DataFrame, attacks: dict[str, str], bootstrap_samples: int = 4000,
                                    seed: int = 0) -> pd.DataFrame:
    """Per target-class cell, the pooled share of the duplicates models minus the random models' (mode
    "duplicates - random"): trigger ratio, G1, G2, and the trigger ratio corrected for the cell's detector error, each
    with a 95% bootstrap interval. The two modes are different trained models, so each side resamples its own seeds,
    then images (:func:`bibaddiff.metrics.seed_bootstrap`); both sides share one detector calibration, so the
    corrected difference divides the raw one by a replicate of TPR - FPR."""
    by_mode = {mode: attack for attack, mode in attacks.items()}
    if set(by_mode) != {"random", "duplicates"}:
        raise BibaddiffError(f"duplicate poisoning compares the modes random and duplicates; got {sorted(by_mode)}")
    seeds = amplification[(amplification.seed.astype(str) != "pooled") & amplification.is_target.astype(bool)
                          & amplification.attack.isin(list(attacks))]
    rng = np.random.default_rng(seed)
    rows = []
    for (trigger, clipping, guidance), cell in seeds.groupby(["trigger", "x0_clipping", "guidance"], sort=True):
        sides = {mode: cell[cell.attack == attack] for mode, attack in by_mode.items()}
        if any(side.empty for side in sides.values()):
            continue
        sizes = {mode: side[list(GROUPS)].sum(axis=1).to_numpy(np.int64) for mode, side in sides.items()}
        row = {"mode": "duplicates - random", "attack": f"{by_mode['duplicates']} - {by_mode['random']}",
               "trigger": trigger, "poison_ratio": float(sides["duplicates"].poison_ratio.iloc[0]),
               "x0_clipping": clipping, "guidance": guidance,
               "num_seeds": f"{len(sizes['duplicates'])} - {len(sizes['random'])}",
               "n": int(sizes["duplicates"].sum() + sizes["random"].sum())}
        raw_trigger = None
        for name, parts in DIFFERENCE_SHARES.items():
            counts = {mode: side[list(parts)].sum(axis=1).to_numpy(np.int64) for mode, side in sides.items()}
            replicates = {mode: seed_bootstrap(counts[mode], sizes[mode], bootstrap_samples, rng) for mode in counts}
            means = {mode: float(np.mean(counts[mode] / sizes[mode])) for mode in counts}
            row[name] = means["duplicates"] - means["random"]
            row[f"{name}_low"], row[f"{name}_high"] = percentile_interval(replicates["duplicates"] - replicates["random"])
            if name == "trigger_ratio":
                raw_trigger = replicates["duplicates"] - replicates["random"]
        row.update(_corrected_difference(sides["duplicates"], row["trigger_ratio"], raw_trigger, bootstrap_samples, rng))
        rows.append(row)
    return pd.DataFrame(rows)


def _corrected_difference(side: pd.DataFrame, difference: float, replicates: np.ndarray, samples: int,
                          rng: np.random.Generator) -> dict[str, float]:
    """The raw difference of two trigger ratios divided by the detector's TPR - FPR (the FPR cancels), with an
    interval that also resamples the calibration; nan where the cell has no calibration."""
    size, fpr, tpr = (side[name].iloc[0] if name in side else math.nan
                      for name in ("calibration_n", "detector_fpr", "detector_tpr"))
    if any(pd.isna(value) for value in (size, fpr, tpr)) or tpr <= fpr:
        return {"trigger_ratio_corrected": math.nan, "trigger_ratio_corrected_low": math.nan,
                "trigger_ratio_corrected_high": math.nan}
    # The table keeps the calibration's rates and size; its counts are their products.
    size = int(size)
    false_positives, true_positives = round(fpr * size), round(tpr * size)
    gap = share_bootstrap(true_positives, size, samples, rng) - share_bootstrap(false_positives, size, samples, rng)
    with np.errstate(divide="ignore", invalid="ignore"):
        corrected = np.where(gap > 0, replicates / gap, np.nan)
    low, high = percentile_interval(corrected)
    return {"trigger_ratio_corrected": difference / ((true_positives - false_positives) / size),
            "trigger_ratio_corrected_low": low, "trigger_ratio_corrected_high": high}


def write_replication_summary(summary_files: list[str], neighbour_files: list[str], train_dirs: list[str],
                              cell_files: list[str], cells_per_model: int, target: int,
                              outputs: Mapping[str, str], origins: Origins | None = None) -> pd.DataFrame:
    """The replication table, the similarity distributions and the most similar (generated, training) pairs, from
    every model's replication result (``summary_files``, ``neighbour_files``), its training set and its cells (in
    model order, ``cells_per_model`` each). ``outputs`` names the files: ``table``, ``similarity``, ``pairs``;
    ``origins`` gives each model's origin (:meth:`bibaddiff.plan.Plan.origins`)."""
    summaries = [read_json(path) for path in summary_files]
    neighbours = [dict(np.load(path)) for path in neighbour_files]
    table = with_origin(replication_table(summaries), origins)
    table.to_csv(outputs["table"], index=False)
    plot_replication_similarity(summaries, neighbours, target, outputs["similarity"])
    cells = [list(cell_files[k * cells_per_model:(k + 1) * cells_per_model]) for k in range(len(summaries))]
    trains = {path: read_records(path) for path in dict.fromkeys(train_dirs)}
    plot_replication_pairs(summaries, neighbours, cells, [trains[path] for path in train_dirs], target, outputs["pairs"])
    print(table.to_string(index=False))
    return table


def write_duplicate_poisoning_table(amplification_file: str | Path, attacks: dict[str, str], output: str | Path
                                    ) -> pd.DataFrame:
    """Random vs duplicated-image poisoning, from the trigger-amplification table (same judges, intervals)."""
    table = duplicate_poisoning_table(pd.read_csv(amplification_file), attacks)
    table.to_csv(output, index=False)
    print(table.to_string(index=False))
    return table
