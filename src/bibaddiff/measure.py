"""Judge every generated cell of one model: G1-G4 counts plus the training share they are compared with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bibaddiff.calibration import calibration_of_cell
from bibaddiff.data import DatasetRecords, ImageDataset
from bibaddiff.errors import BibaddiffError
from bibaddiff.images import load_generated
from bibaddiff.judges import load_judge, predict, trigger_scores
from bibaddiff.metrics import StatedShare, generation_groups, training_share


def measure_cells(cells: list[dict[str, Any]], training_set: ImageDataset | DatasetRecords | StatedShare,
                  content_judge_dir: str | Path,
                  trigger_judge_dirs: dict[str, str | Path | None], device: str = "auto",
                  calibrations: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One record per (cell, trigger) with G1-G4 counts, the training share and the judges' held-out scores.

    ``cells`` holds dicts with ``x0_clipping`` (the sampler), ``condition``, ``guidance`` and ``path`` (a uint8
    ``.npy`` of generations).
    The training share counts images flagged ``poisoned`` in ``training_set``: a clean set has none. Only its labels
    and flags are read, so its records (no pixels) are enough. For a model whose training set is not at hand (an
    import that states its share), ``training_set`` is a :class:`~bibaddiff.metrics.StatedShare`; each record then
    has ``training_share_stated`` and no counts.

    A trigger whose judge is None (the relabel-only control, which changes no pixel) is judged for content only:
    its record has ``trigger_judged`` False, G1 counts the generations with wrong content, G4 those with the
    right content, and G2 = G3 = 0; the summary leaves its trigger columns empty.

    ``calibrations`` (trigger name -> the detector's calibration, :mod:`bibaddiff.calibration`) gives each cell its
    decision threshold, and each record carries that cell's calibration counts, from which the summary corrects the
    trigger ratio. A detector without a calibration flags by its own decision (a positive logit margin).
    """
    calibrations = calibrations or {}
    unknown = sorted(set(calibrations) - set(trigger_judge_dirs))
    if unknown:
        raise BibaddiffError(f"calibrations given for triggers that are not measured: {', '.join(unknown)}")
    content_model, content_info = load_judge(content_judge_dir, device)
    detectors = {name: None if path is None else load_judge(path, device) for name, path in trigger_judge_dirs.items()}
    records = []
    for cell in cells:
        images = load_generated(cell["path"])
        condition, guidance = int(cell["condition"]), float(cell["guidance"])
        content = predict(content_model, images)
        if isinstance(training_set, StatedShare):
            triggered, total, stated = None, None, {"training_share_stated": training_set.at(condition, guidance)}
        else:
            triggered, total = training_share(training_set.labels, training_set.poisoned, condition, guidance)
            stated = {}
        for name, judge in detectors.items():
            if judge is None:
                calibration_detail = calibration_columns(None, None)
                right = int(np.sum(content == condition))
                groups = {"G1": len(content) - right, "G2": 0, "G3": 0, "G4": right}
                detector_accuracy = None
            else:
                detector, detector_info = judge
                cell_row = calibration_of_cell(calibrations[name], cell) if name in calibrations else None
                threshold = cell_row["threshold"] if cell_row else 0.0
                calibration_detail = calibration_columns(calibrations.get(name), cell_row)
                groups = generation_groups(content, trigger_scores(detector, images) > threshold, condition)
                detector_accuracy = detector_info["metrics"]["heldout_accuracy"]
            records.append({
                "trigger": name,
                "trigger_judged": judge is not None,
                "x0_clipping": cell["x0_clipping"],
                "condition": condition,
                "guidance": guidance,
                **groups,
                "training_triggered": triggered,
                "training_total": total,
                **stated,
                "content_judge_accuracy": content_info["metrics"]["heldout_accuracy"],
                "detector_accuracy": detector_accuracy,
                **calibration_detail,
            })
    return records


def calibration_columns(calibration: dict[str, Any] | None, row: dict[str, Any] | None) -> dict[str, Any]:
    """The detector variant, the cell's threshold and its calibration counts (``row``: the cell's calibration row),
    or empty values where there are none."""
    if calibration is None or row is None:
        return {"detector_negatives": None, "calibration_source": None, "detector_threshold": None,
                "calibration_n": None, "calibration_false_positives": None, "calibration_true_positives": None}
    return {"detector_negatives": calibration["detector_negatives"], "calibration_source": row["source"],
            "detector_threshold": row["threshold"], "calibration_n": row["n"],
            "calibration_false_positives": row["false_positives"], "calibration_true_positives": row["true_positives"]}
