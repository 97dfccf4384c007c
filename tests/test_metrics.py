"""Tests of bibaddiff.metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bibaddiff.errors import BibaddiffError
from bibaddiff.metrics import (accuracy, generation_groups, paired_change_p_value, pool_counts, summarize_counts, training_share,
                               wilson_interval)

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal distribution
Z99 = 2.5758293035489004


# ------------------------------------------------------------------------------------------ wilson_interval


def test_wilson_zero_successes():
    # p = 0: centre = half = (z^2 / 2n) / (1 + z^2 / n), so the interval is [0, z^2 / (n + z^2)].
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12)
    assert high == pytest.approx(Z95 ** 2 / (10 + Z95 ** 2), rel=1e-12)
    assert high == pytest.approx(0.27753, abs=1e-5)


def test_wilson_all_successes():
    # p = 1 mirrors p = 0: [n / (n + z^2), 1].
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(10 / (10 + Z95 ** 2), rel=1e-12)
    assert low == pytest.approx(0.72247, abs=1e-5)
    assert high == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n, low, high", [(10, 0.23659, 0.76341), (100, 0.40383, 0.59617)])
def test_wilson_half(n, low, high):
    # p = 1/2: centre 1/2 and half-width z / (2 sqrt(n + z^2)).
    half = Z95 / (2 * math.sqrt(n + Z95 ** 2))
    got = wilson_interval(n // 2, n)
    assert got[0] == pytest.approx(0.5 - half, rel=1e-12)
    assert got[1] == pytest.approx(0.5 + half, rel=1e-12)
    assert got == pytest.approx((low, high), abs=1e-5)


def test_wilson_general_closed_form_and_published_value():
    k, n = 81, 263
    p = k / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 / (1 + Z95 ** 2 / n) * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n))
    low, high = wilson_interval(k, n)
    assert (low, high) == pytest.approx((centre - half, centre + half), rel=1e-12)
    # Published value for 81 of 263 at 95%: (0.2553, 0.3662).
    assert round(low, 4) == 0.2553 and round(high, 4) == 0.3662


def test_wilson_other_confidence():
    k, n = 81, 263
    p = k / n
    centre = (p + Z99 ** 2 / (2 * n)) / (1 + Z99 ** 2 / n)
    half = Z99 / (1 + Z99 ** 2 / n) * math.sqrt(p * (1 - p) / n + Z99 ** 2 / (4 * n * n))
    assert wilson_interval(k, n, 0.99) == pytest.approx((centre - half, centre + half), rel=1e-10)
    # A higher confidence gives a wider interval around the same point.
    low95, high95 = wilson_interval(k, n, 0.95)
    low99, high99 = wilson_interval(k, n, 0.99)
    assert low99 < low95 < p < high95 < high99


def test_wilson_interval_contains_estimate_and_stays_in_unit_range():
    for n in (1, 2, 7, 50):
        for k in range(n + 1):
            low, high = wilson_interval(k, n)
            assert 0.0 <= low <= k / n <= high <= 1.0


def test_wilson_zero_successes_lower_bound_is_exactly_zero():
    assert wilson_interval(0, 10)[0] == 0.0


def test_wilson_n_zero_is_nan():
    low, high = wilson_interval(0, 0)
    assert math.isnan(low) and math.isnan(high)


@pytest.mark.parametrize("k, n", [(-1, 10), (11, 10), (0, -1), (5, -3)])
def test_wilson_bad_counts(k, n):
    with pytest.raises(BibaddiffError, match="successes"):
        wilson_interval(k, n)


@pytest.mark.parametrize("confidence", [0.0, 1.0, -0.5, 95])
def test_wilson_bad_confidence(confidence):
    with pytest.raises(BibaddiffError, match="confidence"):
        wilson_interval(5, 10, confidence)


# ------------------------------------------------------------------------------------------ groups and shares


def test_generation_groups_hand_case():
    content = np.array([3, 3, 1, 2, 3, 0])
    trigger = np.array([1, 0, 1, 0, 0, 1])
    # condition 3: 0 = trigger+right (G2), 1 = clean+right (G4), 2 = trigger+wrong (G1),
    # 3 = clean+wrong (G3), 4 = clean+right (G4), 5 = trigger+wrong (G1)
    assert generation_groups(content, trigger, 3) == {"G1": 2, "G2": 1, "G3": 1, "G4": 2}
    # Same predictions judged for condition 0: only index 5 is right.
    assert generation_groups(content, trigger, 0) == {"G1": 2, "G2": 1, "G3": 3, "G4": 0}


def test_generation_groups_accepts_bool_and_empty():
    assert generation_groups(np.array([1, 1]), np.array([True, False]), 1) == {"G1": 0, "G2": 1, "G3": 0, "G4": 1}
    assert generation_groups(np.array([], int), np.array([], bool), 0) == {"G1": 0, "G2": 0, "G3": 0, "G4": 0}


@pytest.mark.parametrize("content, trigger", [([1, 2, 3], [0, 1]), ([[1, 2]], [[0, 1]])])
def test_generation_groups_bad_shapes(content, trigger):
    with pytest.raises(BibaddiffError, match="1-D"):
        generation_groups(np.array(content), np.array(trigger), 1)


def test_training_share_unconditional_vs_conditional():
    labels = np.array([0, 0, 1, 1, 1, 2])
    triggered = np.array([0, 1, 1, 0, 0, 1])
    assert training_share(labels, triggered, 1, guidance=0) == (3, 6)  # the whole training set
    assert training_share(labels, triggered, 0, guidance=0) == (3, 6)
    assert training_share(labels, triggered, 1, guidance=1) == (1, 3)
    assert training_share(labels, triggered, 1, guidance=2.5) == (1, 3)
    assert training_share(labels, triggered, 0, guidance=3) == (1, 2)
    assert training_share(labels, triggered, 2, guidance=1) == (1, 1)
    assert training_share(labels, triggered, 5, guidance=1) == (0, 0)


# ------------------------------------------------------------------------------------------ summarize_counts


def test_summarize_counts_ratios_and_amplification():
    groups = {"G1": 3, "G2": 5, "G3": 2, "G4": 10}
    row = summarize_counts(groups, share_triggered=1, share_total=10)
    assert row["n"] == 20
    assert (row["G1"], row["G2"], row["G3"], row["G4"]) == (3, 5, 2, 10)
    assert row["G1_ratio"] == pytest.approx(0.15)
    assert row["G2_ratio"] == pytest.approx(0.25)
    assert row["G3_ratio"] == pytest.approx(0.10)
    assert row["G4_ratio"] == pytest.approx(0.50)
    assert row["trigger_ratio"] == pytest.approx(0.4)  # (3 + 5) / 20
    assert row["mismatch_ratio"] == pytest.approx(0.25)  # (3 + 2) / 20
    assert (row["trigger_ratio_low"], row["trigger_ratio_high"]) == pytest.approx(wilson_interval(8, 20))
    assert (row["mismatch_ratio_low"], row["mismatch_ratio_high"]) == pytest.approx(wilson_interval(5, 20))
    assert (row["G4_ratio_low"], row["G4_ratio_high"]) == pytest.approx(wilson_interval(10, 20))
    assert row["training_share"] == pytest.approx(0.1)
    assert (row["training_triggered"], row["training_total"]) == (1, 10)
    assert row["amplification"] == pytest.approx(4.0)  # 0.4 / 0.1
    low, high = wilson_interval(8, 20)
    assert row["amplification_low"] == pytest.approx(low / 0.1)
    assert row["amplification_high"] == pytest.approx(high / 0.1)
    assert low > 0.1 and row["amplified"] is True


def test_summarize_counts_not_amplified_when_lower_bound_below_share():
    # trigger ratio 0.2 is above the share 0.1, but its Wilson lower bound (about 0.057) is not.
    row = summarize_counts({"G1": 0, "G2": 2, "G3": 0, "G4": 8}, share_triggered=1, share_total=10)
    assert row["trigger_ratio"] == pytest.approx(0.2)
    assert row["amplification"] == pytest.approx(2.0)
    assert row["trigger_ratio_low"] < 0.1
    assert row["amplified"] is False


def test_summarize_counts_zero_share():
    row = summarize_counts({"G1": 1, "G2": 1, "G3": 0, "G4": 8}, share_triggered=0, share_total=100)
    assert row["training_share"] == 0.0
    assert row["trigger_ratio"] == pytest.approx(0.2)
    assert math.isnan(row["amplification"])
    assert math.isnan(row["amplification_low"]) and math.isnan(row["amplification_high"])
    assert row["amplified"] is False


def test_summarize_counts_empty_training_group():
    row = summarize_counts({"G1": 1, "G2": 1, "G3": 0, "G4": 8}, share_triggered=0, share_total=0)
    assert math.isnan(row["training_share"])
    assert math.isnan(row["amplification"])
    assert row["amplified"] is False


def test_summarize_counts_no_generations():
    row = summarize_counts({"G1": 0, "G2": 0, "G3": 0, "G4": 0}, share_triggered=1, share_total=10)
    assert row["n"] == 0
    assert math.isnan(row["trigger_ratio"]) and math.isnan(row["trigger_ratio_low"])
    assert math.isnan(row["amplification"])
    assert row["amplified"] is False


def test_summarize_counts_missing_group():
    with pytest.raises(BibaddiffError, match="G3"):
        summarize_counts({"G1": 1, "G2": 1, "G4": 8}, 1, 10)


# ------------------------------------------------------------------------------------------ pooling, accuracy


def test_pool_counts_sums():
    records = [
        {"G1": 1, "G2": 2, "G3": 3, "G4": 4, "seed": 0, "trigger_ratio": 0.3},
        {"G1": 10, "G2": 20, "G3": 30, "G4": 40, "seed": 1},
        {"G1": "5", "G2": 0, "G3": 0, "G4": 1},
    ]
    assert pool_counts(records) == {"G1": 16, "G2": 22, "G3": 33, "G4": 45}
    assert pool_counts([]) == {"G1": 0, "G2": 0, "G3": 0, "G4": 0}
    # Generator input works too.
    assert pool_counts(r for r in records[:1]) == {"G1": 1, "G2": 2, "G3": 3, "G4": 4}


def test_accuracy():
    assert accuracy(np.array([1, 2, 3, 4]), np.array([1, 0, 3, 0])) == 0.5
    assert math.isnan(accuracy(np.array([]), np.array([])))
    with pytest.raises(BibaddiffError, match="shape"):
        accuracy(np.array([1, 2]), np.array([1]))


def test_paired_change_p_value_by_hand():
    # Exact two-sided binomial test on the changed verdicts: 0 of 6 one way is 2 * 0.5**6.
    assert paired_change_p_value(0, 6) == pytest.approx(2 * 0.5 ** 6)
    assert paired_change_p_value(6, 0) == pytest.approx(2 * 0.5 ** 6)
    # 1 of 10: 2 * (1 + 10) / 1024.
    assert paired_change_p_value(1, 9) == pytest.approx(2 * 11 / 1024)
    assert paired_change_p_value(5, 5) == 1.0
    assert paired_change_p_value(0, 0) == 1.0


@pytest.mark.parametrize("counts", [(-1, 3), (2.5, 1), (True, 1)])
def test_paired_change_p_value_bad_counts(counts):
    with pytest.raises(BibaddiffError, match="paired_change_p_value"):
        paired_change_p_value(*counts)
