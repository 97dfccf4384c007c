"""What a sampler setting changes: an experiment's generations against the same models' generations under another
sampler (``generation.timesteps``, ``generation.precision``), image by image.

A variant is a small config layered on the experiment's config, as Snakemake layers a second ``--configfile``
(``configs/samplers/``). It keeps the models and the initial noise (which depends on the generation seed and the
condition only), so its cells pair image for image with the experiment's own at the scales both have:

    snakemake --cores 2 --configfile configs/guidance-digits.yaml
    snakemake --cores 2 --configfile configs/guidance-digits.yaml configs/samplers/quadratic.yaml
    snakemake --cores 2 --configfile configs/guidance-digits.yaml configs/samplers/bf16.yaml
    python benchmarks/compare_samplers.py --configfile configs/guidance-digits.yaml \
        --variant configs/samplers/quadratic.yaml --variant configs/samplers/bf16.yaml \
        --out results/experiments/guidance-digits-samplers

Both image sets of a pair are judged by the experiment's own judges: the content judge, and each trigger detector at
the experiment's calibrated threshold for that cell, so that a change is the sampler's and not a judge's. Writes
``samplers.csv`` and ``samplers.md``: per model and cell, the trigger ratio and the share of target-class content
under each sampler, the images whose trigger verdict changed in each direction with the exact McNemar p-value, and
the images whose content label changed; one more row per cell sums the seeds (a pooled count, not a model-level
test). Each variant's own tables (its own calibration draw and detector) hold its corrected trigger ratios.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bibaddiff.calibration import calibration_of_cell
from bibaddiff.config import validate_config
from bibaddiff.errors import BibaddiffError
from bibaddiff.images import load_generated
from bibaddiff.judges import load_judge, predict, trigger_scores
from bibaddiff.metrics import paired_change_p_value
from bibaddiff.plan import Cell, Plan, number
from bibaddiff.utils import read_json

COLUMNS = ["variant", "attack", "trigger", "seed", "x0_clipping", "condition", "guidance", "n",
           "trigger_ratio_base", "trigger_ratio_variant", "trigger_only_base", "trigger_only_variant",
           "trigger_change_p", "content_changed", "target_content_base", "target_content_variant",
           "detector_threshold"]


def merged(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``overlay`` laid over ``base`` as Snakemake merges config files: mappings key by key, anything else replaced."""
    result = dict(base)
    for key, value in overlay.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) \
            else value
    return result


def load_config(paths: list[Path]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for path in paths:
        if not path.is_file():
            raise BibaddiffError(f"{path}: no such config file")
        layer = yaml.safe_load(path.read_text()) or {}
        if not isinstance(layer, dict):
            raise BibaddiffError(f"{path}: a config file must hold a mapping")
        config = merged(config, layer)
    return validate_config(config)


def variant_name(plan: Plan, path: Path) -> str:
    return f"{path.stem} ({plan.experiment})"


def paired_cells(base: Plan, variant: Plan, guidance: list[float] | None) -> list[Cell]:
    """The cells that both plans generate (at the asked scales), or one line saying why there are none."""
    if base.results != variant.results:
        raise BibaddiffError(f"the variant's results lie in {variant.results}, the experiment's in {base.results}: "
                             "a variant must keep dataset.name")
    variant_cells = set(variant.cells)
    common = [Cell(*cell) for cell in base.cells if cell in variant_cells]
    if guidance is not None:
        common = [cell for cell in common if float(cell.guidance) in {float(s) for s in guidance}]
    if not common:
        raise BibaddiffError(f"experiment {base.experiment} and variant {variant.experiment} have no cell in common "
                             f"(x0_clipping, condition, guidance{' in --guidance' if guidance else ''})")
    return common


def compare(base: Plan, variant: Plan, name: str, cells: list[Cell], device: str) -> list[dict[str, Any]]:
    content_judge, _ = load_judge(base.content_judge, device)
    judges: dict[str, tuple[Any, dict[str, Any]]] = {}  # trigger -> (detector, calibration), loaded once
    rows = []
    variant_models = set(variant.models())
    for attack, seed in [model for model in base.models() if model in variant_models]:
        base_model, variant_model = base.model_name(attack, seed), variant.model_name(attack, seed)
        if base_model != variant_model:
            raise BibaddiffError(f"{attack} seed {seed}: the variant's model is {variant_model}, the experiment's "
                                 f"{base_model}; a variant must keep the models (diffusion and poisoning settings)")
        # Each cell's pair of image sets and their content labels, read once for all of the model's triggers.
        pairs = {cell: paired_images(base, variant, base_model, cell) for cell in cells}
        content = {cell: [predict(content_judge, batch) for batch in pair] for cell, pair in pairs.items()}
        for trigger in base.detected_triggers(attack):
            if trigger not in judges:
                judges[trigger] = (load_judge(base.trigger_judge(trigger), device)[0],
                                   read_json(base.calibration_file(trigger)))
            detector, calibration = judges[trigger]
            for cell in cells:
                threshold = calibration_of_cell(calibration, cell.as_params())["threshold"]
                triggered = [trigger_scores(detector, batch) > threshold for batch in pairs[cell]]
                rows.append(comparison_row(name, attack, trigger, str(seed), cell, threshold, triggered,
                                           content[cell]))
    return rows + pooled_rows(rows)


def paired_images(base: Plan, variant: Plan, model: str, cell: Cell) -> list[np.ndarray]:
    """A model's cell under the experiment's sampler and under the variant's, which must pair image for image."""
    images = [load_generated(plan.generated(model, cell.x0_clipping, cell.condition, number(cell.guidance)))
              for plan in (base, variant)]
    if images[0].shape != images[1].shape:
        raise BibaddiffError(f"{model} cell {cell}: {images[0].shape[0]} images under the experiment's sampler, "
                             f"{images[1].shape[0]} under the variant's; they must pair image for image (same "
                             "generation.num_images)")
    return images


def comparison_row(variant: str, attack: str, trigger: str, seed: str, cell: Cell, threshold: float,
                   triggered: list[np.ndarray], content: list[np.ndarray]) -> dict[str, Any]:
    only_base = int(np.sum(triggered[0] & ~triggered[1]))
    only_variant = int(np.sum(~triggered[0] & triggered[1]))
    n = len(triggered[0])
    return {"variant": variant, "attack": attack, "trigger": trigger, "seed": seed,
            "x0_clipping": cell.x0_clipping, "condition": int(cell.condition), "guidance": float(cell.guidance),
            "n": n, "trigger_ratio_base": float(np.mean(triggered[0])),
            "trigger_ratio_variant": float(np.mean(triggered[1])),
            "trigger_only_base": only_base, "trigger_only_variant": only_variant,
            "trigger_change_p": paired_change_p_value(only_base, only_variant),
            "content_changed": int(np.sum(content[0] != content[1])),
            "target_content_base": float(np.mean(content[0] == cell.condition)),
            "target_content_variant": float(np.mean(content[1] == cell.condition)),
            "detector_threshold": threshold}


def pooled_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (variant, attack, trigger, cell) summing its seeds' images, where there are two or more."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["variant"], row["attack"], row["trigger"], row["x0_clipping"], row["condition"], row["guidance"])
        groups.setdefault(key, []).append(row)
    pooled = []
    for members in groups.values():
        if len(members) < 2:
            continue
        n = sum(row["n"] for row in members)

        def share(column: str) -> float:
            return sum(row[column] * row["n"] for row in members) / n

        only_base = sum(row["trigger_only_base"] for row in members)
        only_variant = sum(row["trigger_only_variant"] for row in members)
        pooled.append({**{key: members[0][key] for key in ("variant", "attack", "trigger", "x0_clipping",
                                                            "condition", "guidance")},
                       "seed": "all", "n": n, "trigger_ratio_base": share("trigger_ratio_base"),
                       "trigger_ratio_variant": share("trigger_ratio_variant"),
                       "trigger_only_base": only_base, "trigger_only_variant": only_variant,
                       "trigger_change_p": paired_change_p_value(only_base, only_variant),
                       "content_changed": sum(row["content_changed"] for row in members),
                       "target_content_base": share("target_content_base"),
                       "target_content_variant": share("target_content_variant"),
                       "detector_threshold": ""})
    return pooled


def markdown(rows: list[dict[str, Any]], base: Plan) -> str:
    lines = [f"# Samplers compared on the generations of experiment {base.experiment}", "",
             "Pairs of images from the same model and initial noise; both judged by the experiment's judges (the "
             "trigger detector at its calibrated threshold of the cell). Trigger changes: images flagged under the "
             "experiment's sampler only / under the variant's only, with the exact McNemar p-value.", "",
             "| variant | attack | seed | s | n | trigger ratio (experiment) | trigger ratio (variant) | trigger changes "
             "| p | content labels changed | target content (experiment -> variant) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['attack']} ({row['trigger']}) | {row['seed']} | "
                     f"{number(row['guidance'])} | {row['n']} | {row['trigger_ratio_base']:.3f} | "
                     f"{row['trigger_ratio_variant']:.3f} | {row['trigger_only_base']} / {row['trigger_only_variant']} "
                     f"| {row['trigger_change_p']:.2g} | {row['content_changed']} "
                     f"({row['content_changed'] / row['n']:.1%}) | {row['target_content_base']:.3f} -> "
                     f"{row['target_content_variant']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", type=Path, required=True, help="the experiment's config")
    parser.add_argument("--variant", type=Path, action="append", required=True,
                        help="a config layered on --configfile that changes the sampler (repeatable)")
    parser.add_argument("--guidance", type=float, nargs="+", help="only these guidance scales (default: all shared)")
    parser.add_argument("--out", type=Path, required=True, help="folder for samplers.csv and samplers.md")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--directory", type=Path, default=Path("."),
                        help="the workflow's working directory, where results/ lies (as snakemake --directory)")
    args = parser.parse_args(argv)
    # Config files and --out are read from where the command runs; the plan's paths from the working directory.
    args.configfile, args.out = args.configfile.resolve(), args.out.resolve()
    args.variant = [path.resolve() for path in args.variant]
    os.chdir(args.directory)
    try:
        base = Plan(load_config([args.configfile]))
        rows = []
        for path in args.variant:
            variant = Plan(load_config([args.configfile, path]))
            rows += compare(base, variant, variant_name(variant, path), paired_cells(base, variant, args.guidance),
                            args.device)
    except BibaddiffError as error:
        print(f"compare_samplers: {error}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "samplers.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "samplers.md").write_text(markdown(rows, base))
    print(markdown(rows, base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
