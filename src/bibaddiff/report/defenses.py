"""Castle walls (rule summarize_defenses): poisoned-data detection on the training set vs the generated sets, the
classifiers trained on each set, and the diffusion model as a classifier."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from bibaddiff.checks import check_int
from bibaddiff.defenses.detectors import compare_aurocs, load_detection_items
from bibaddiff.errors import BibaddiffError
from bibaddiff.metrics import percentile_interval, seed_bootstrap, wilson_interval
from bibaddiff.report.figures import saved_figure
from bibaddiff.report.origin import Origins, with_origin
from bibaddiff.utils import read_json

def defense_tables(detections: list[dict[str, Any]], classifier_infos: list[dict[str, Any]],
                   classifier_sets: list[dict[str, Any]], dm_results: list[dict[str, Any]],
                   attacks: dict[str, dict[str, Any]], *, seed: int = 0,
                   resamples: int = 1000) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Detection, train-on-generated and diffusion-classifier tables from the defence rules' outputs.

    Each detection result carries what its set is (``attack``, ``set``, and for a generated set the diffusion model's
    training ``seed`` and the ``guidance`` it was sampled at; :meth:`bibaddiff.plan.Plan.defense_descriptions`) and
    its per-image scores under ``items`` (:func:`bibaddiff.defenses.detectors.load_detection_items`);
    ``classifier_sets`` says the same of each classifier in ``classifier_infos``. ``seed`` and ``resamples`` drive
    the bootstrap of the AUROC differences."""
    def attack_columns(attack: str) -> dict[str, Any]:
        if attack not in attacks:
            raise BibaddiffError(f"unknown attack {attack!r} in defence results")
        return {"attack": attack, "poison_ratio": float(attacks[attack]["ratio"]), "trigger": attacks[attack]["trigger"]}

    training_table, standard = _train_on_generated_table(classifier_infos, classifier_sets, attacks, attack_columns)
    # The screening classifier of a set is the one trained on it; its ASR on the attack's own trigger says whether it
    # carries a backdoor for a detector to find.
    screening_asr = {(row.attack, row.trainset): row.asr for row in training_table.itertuples()
                     if row.attack in attacks and row.trigger == attacks[row.attack]["trigger"]}
    dm_rows = [{**attack_columns(result["attack"]), "trigger": row["trigger"], "seed": str(result["seed"]),
                "method": "diffusion classifier", "p_filter": row["p_filter"], "acc": row["acc"], "asr": row["asr"],
                "n_test": result.get("n_clean", math.nan), "n_attacked": result.get("n_triggered", math.nan)}
               for result in dm_results for row in result["rows"]]
    dm_pooled = _pooled_over_seeds(pd.DataFrame(dm_rows), ["attack", "poison_ratio", "trigger", "method", "p_filter"],
                                   {"acc": "n_test", "asr": "n_attacked"}) if dm_rows else pd.DataFrame()
    dm_table = pd.DataFrame(dm_rows + standard + dm_pooled.to_dict("records"))
    dm_table = _with_intervals(dm_table, {"acc": "n_test", "asr": "n_attacked"}) if "n_test" in dm_table else dm_table
    dm_table = dm_table.sort_values(["poison_ratio", "attack", "method", "seed", "p_filter"])
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
            if result.get("guidance") is None or result.get("seed") in (None, ""):
                raise BibaddiffError(f"detection set {result['set']!r} of {result['attack']} is neither 'training' nor "
                                     f"a generated set with a seed and a guidance scale")
            entry["generated"].append(result)
    rows = []
    for attack in sorted(sets, key=lambda a: (attack_columns(a)["poison_ratio"], a)):
        # An attack whose models' training set is not at hand (imported with a stated training share) has no
        # training-set result: its generated sets keep their AUROCs, and every training column is empty.
        training, generated = sets[attack]["training"], sets[attack]["generated"]
        if training is None and not generated:
            raise BibaddiffError(f"attack {attack!r} has no detection result")
        generated = sorted(generated, key=lambda r: (float(r["guidance"]), int(r["seed"])))
        guidances = sorted({float(r["guidance"]) for r in generated}) or [math.nan]
        asr_training = screening_asr.get((attack, "poisoned"), math.nan)
        for detector in (training or generated[0])["detectors"]:
            for scope in ("all", "target_class"):
                for guidance in guidances:
                    members = [r for r in generated if float(r["guidance"]) == guidance]
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


def _detection_rows(columns: dict[str, Any], detector: str, scope: str, guidance: float, training: dict[str, Any] | None,
                    members: list[dict[str, Any]], asr_training: float, asr_generated: list[float], seed: int,
                    resamples: int) -> list[dict[str, Any]]:
    """The per-seed rows and the pooled row of one (attack, detector, scope, guidance) cell."""
    comparison = compare_aurocs(None if training is None else _scope_items(training, detector, scope),
                                [_scope_items(r, detector, scope) for r in members], resamples=resamples, seed=seed)
    trained = {"n": 0, "n_poisoned": 0} if training is None else training["detectors"][detector][scope]
    # The definition the scores come from (e.g. published or probabilities for cognitive distillation); results
    # written before variants were recorded, and detectors with one definition, have none.
    variant = (training or members[0])["detectors"][detector].get("variant")
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
        rows.append({**base, "seed": str(result["seed"]), **training_columns,
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


def _train_on_generated_table(classifier_infos: list[dict[str, Any]], classifier_sets: list[dict[str, Any]],
                              attacks: dict[str, dict[str, Any]], attack_columns: Any
                              ) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """ACC and ASR of the classifiers trained on the clean, poisoned and generated sets; and the poisoned-set rows
    again as the diffusion classifier's "standard classifier" comparison.

    ``acc`` and ``asr`` are the last epoch's; ``acc_best_epoch`` and ``asr_best_epoch`` are the highest ACC and the
    highest ASR over the epochs (each its own epoch, both on the held-out set), what upstream's train-on-sample scripts
    log; nan for classifiers saved before per-epoch values were kept."""
    rows, standard = [], []
    for info, described in zip(classifier_infos, classifier_sets, strict=True):
        attack, trainset = described["attack"], described["set"]
        guidance = math.nan if described.get("guidance") is None else float(described["guidance"])
        for trigger, scores in info["evaluation"].items():
            row = {"trigger": trigger, "trainset": trainset, "seed": described.get("seed", ""),
                   "generated_guidance": guidance,
                   "acc": scores["acc"], "asr": scores["asr"],
                   "acc_best_epoch": scores.get("acc_best_epoch", math.nan),
                   "asr_best_epoch": scores.get("asr_best_epoch", math.nan),
                   "epochs": len(scores.get("acc_per_epoch", [])) or math.nan, "n_train": info.get("num_train"),
                   "n_test": scores.get("n_test", math.nan), "n_attacked": scores.get("n_attacked", math.nan)}
            if attack == "clean":
                # The clean-set classifier is the reference row of every attack that uses this trigger.
                rows += [{**attack_columns(a), **row} for a, spec in attacks.items() if spec["trigger"] == trigger]
            else:
                rows.append({**attack_columns(attack), **row})
            if trainset == "poisoned":
                standard.append({**attack_columns(attack), "trigger": trigger, "seed": "",
                                 "method": "standard classifier (poisoned set)", "p_filter": math.nan,
                                 "acc": scores["acc"], "asr": scores["asr"],
                                 "n_test": scores.get("n_test", math.nan), "n_attacked": scores.get("n_attacked", math.nan)})
    table = pd.DataFrame(rows)
    if table.empty:
        return table, standard
    table = pd.concat([table, _pooled_over_seeds(table[table.trainset.str.startswith("generated_")],
                                                 ["attack", "poison_ratio", "trigger", "generated_guidance"],
                                                 {"acc": "n_test", "asr": "n_attacked"})], ignore_index=True)
    table["trainset"] = [f"generated_pooled_s{row.generated_guidance:g}" if str(row.seed) == "pooled" else row.trainset
                         for row in table.itertuples()]
    table = _with_intervals(table, {"acc": "n_test", "asr": "n_attacked"})
    order = {"clean": 0, "poisoned": 1}
    table = table.sort_values(
        ["poison_ratio", "attack", "trainset"], key=lambda c: c.map(lambda v: order.get(v, 2)) if c.name == "trainset" else c)
    return table.reset_index(drop=True), standard


POOLED_RESAMPLES = 4000


def _pooled_over_seeds(table: pd.DataFrame, keys: list[str], sizes: dict[str, str], seed: int = 0) -> pd.DataFrame:
    """A row (seed "pooled") per group of ``keys`` with two or more seeds: each share in ``sizes`` (share -> the
    column of its per-seed image count) is the mean over seeds, with a 95% interval that resamples seeds, then images
    (:func:`bibaddiff.metrics.seed_bootstrap`), so that it carries the spread between the trained models. A group
    whose counts are unknown (results saved before they were kept) gets the mean without an interval."""
    rng = np.random.default_rng(seed)
    rows = []
    for key, group in table.groupby(keys, dropna=False, sort=True):
        if len(group) < 2:
            continue
        row = {**dict(zip(keys, key)), "seed": "pooled", "num_seeds": len(group)}
        for share, size in sizes.items():
            values = group[share].to_numpy(np.float64)
            row[share] = float(values.mean())
            counts = group[size].to_numpy(np.float64)
            if np.isnan(counts).any():
                row[f"{share}_low"], row[f"{share}_high"] = math.nan, math.nan
                continue
            n = counts.astype(np.int64)
            replicates = seed_bootstrap(np.rint(values * n).astype(np.int64), n, POOLED_RESAMPLES, rng)
            row[f"{share}_low"], row[f"{share}_high"] = percentile_interval(replicates)
            row[size] = int(n.sum())
        rows.append(row)
    return pd.DataFrame(rows)


def _with_intervals(table: pd.DataFrame, sizes: dict[str, str]) -> pd.DataFrame:
    """Wilson intervals for the per-seed rows' shares (a pooled row keeps its bootstrap interval)."""
    table = table.copy()
    for share, size in sizes.items():
        for bound in ("low", "high"):
            if f"{share}_{bound}" not in table:
                table[f"{share}_{bound}"] = math.nan
        single = (table.seed.astype(str) != "pooled") & table[size].notna() & table[share].notna()
        for index in table.index[single]:
            n = int(table.at[index, size])
            table.at[index, f"{share}_low"], table.at[index, f"{share}_high"] = wilson_interval(
                int(round(table.at[index, share] * n)), n)
    return table


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
        dm = table[(table.method == "diffusion classifier") & (table.seed.astype(str) != "pooled")].groupby(["attack", "trigger", "p_filter"], as_index=False)[["acc", "asr"]].mean()
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


def write_defense_summary(detection_files: list[str], detection_item_files: list[str], classifier_dirs: list[str],
                          diffusion_classifier_files: list[str], sets: Mapping[str, list[dict[str, Any]]],
                          attacks: dict[str, dict[str, Any]], outputs: Mapping[str, str], *, seed: int = 0,
                          origins: Origins | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The three castle-wall tables and their figures from the defence rules' outputs.

    ``sets`` says what each detection result and each classifier is (``detection``, ``classifiers``: lists of
    ``attack``, ``set``, ``seed``, ``guidance`` in the order of the files; :meth:`bibaddiff.plan.Plan.defense_descriptions`).
    ``outputs`` names the files: ``detection``, ``train_on_generated``, ``diffusion_classifier`` and their
    ``*_figure``; ``origins`` gives each row's ``origin`` (:meth:`bibaddiff.plan.Plan.origins`: a row of a real
    set, or a pooled one, has its attack's models' origins)."""
    # Each result with what its set is and its per-image scores, which the AUROC differences are bootstrapped from.
    detections = [{**read_json(path), **described, "items": load_detection_items(items)}
                  for path, items, described in zip(detection_files, detection_item_files, sets["detection"],
                                                     strict=True)]
    detection, training, dm_classifier = defense_tables(
        detections, [read_json(f"{path}/judge.json") for path in classifier_dirs], sets["classifiers"],
        [read_json(path) for path in diffusion_classifier_files], attacks, seed=seed)
    detection, training, dm_classifier = (with_origin(table, origins) for table in (detection, training, dm_classifier))
    detection.to_csv(outputs["detection"], index=False)
    training.to_csv(outputs["train_on_generated"], index=False)
    dm_classifier.to_csv(outputs["diffusion_classifier"], index=False)
    plot_detection(detection, outputs["detection_figure"])
    plot_train_on_generated(training, outputs["train_on_generated_figure"])
    plot_diffusion_classifier(dm_classifier, outputs["diffusion_classifier_figure"])
    for name, table in (("detection", detection), ("train on generated", training), ("diffusion classifier", dm_classifier)):
        print(f"== {name}\n{table.to_string(index=False)}")
    return detection, training, dm_classifier
