"""The calibrated instrument: detector thresholds and error rates, the corrected trigger ratio and its bootstrap,
seed-level intervals, and the summary columns built from them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bibaddiff.calibration import (calibrate_on_generations, calibrate_on_heldout, calibration_images_needed,
                                   calibration_of_cell, calibration_part, check_calibration_settings, decision_threshold,
                                   dequantization_amplitude, grey_level_step, threshold_images_needed)
from bibaddiff.errors import BibaddiffError
from bibaddiff.metrics import (corrected_bootstrap, corrected_ratio, heterogeneity_p_value, percentile_interval,
                               seed_bootstrap, share_bootstrap)
from bibaddiff.report.amplification import amplification_table, calibration_table, plot_calibration
from bibaddiff.triggers import build_trigger


# ------------------------------------------------------------------------------------------------ correction
def test_corrected_ratio_by_hand():
    # 30% flagged, FPR 10%, TPR 90%: (0.3 - 0.1) / (0.9 - 0.1) = 0.25 truly carry the trigger.
    assert corrected_ratio(0.3, 0.1, 0.9) == pytest.approx(0.25)
    # Made-up counts: 120 of 400 flagged, 6 of 200 clean generations flagged, 180 of 200 triggered ones caught.
    assert corrected_ratio(120 / 400, 6 / 200, 180 / 200) == pytest.approx((0.30 - 0.03) / (0.90 - 0.03))
    assert corrected_ratio(0.02, 0.05, 0.9) == 0.0  # below the FPR: clipped at 0
    assert corrected_ratio(0.95, 0.0, 0.9) == 1.0  # above the TPR: clipped at 1
    assert math.isnan(corrected_ratio(0.3, 0.5, 0.5))  # a detector that tells nothing


def test_corrected_ratio_recovers_a_simulated_truth():
    # Simulate a detector with FPR 0.08 and TPR 0.85 on a cell where 40% truly carry the trigger.
    rng = np.random.default_rng(0)
    truth = rng.random(200_000) < 0.4
    flagged = np.where(truth, rng.random(truth.size) < 0.85, rng.random(truth.size) < 0.08)
    assert corrected_ratio(flagged.mean(), 0.08, 0.85) == pytest.approx(0.4, abs=0.005)


def test_seed_bootstrap_with_one_seed_matches_the_binomial_interval():
    # One seed, many images: the bootstrap's 95% interval is the normal approximation's.
    replicates = seed_bootstrap([300], [1000], 20_000, np.random.default_rng(1))
    low, high = percentile_interval(replicates)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 1000)
    assert low == pytest.approx(0.3 - half, abs=0.003)
    assert high == pytest.approx(0.3 + half, abs=0.003)


def test_seed_bootstrap_carries_the_spread_between_seeds():
    # 40 seeds with huge image counts: the image noise vanishes and the interval is mean +- 1.96 sd / sqrt(k).
    rng = np.random.default_rng(2)
    shares = rng.uniform(0.2, 0.6, 40)
    n = np.full(40, 10**7)
    replicates = seed_bootstrap(np.rint(shares * n).astype(np.int64), n, 20_000, np.random.default_rng(3))
    low, high = percentile_interval(replicates)
    half = 1.96 * shares.std(ddof=0) / math.sqrt(40)
    assert (low, high) == pytest.approx((shares.mean() - half, shares.mean() + half), abs=0.006)


def test_seed_bootstrap_is_wider_when_seeds_disagree():
    rng = np.random.default_rng(4)
    agree = percentile_interval(seed_bootstrap([200, 200, 200], [500] * 3, 5000, rng))
    disagree = percentile_interval(seed_bootstrap([100, 200, 300], [500] * 3, 5000, rng))
    assert disagree[1] - disagree[0] > 3 * (agree[1] - agree[0])


def test_corrected_bootstrap_covers_the_point_and_widens_with_calibration_noise():
    rng = np.random.default_rng(5)
    observed = seed_bootstrap([150], [500], 4000, rng)
    tight = corrected_bootstrap(observed, share_bootstrap(200, 10_000, 4000, rng), share_bootstrap(9000, 10_000, 4000, rng))
    loose = corrected_bootstrap(observed, share_bootstrap(4, 200, 4000, rng), share_bootstrap(180, 200, 4000, rng))
    point = corrected_ratio(0.3, 0.02, 0.9)
    for replicates in (tight, loose):
        low, high = percentile_interval(replicates)
        assert low < point < high
    assert np.ptp(percentile_interval(loose)) > np.ptp(percentile_interval(tight))


def test_heterogeneity_p_value():
    assert heterogeneity_p_value([393, 290], [500, 500]) < 1e-10  # 78.6% vs 58.0%: the notes' seeds
    assert heterogeneity_p_value([100, 104, 98], [500] * 3) > 0.5
    assert math.isnan(heterogeneity_p_value([100], [500]))
    with pytest.raises(BibaddiffError, match="successes"):
        heterogeneity_p_value([600, 1], [500, 500])


# ------------------------------------------------------------------------------------------ thresholds, sizes
def test_decision_threshold_flags_at_most_the_target_share():
    scores = np.linspace(-5, 5, 1000)
    threshold = decision_threshold(scores, 0.01)
    assert np.sum(scores > threshold) == 10
    # Never below the detector's own decision: a detector that flags nothing keeps flagging nothing.
    assert decision_threshold(np.full(100, -3.0), 0.05) == 0.0


def test_calibration_sizes_and_bad_input():
    assert threshold_images_needed(0.01) == 500
    assert calibration_images_needed(0.01) == 1500
    check_calibration_settings({"target_fpr": 0.01, "dequantization": "auto", "calibration_images": 1500}, True)
    with pytest.raises(BibaddiffError, match=r"judges.calibration_images is 1000.*at least 1500"):
        check_calibration_settings({"target_fpr": 0.01, "dequantization": "auto", "calibration_images": 1000}, True)
    # Without a clean model there is no calibration draw to size.
    check_calibration_settings({"target_fpr": 0.01, "dequantization": "auto", "calibration_images": 3}, False)
    for bad in (0, 0.5, 0.7, -0.1, "0.01", True):
        with pytest.raises(BibaddiffError, match="judges.target_fpr"):
            check_calibration_settings({"target_fpr": bad, "dequantization": "auto", "calibration_images": 10**6}, True)
    with pytest.raises(BibaddiffError, match="judges.dequantization"):
        check_calibration_settings({"target_fpr": 0.01, "dequantization": "lots", "calibration_images": 1500}, True)


def test_calibration_parts_are_disjoint_and_cover_the_cell():
    images = np.arange(10)
    parts = [calibration_part(images, part) for part in ("training", "threshold", "evaluation")]
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))
    with pytest.raises(BibaddiffError, match="calibration part"):
        calibration_part(images, "test")


def test_dequantization_amplitude():
    digits = (np.arange(17) * 255 / 16).round().astype(np.uint8)
    assert grey_level_step(digits) == 16
    assert dequantization_amplitude("auto", digits) == 8
    assert dequantization_amplitude("auto", np.arange(256, dtype=np.uint8)) == 0  # every level used: nothing to hide
    assert dequantization_amplitude(3, digits) == 3


class _BrightnessDetector(nn.Module):
    """A fixed 'detector' whose logit margin is the mean brightness of the bottom-right 3x3 corner minus 0.5."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        corner = (x[:, :, -3:, -3:].mean(dim=(1, 2, 3)) + 1) / 2  # model space [-1, 1] -> [0, 1]
        return torch.stack([torch.zeros_like(corner), corner - 0.5 + self.weight], dim=1)


def test_calibrate_on_generations_counts_by_hand():
    rng = np.random.default_rng(0)
    # Dark 8x8 images; the 3x3 white-checker patch brightens the corner enough to be flagged.
    images = rng.integers(0, 60, size=(300, 8, 8, 1)).astype(np.uint8)
    images[:6, -3:, -3:] = 255  # six bright corners: two fall in each part
    trigger = build_trigger("patch", {"type": "patch", "pattern": "white", "size": 3}, 8, 1)
    cells = [{"x0_clipping": "none", "condition": 6, "guidance": 1.0, "path": "cell"}]
    rows = calibrate_on_generations(_BrightnessDetector(), trigger, cells, target_fpr=0.05, load=lambda path: images)
    (row,) = rows
    assert row["source"] == "clean_generations" and row["n_threshold"] == 100 and row["n"] == 100
    assert row["false_positives"] == 2 and row["true_positives"] == 100
    # Five of the threshold part's 100 may be flagged: two bright corners are, so the threshold stays at 0.
    assert row["threshold"] == 0.0
    assert calibration_of_cell({"trigger": "patch", "rows": rows}, {**cells[0], "guidance": 1}) is row
    with pytest.raises(BibaddiffError, match="no row for cell"):
        calibration_of_cell({"trigger": "patch", "rows": rows}, {**cells[0], "guidance": 2.0})
    with pytest.raises(BibaddiffError, match="needs 500"):
        calibrate_on_generations(_BrightnessDetector(), trigger, cells, target_fpr=0.01, load=lambda path: images)
    heldout = calibrate_on_heldout(_BrightnessDetector(), trigger, cells * 2, images[6:106])
    assert [r["source"] for r in heldout] == ["heldout_real"] * 2
    assert heldout[0]["false_positives"] == 0 and heldout[0]["true_positives"] == 100


# ------------------------------------------------------------------------------------------------ the summary
def _metrics(attack, seed, triggered, n=500, calibration=(40, 1000, 900), condition=6, guidance=1.0):
    fp, size, tp = calibration
    return {"attack": attack, "seed": seed, "target": 6, "poison_ratio": 0.0 if attack == "clean" else 0.1,
            "records": [{"trigger": "patch", "trigger_judged": True, "x0_clipping": "none", "condition": condition,
                         "guidance": guidance, "G1": triggered // 2, "G2": triggered - triggered // 2, "G3": 10,
                         "G4": n - triggered - 10, "training_triggered": 0 if attack == "clean" else 150,
                         "training_total": 150 if attack == "clean" else 300, "content_judge_accuracy": 0.99,
                         "detector_accuracy": 0.99, "detector_negatives": "generated",
                         "calibration_source": "clean_generations", "detector_threshold": 0.0,
                         "calibration_n": size, "calibration_false_positives": fp, "calibration_true_positives": tp}]}


def test_amplification_table_corrects_and_decides_on_the_corrected_interval():
    # Raw 0.56 looks amplified against the share 0.5; with FPR 0.2 and TPR 0.9 the truth is (0.56 - 0.2) / 0.7 = 0.51.
    models = [_metrics("patch-p0.1", seed, 280, calibration=(200, 1000, 900)) for seed in (0, 1, 2)]
    models.append(_metrics("clean", 0, 100, calibration=(200, 1000, 900)))
    table = amplification_table(models, bootstrap_samples=2000)
    pooled = table[(table.attack == "patch-p0.1") & (table.seed == "pooled")].iloc[0]
    assert pooled.trigger_ratio == pytest.approx(0.56)
    assert bool(pooled.amplified_raw)
    assert pooled.trigger_ratio_corrected == pytest.approx((0.56 - 0.2) / 0.7)
    assert pooled.trigger_ratio_corrected_low < 0.5 < pooled.trigger_ratio_corrected_high
    assert not pooled.amplified
    assert pooled.detector_fpr == pytest.approx(0.2) and pooled.detector_tpr == pytest.approx(0.9)
    assert pooled.between_seed_sd == pytest.approx(0.0)
    assert pooled.heterogeneity_p == pytest.approx(1.0)
    assert pooled.interval == "seeds, then images"
    # The clean control's own shares of the same cell sit beside the poisoned rows.
    assert pooled.clean_G3_ratio == pytest.approx(10 / 500)
    per_seed = table[(table.attack == "patch-p0.1") & (table.seed == "0")].iloc[0]
    assert per_seed.interval == "wilson" and per_seed.trigger_ratio_corrected == pytest.approx(pooled.trigger_ratio_corrected)
    clean = table[(table.attack == "clean") & (table.seed == "pooled")].iloc[0]
    assert clean.trigger_ratio_corrected == pytest.approx(0.0, abs=1e-9)  # its raw 0.2 is the detector's FPR
    assert clean.correction_warning == ""


def test_pooled_interval_widens_with_seed_disagreement_and_is_tested():
    agree = amplification_table([_metrics("patch-p0.1", s, 300) for s in (0, 1, 2)], bootstrap_samples=2000)
    disagree = amplification_table([_metrics("patch-p0.1", s, t) for s, t in ((0, 200), (1, 300), (2, 400))],
                                   bootstrap_samples=2000)
    width = {name: float(frame[frame.seed == "pooled"].trigger_ratio_high.iloc[0]
                         - frame[frame.seed == "pooled"].trigger_ratio_low.iloc[0])
             for name, frame in (("agree", agree), ("disagree", disagree))}
    assert width["disagree"] > 3 * width["agree"]
    pooled = disagree[disagree.seed == "pooled"].iloc[0]
    assert pooled.between_seed_sd == pytest.approx(0.2)
    assert pooled.heterogeneity_p < 1e-20


def test_a_detector_with_low_tpr_is_flagged_not_corrected():
    table = amplification_table([_metrics("patch-p0.1", 0, 280, calibration=(10, 1000, 400))], bootstrap_samples=500)
    row = table[table.seed == "pooled"].iloc[0]
    assert math.isnan(row.trigger_ratio_corrected) and row.amplified is None
    assert "TPR on generations 0.400 < 0.5" in row.correction_warning


def test_metrics_without_calibration_are_not_corrected():
    model = _metrics("patch-p0.1", 0, 280)
    for key in ("detector_negatives", "calibration_source", "detector_threshold", "calibration_n",
                "calibration_false_positives", "calibration_true_positives"):
        del model["records"][0][key]
    row = amplification_table([model], bootstrap_samples=500).iloc[0]
    assert math.isnan(row.trigger_ratio_corrected) and "no detector calibration" in row.correction_warning


def test_calibration_table_and_figure(tmp_path):
    calibration = {"trigger": "patch", "detector_negatives": "generated", "target_fpr": 0.01, "rows": [
        {"x0_clipping": "none", "condition": 6, "guidance": g, "source": "clean_generations", "threshold": 0.3,
         "n_threshold": 500, "n": 500, "false_positives": fp, "true_positives": tp, "true_positives_detector_range": tp}
        for g, fp, tp in ((1.0, 5, 490), (6.0, 12, 200))]}
    table = calibration_table([calibration])
    assert table.fpr.tolist() == pytest.approx([0.01, 0.024])
    assert table.correction_usable.tolist() == [True, False]
    assert (table.fpr_low < table.fpr).all() and (table.fpr < table.fpr_high).all()
    plot_calibration(table, tmp_path / "calibration.png")
    assert (tmp_path / "calibration.png").stat().st_size > 0
    assert calibration_table([]).empty


def test_a_stated_training_share_stands_in_for_the_counts_of_a_training_set_not_at_hand():
    from bibaddiff.metrics import StatedShare
    from bibaddiff.report.origin import with_origin

    share = StatedShare(0.5, target=6, poison_ratio=0.1)
    assert (share.at(6, 2.0), share.at(1, 2.0), share.at(1, 0.0)) == (0.5, 0.0, 0.1)
    with pytest.raises(BibaddiffError, match="stated share must lie in"):
        StatedShare(1.5, 6, 0.1)
    stated = _metrics("patch-p0.1", 1, 280)
    stated["records"][0].update(training_triggered=None, training_total=None, training_share_stated=0.5)
    table = amplification_table([stated], bootstrap_samples=500)
    row = table[table.seed == "1"].iloc[0]
    assert row.training_share == 0.5 and row.amplification == pytest.approx(0.56 / 0.5)
    assert pd.isna(row.training_triggered) and pd.isna(row.training_total)
    # Beside a counted share of another value, the seeds of one attack disagree on their training data.
    with pytest.raises(BibaddiffError, match="different training shares"):
        amplification_table([stated, _metrics("patch-p0.1", 0, 280)], bootstrap_samples=500)
    origins = {"patch-p0.1": {"1": "imported from /models/a"}}
    assert with_origin(table, origins).set_index("seed").origin.to_dict() == {"1": "imported from /models/a",
                                                                              "pooled": "imported from /models/a"}
