"""A trigger detector checked on what it judges: its error on a clean model's generations.

A detector trained on real images can be fooled by generated ones (on digits, real images take 17 grey levels and
every generation is off that grid). So each detector is calibrated on a *calibration draw* of the clean model: the
same cells (sampler, condition, guidance) as the measured ones, with a seed of their own, so that nothing is tuned on
the generations that are measured. Each calibration cell is cut into three interleaved parts:

- ``training``: extra negatives (and, with the trigger applied, positives) for the detector;
- ``threshold``: the decision threshold, set so that at most ``target_fpr`` of these clean generations are flagged
  (never below the detector's own decision, a positive logit margin);
- ``evaluation``: the false-positive rate (FPR) on these clean generations, and the true-positive rate (TPR) on the
  same images with the trigger applied afterwards (a blend at its poisoning strength, and across the detector's
  strength range).

Without a clean model, the detector is checked on held-out real images instead (the detector's own decision, FPR on
the clean images, TPR on the same images stamped); every row says which source was used.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from bibaddiff.errors import BibaddiffError

PARTS = ("training", "threshold", "evaluation")
SOURCES = ("clean_generations", "heldout_real")
# The threshold is a tail quantile: with fewer than this many clean images above it, it is mostly noise.
EXCEEDANCES_NEEDED = 5
# Below this TPR the correction (observed - FPR) / (TPR - FPR) divides the noise by a small number.
MINIMUM_TPR = 0.5


def check_target_fpr(target_fpr: Any) -> float:
    if isinstance(target_fpr, bool) or not isinstance(target_fpr, (int, float)) or not 0.0 < target_fpr < 0.5:
        raise BibaddiffError(f"judges.target_fpr must lie in (0, 0.5); got {target_fpr!r}")
    return float(target_fpr)


def threshold_images_needed(target_fpr: float) -> int:
    """Clean images a cell's threshold part needs so that about EXCEEDANCES_NEEDED of them lie above a threshold at
    ``target_fpr``."""
    return math.ceil(EXCEEDANCES_NEEDED / check_target_fpr(target_fpr) - 1e-9)


def calibration_images_needed(target_fpr: float) -> int:
    """Images per calibration cell: three parts, the threshold part as large as :func:`threshold_images_needed`."""
    return len(PARTS) * threshold_images_needed(target_fpr)


def check_calibration_size(num_images: int, target_fpr: float) -> None:
    needed = calibration_images_needed(target_fpr)
    if num_images < needed:
        raise BibaddiffError(f"judges.calibration_images is {num_images}, but a target FPR of {target_fpr} needs at "
                             f"least {needed} per cell ({threshold_images_needed(target_fpr)} clean generations in "
                             f"the threshold part, one of three parts); raise it or raise judges.target_fpr")


def grey_level_step(images: np.ndarray) -> float:
    """The typical gap between the grey levels a set uses (16 for digits' 17 levels, 1 for natural photographs)."""
    levels = np.unique(np.asarray(images))
    return float(np.median(np.diff(levels))) if len(levels) > 1 else 1.0


def dequantization_amplitude(setting: Any, images: np.ndarray) -> float:
    """judges.dequantization as grey levels: a number as given, "auto" half the set's grey-level step (none for a set
    that uses every level: rounding would undo it)."""
    check_dequantization(setting)
    if setting == "auto":
        step = grey_level_step(images)
        return step / 2.0 if step > 1.0 else 0.0
    return float(setting)


def check_dequantization(setting: Any) -> None:
    if setting == "auto":
        return
    if isinstance(setting, bool) or not isinstance(setting, (int, float)) or not 0.0 <= setting <= 64.0:
        raise BibaddiffError(f"judges.dequantization must be \"auto\" or a number of grey levels in [0, 64]; got {setting!r}")


def calibration_part(images: np.ndarray, part: str) -> np.ndarray:
    """One of the three interleaved parts of a calibration cell (every third image)."""
    if part not in PARTS:
        raise BibaddiffError(f"calibration part must be one of {', '.join(PARTS)}; got {part!r}")
    return images[PARTS.index(part)::len(PARTS)]


def decision_threshold(clean_scores: np.ndarray, target_fpr: float) -> float:
    """The smallest threshold t >= 0 on the logit margin such that at most ``target_fpr`` of the clean scores
    exceed it (an image is flagged when its score is > t)."""
    clean_scores = np.sort(np.asarray(clean_scores, np.float64))[::-1]
    if clean_scores.ndim != 1 or len(clean_scores) == 0 or not np.all(np.isfinite(clean_scores)):
        raise BibaddiffError("decision_threshold needs a non-empty 1-D array of finite scores")
    allowed = int(math.floor(check_target_fpr(target_fpr) * len(clean_scores) + 1e-9))
    return float(max(0.0, clean_scores[allowed])) if allowed < len(clean_scores) else 0.0


def detector_rates(model: Any, trigger: Any, clean_images: np.ndarray, threshold: float,
                   rng: np.random.Generator) -> dict[str, int]:
    """False positives on ``clean_images``, true positives on them with the trigger applied (``apply``: a blend at
    its poisoning strength, WaNet with the experiment's field) and with it as the detector is trained on it
    (``apply_for_detector``: a blend across its strength range)."""
    from bibaddiff.judges import trigger_scores

    def flagged(images: np.ndarray) -> int:
        return int(np.sum(trigger_scores(model, images) > threshold))

    return {"n": int(len(clean_images)), "false_positives": flagged(clean_images),
            "true_positives": flagged(trigger.apply(clean_images)),
            "true_positives_detector_range": flagged(trigger.apply_for_detector(clean_images, rng))}


def calibrate_on_generations(model: Any, trigger: Any, cells: Sequence[dict[str, Any]], target_fpr: float,
                             seed: int = 0, load: Any = None) -> list[dict[str, Any]]:
    """One row per calibration cell (dicts with ``x0_clipping``, ``condition``, ``guidance`` and ``path``): its
    threshold from the threshold part, the FPR and TPR counts on the evaluation part."""
    from bibaddiff.images import load_generated
    from bibaddiff.judges import trigger_scores

    load = load or load_generated
    needed = threshold_images_needed(target_fpr)
    rng = np.random.default_rng(seed)
    rows = []
    for cell in cells:
        images = load(cell["path"])
        threshold_part = calibration_part(images, "threshold")
        if len(threshold_part) < needed:
            raise BibaddiffError(f"{cell['path']}: {len(images)} calibration images give {len(threshold_part)} for the "
                                 f"threshold; a target FPR of {target_fpr} needs {needed} "
                                 f"(judges.calibration_images >= {calibration_images_needed(target_fpr)})")
        threshold = decision_threshold(trigger_scores(model, threshold_part), target_fpr)
        rows.append({**_cell_key(cell), "source": "clean_generations", "threshold": threshold,
                     "n_threshold": int(len(threshold_part)),
                     **detector_rates(model, trigger, calibration_part(images, "evaluation"), threshold, rng)})
    return rows


def calibrate_on_heldout(model: Any, trigger: Any, cells: Sequence[dict[str, Any]], heldout_images: np.ndarray,
                         seed: int = 0) -> list[dict[str, Any]]:
    """Without a clean model: the detector's own decision, checked on held-out real images; the same row for every
    cell."""
    rates = detector_rates(model, trigger, heldout_images, 0.0, np.random.default_rng(seed))
    return [{**_cell_key(cell), "source": "heldout_real", "threshold": 0.0, "n_threshold": 0, **rates}
            for cell in cells]


def _cell_key(cell: dict[str, Any]) -> dict[str, Any]:
    return {"x0_clipping": str(cell["x0_clipping"]), "condition": int(cell["condition"]),
            "guidance": float(cell["guidance"])}


def calibration_of_cell(calibration: dict[str, Any], cell: dict[str, Any]) -> dict[str, Any]:
    """The calibration row of a measured cell, or one line naming the detector and the cell."""
    key = _cell_key(cell)
    for row in calibration["rows"]:
        if _cell_key(row) == key:
            return row
    raise BibaddiffError(f"the calibration of trigger detector {calibration.get('trigger')!r} has no row for cell "
                         f"{key}; rerun calibrate_trigger_judge")


def check_calibration_settings(judges: dict[str, Any], has_clean_model: bool) -> None:
    """judges.target_fpr, judges.dequantization, and a calibration draw large enough for the target FPR (only
    needed where a clean model makes one)."""
    check_target_fpr(judges["target_fpr"])
    check_dequantization(judges["dequantization"])
    if has_clean_model:
        check_calibration_size(judges["calibration_images"], judges["target_fpr"])
