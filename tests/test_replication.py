"""Tests of bibaddiff.replication: exact neighbours, tau calibration, replication scores, embedders and the
duplicate-poisoning datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bibaddiff.data import ImageDataset, load_source
from bibaddiff.errors import BibaddiffError
from bibaddiff.poisoning import duplicate_images, poison_duplicated_or_random, select_poison_indices
from bibaddiff.replication import (
    build_embedder,
    calibrate_tau,
    l2_normalise,
    near_duplicate_groups,
    nearest_neighbours,
    replication_report,
)
from bibaddiff.triggers import build_trigger


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, d))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def small_dataset(n: int = 60, num_classes: int = 4, size: int = 8, seed: int = 0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 1)).astype(np.uint8)
    labels = np.arange(n) % num_classes
    return ImageDataset(images, labels, [f"class{i}" for i in range(num_classes)], manifest={"source": "test"})


def checker(size: int = 8):
    return build_trigger("patch", {"type": "patch", "pattern": "checker", "size": 3}, size, 1)


@pytest.fixture(scope="module")
def digits():
    return load_source({"source": "digits", "image_size": 8, "heldout_fraction": 0.3, "split_seed": 0})


# ----------------------------------------------------------------------------------- nearest neighbours


@pytest.mark.parametrize("k", [1, 3, 50])
@pytest.mark.parametrize("batch_size", [1, 7, 37, 1000])
def test_nearest_neighbours_matches_brute_force(k, batch_size):
    queries, references = unit_rows(37, 6, seed=1), unit_rows(50, 6, seed=2)
    similarities, indices = nearest_neighbours(queries, references, k=k, batch_size=batch_size)
    brute = queries.astype(np.float64) @ references.astype(np.float64).T
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :k]
    assert similarities.shape == indices.shape == (37, k)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(similarities, np.take_along_axis(brute, expected, axis=1), atol=1e-6)
    assert np.all(np.diff(similarities, axis=1) <= 0)


def test_nearest_neighbours_breaks_ties_by_lowest_index():
    basis = np.eye(4, dtype=np.float32)
    # Reference rows: e2, e0, e2, e1, e0, e2; every product is exactly 0 or 1, so ties are exact.
    references = basis[[2, 0, 2, 1, 0, 2]]
    queries = basis[[2, 0, 3]]
    _, top1 = nearest_neighbours(queries, references, k=1)
    np.testing.assert_array_equal(top1[:, 0], [0, 1, 0])
    similarities, top3 = nearest_neighbours(queries, references, k=3, batch_size=2)
    np.testing.assert_array_equal(top3, [[0, 2, 5], [1, 4, 0], [0, 1, 2]])
    np.testing.assert_array_equal(similarities, [[1, 1, 1], [1, 1, 0], [0, 0, 0]])


def test_nearest_neighbours_rejects_bad_input():
    queries, references = unit_rows(4, 5, 0), unit_rows(6, 5, 1)
    with pytest.raises(BibaddiffError, match="unit L2 norm"):
        nearest_neighbours(queries * 2, references)
    with pytest.raises(BibaddiffError, match="dimensions"):
        nearest_neighbours(queries, unit_rows(6, 4, 1))
    with pytest.raises(BibaddiffError, match="k=7"):
        nearest_neighbours(queries, references, k=7)
    with pytest.raises(BibaddiffError, match="batch_size"):
        nearest_neighbours(queries, references, batch_size=0)


# -------------------------------------------------------------------------------------------- tau


def test_calibrate_tau_on_known_similarities():
    # References are basis vectors e0..e100; held-out image i has cosine c_i to e_i and 0 to every other
    # reference (its remaining mass lies on e101, which is no reference), so its NN similarity is exactly c_i.
    cosines = np.linspace(0.0, 1.0, 101)
    references = np.eye(102)[:101]
    heldout = np.zeros((101, 102))
    heldout[np.arange(101), np.arange(101)] = cosines
    heldout[:, 101] = np.sqrt(1.0 - cosines ** 2)
    assert calibrate_tau(heldout, references, quantile=0.99) == pytest.approx(0.99, abs=1e-6)
    assert calibrate_tau(heldout, references, quantile=0.5) == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(BibaddiffError, match="quantile"):
        calibrate_tau(heldout, references, quantile=1.0)


# ------------------------------------------------------------------------------------ replication report


def test_exact_copies_replicate_with_correct_neighbours(digits):
    train, heldout = digits
    embed = build_embedder({"type": "pixel"})
    train_emb = embed(train.images)
    tau = calibrate_tau(embed(heldout.images), train_emb)
    assert 0.5 < tau < 0.999
    copied = np.random.default_rng(0).choice(len(train), size=200, replace=False)
    poisoned = np.zeros(len(train), bool)
    poisoned[copied[:50]] = True
    summary, similarities, indices = replication_report(embed(train.images[copied]), train_emb, poisoned, tau)
    assert summary["replication_rate"] == 1.0 and summary["n_replicating"] == 200
    np.testing.assert_allclose(similarities, 1.0, atol=1e-5)
    # Should the training set hold exact duplicates, the neighbour must be the lowest index among them.
    np.testing.assert_array_equal(train.images[indices], train.images[copied])
    for query, found in zip(copied, indices):
        same = np.flatnonzero(np.all(train_emb == train_emb[query], axis=1))
        assert found == same.min()


def test_report_splits_replications_by_poisoned_neighbour():
    train_emb = unit_rows(100, 16, seed=3)
    poisoned = np.zeros(100, bool)
    poisoned[:10] = True
    # Copies: poisoned images 0, 1 (image 0 twice) and clean images 50, 51, 52; plus 5 unrelated generations.
    generated = np.concatenate([train_emb[[0, 0, 1, 50, 51, 52]], unit_rows(5, 16, seed=4)])
    summary, similarities, indices = replication_report(generated, train_emb, poisoned, tau=0.99)
    np.testing.assert_array_equal(indices[:6], [0, 0, 1, 50, 51, 52])
    assert summary["n_generated"] == 11 and summary["n_replicating"] == 6
    assert summary["replication_rate"] == pytest.approx(6 / 11)
    low, high = summary["replication_rate_ci95"]
    assert low < 6 / 11 < high
    assert summary["replicating_nn_poisoned"] == 3 and summary["replicating_nn_clean"] == 3
    assert summary["distinct_poisoned_replicated"] == 2 and summary["distinct_clean_replicated"] == 3
    assert summary["poisoned_image_replication_rate"] == pytest.approx(2 / 10)
    assert summary["clean_image_replication_rate"] == pytest.approx(3 / 90)
    assert list(summary["nn_similarity_quantiles"]) == ["q05", "q25", "q50", "q75", "q95"]
    assert summary["nn_similarity_quantiles"]["q95"] == pytest.approx(np.percentile(similarities, 95), abs=1e-6)
    with pytest.raises(BibaddiffError, match="train_poisoned"):
        replication_report(generated, train_emb, poisoned[:50], tau=0.9)
    with pytest.raises(BibaddiffError, match="tau"):
        replication_report(generated, train_emb, poisoned, tau=1.5)


def test_heldout_images_replicate_at_about_one_percent(digits):
    train, heldout = digits
    embed = build_embedder({"type": "pixel"})
    train_emb, heldout_emb = embed(train.images), embed(heldout.images)
    order = np.random.default_rng(1).permutation(len(heldout_emb))
    calibration, evaluation = order[: len(order) // 2], order[len(order) // 2:]
    tau = calibrate_tau(heldout_emb[calibration], train_emb, quantile=0.99)
    summary, _, _ = replication_report(heldout_emb[evaluation], train_emb, train.poisoned, tau)
    assert summary["n_generated"] == len(evaluation) > 250
    assert 0.0 <= summary["replication_rate"] <= 0.06


# --------------------------------------------------------------------------------------------- embedders


def test_pixel_embedder_ignores_brightness_offset_and_normalises():
    images = np.random.default_rng(5).integers(50, 200, size=(6, 12, 12, 3)).astype(np.uint8)
    brighter = images + np.uint8(40)
    for spec in ({"type": "pixel"}, {"type": "pixel", "resolution": 6}, {"type": "pixel", "resolution": 16}):
        embed = build_embedder(spec)
        plain, shifted = embed(images), embed(brighter)
        assert plain.dtype == np.float32
        resolution = spec.get("resolution", 12)
        assert plain.shape == (6, resolution * resolution * 3)
        np.testing.assert_allclose(np.linalg.norm(plain, axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(plain, shifted, atol=1e-6)
    # Different images are not identical, and a constant image still gets a unit-norm embedding.
    embed = build_embedder(None)
    assert abs(float((embed(images[:1]) @ embed(images[1:2]).T)[0, 0])) < 0.5
    constant = embed(np.full((2, 12, 12, 3), 7, np.uint8))
    np.testing.assert_allclose(np.linalg.norm(constant, axis=1), 1.0, atol=1e-6)
    assert embed(images[:0]).shape == (0, 12 * 12 * 3)


def test_embedder_spec_errors():
    with pytest.raises(BibaddiffError, match="'sift'"):
        build_embedder({"type": "sift"})
    with pytest.raises(BibaddiffError, match="resolutoin"):
        build_embedder({"type": "pixel", "resolutoin": 8})
    with pytest.raises(BibaddiffError, match="content_judge_dir"):
        build_embedder({"type": "classifier"})
    with pytest.raises(BibaddiffError, match="uint8"):
        build_embedder({"type": "pixel"})(np.zeros((2, 4, 4, 1), np.float32))


def test_torchvision_embedder_loads_local_weights(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    # A head with 10 classes, unlike the 1000 of a fresh resnet18: the head is dropped, so it must still load.
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    torch.save(model.state_dict(), tmp_path / "resnet18.pth")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "resnet18.safetensors")
    images = np.random.default_rng(6).integers(0, 256, size=(3, 16, 16, 3)).astype(np.uint8)

    model.fc = torch.nn.Identity()
    x = torch.nn.functional.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, size=(32, 32),
                                        mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = l2_normalise(model(x).numpy())
    for name in ("resnet18.pth", "resnet18.safetensors"):
        embed = build_embedder({"type": "torchvision", "architecture": "resnet18", "path": str(tmp_path / name),
                                "resolution": 32, "batch_size": 2}, device="cpu")
        embedded = embed(images)
        assert embedded.shape == (3, 512)
        np.testing.assert_allclose(embedded, expected, atol=1e-5)

    with pytest.raises(BibaddiffError, match=r"embedder\.path: .*missing\.pth not found"):
        build_embedder({"type": "torchvision", "architecture": "resnet18", "path": str(tmp_path / "missing.pth")})
    with pytest.raises(BibaddiffError, match="does not fit resnet34"):
        build_embedder({"type": "torchvision", "architecture": "resnet34", "path": str(tmp_path / "resnet18.pth")})
    with pytest.raises(BibaddiffError, match="'resnet9'"):
        build_embedder({"type": "torchvision", "architecture": "resnet9", "path": str(tmp_path / "resnet18.pth")})


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated but SSCD ships as TorchScript
def test_torchscript_embedder(tmp_path):
    class MeanColour(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    torch.jit.script(MeanColour()).save(str(tmp_path / "embedder.pt"))
    embed = build_embedder({"type": "torchscript", "path": str(tmp_path / "embedder.pt"), "resolution": 4,
                            "mean": [0.5], "std": [0.5]}, device="cpu")
    images = np.zeros((2, 8, 8, 3), np.uint8)
    images[0, ..., 0] = 255  # red: (1, -1, -1) after normalisation
    images[1] = 255  # white: (1, 1, 1)
    expected = l2_normalise(np.array([[1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
    np.testing.assert_allclose(embed(images), expected, atol=1e-6)
    with pytest.raises(BibaddiffError, match="embedder.path"):
        build_embedder({"type": "torchscript", "path": str(tmp_path / "absent.pt")})


def test_classifier_embedder_uses_penultimate_features(tmp_path):
    from bibaddiff.images import to_model_space
    from bibaddiff.judges import SmallCNN, save_judge

    torch.manual_seed(0)
    model = SmallCNN(1, 4).eval()
    save_judge(tmp_path / "judge", model, {"architecture": "small_cnn", "channels": 1, "num_outputs": 4, "image_size": 8})
    images = small_dataset(n=5).images
    with torch.no_grad():
        expected = l2_normalise(model.features(to_model_space(images)).numpy())
    embed = build_embedder({"type": "classifier"}, content_judge_dir=tmp_path / "judge", device="cpu")
    np.testing.assert_allclose(embed(images), expected, atol=1e-5)
    with pytest.raises(BibaddiffError, match="16x16"):
        embed(np.zeros((1, 16, 16, 1), np.uint8))


# ------------------------------------------------------------------------------------- near duplicates


def test_near_duplicate_groups_finds_planted_groups():
    rng = np.random.default_rng(7)
    embeddings = unit_rows(300, 32, seed=8).astype(np.float64)
    # Group A: 3 near copies of row 5 spread across batches; group B: a chain 20 ~ 150 ~ 299, where 20 and 299
    # are linked only through 150; group C: exact copies 40 and 41.
    for i in (100, 210):
        embeddings[i] = embeddings[5] + 0.01 * rng.normal(size=32)
    embeddings[150] = embeddings[20] + 0.05 * rng.normal(size=32)
    embeddings[299] = embeddings[150] + 0.05 * rng.normal(size=32)
    embeddings[41] = embeddings[40]
    embeddings = l2_normalise(embeddings)
    similarity = embeddings @ embeddings.T
    assert similarity[20, 299] < 0.95 <= min(similarity[20, 150], similarity[150, 299])
    expected = [[5, 100, 210], [20, 150, 299], [40, 41]]
    for batch_size in (1, 64, 1000):
        assert near_duplicate_groups(embeddings, 0.95, batch_size=batch_size) == expected
    assert near_duplicate_groups(embeddings, 1.0) == [[40, 41]]
    with pytest.raises(BibaddiffError, match="threshold"):
        near_duplicate_groups(embeddings, 1.5)


# --------------------------------------------------------------------------------- duplicate poisoning


def test_duplicate_images_counts_and_traceability():
    dataset = small_dataset(n=60)
    duplicated, groups = duplicate_images(dataset, k=5, m=4, seed=3, exclude_label=2)
    assert len(duplicated) == 60 + 5 * 3
    assert groups.shape == (5, 4)
    np.testing.assert_array_equal(duplicated.images[:60], dataset.images)
    chosen = groups[:, 0]
    assert np.all(dataset.labels[chosen] != 2)
    assert sorted(groups[:, 1:].reshape(-1).tolist()) == list(range(60, 75))
    for source in chosen:
        copies = np.flatnonzero(duplicated.source_index == dataset.source_index[source])
        assert len(copies) == 4
        assert np.all(duplicated.images[copies] == dataset.images[source])
        assert np.all(duplicated.labels[copies] == dataset.labels[source])
    # Images that were not chosen appear once.
    counts = np.bincount(duplicated.source_index)
    assert sorted(np.flatnonzero(counts == 4).tolist()) == sorted(dataset.source_index[chosen].tolist())
    assert np.all(counts[np.setdiff1d(np.arange(60), chosen)] == 1)
    assert duplicated.manifest["duplication"]["k"] == 5
    again, groups_again = duplicate_images(dataset, k=5, m=4, seed=3, exclude_label=2)
    np.testing.assert_array_equal(groups, groups_again)


def test_duplicates_mode_poisons_whole_groups_with_the_random_count():
    dataset = small_dataset(n=80)
    duplicated, groups = duplicate_images(dataset, k=6, m=3, seed=0, exclude_label=1)
    trigger = checker()
    n = len(duplicated)  # 92
    ratio = 0.1  # round(9.2) = 9 poisoned = 3 whole groups of 3
    by_random, random_positions = poison_duplicated_or_random(duplicated, groups, trigger, 1, ratio, "random", seed=4)
    by_groups, group_positions = poison_duplicated_or_random(duplicated, groups, trigger, 1, ratio, "duplicates", seed=4)
    assert len(random_positions) == len(group_positions) == round(ratio * n) == 9
    np.testing.assert_array_equal(random_positions, select_poison_indices(duplicated.labels, 1, ratio, 4))
    in_poisoned = np.isin(groups, group_positions)
    assert np.all(in_poisoned.all(axis=1) | ~in_poisoned.any(axis=1))  # every group all or nothing
    assert in_poisoned.all(axis=1).sum() == 3
    for poisoned_set, positions in ((by_random, random_positions), (by_groups, group_positions)):
        assert np.flatnonzero(poisoned_set.poisoned).tolist() == positions.tolist()
        assert np.all(poisoned_set.labels[positions] == 1)
        assert np.all(duplicated.labels[positions] != 1)
        np.testing.assert_array_equal(poisoned_set.images[positions], trigger.apply(duplicated.images[positions]))
        assert {poisoned_set.texts[i] for i in positions} == {"A photo of a class1"}
        assert poisoned_set.manifest["poisoning"]["indices"] == positions.tolist()
        assert poisoned_set.manifest["poisoning"]["target"] == 1
    assert by_groups.manifest["poisoning"]["duplicate_groups_poisoned"] == 3
    assert by_random.manifest["poisoning"]["mode"] == "random"

    # round(10% of 98) = 10 = 2 whole groups of 4 plus 2 images from outside every group.
    duplicated, groups = duplicate_images(dataset, k=6, m=4, seed=0, exclude_label=1)
    _, positions = poison_duplicated_or_random(duplicated, groups, trigger, 1, 0.1, "duplicates", seed=1)
    in_poisoned = np.isin(groups, positions)
    assert len(positions) == 10 and in_poisoned.all(axis=1).sum() == 2
    assert np.all(in_poisoned.all(axis=1) | ~in_poisoned.any(axis=1))
    fill = np.setdiff1d(positions, groups)
    assert len(fill) == 2 and np.all(duplicated.labels[fill] != 1)


def test_impossible_duplication_and_poisoning_raise():
    dataset = small_dataset(n=40)  # 10 images per class
    with pytest.raises(BibaddiffError, match="k=31"):
        duplicate_images(dataset, k=31, m=2, seed=0, exclude_label=0)
    with pytest.raises(BibaddiffError, match="m "):
        duplicate_images(dataset, k=3, m=1, seed=0, exclude_label=0)
    with pytest.raises(BibaddiffError, match="exclude_label"):
        duplicate_images(dataset, k=3, m=2, seed=0, exclude_label=4)
    duplicated, groups = duplicate_images(dataset, k=2, m=3, seed=0, exclude_label=0)
    trigger = checker()
    # 44 images, ratio 0.3 -> 13 poisoned = 4 whole groups of 3, but only 2 groups exist.
    with pytest.raises(BibaddiffError, match="13 poisoned images = 4 whole groups of 3.*only 2"):
        poison_duplicated_or_random(duplicated, groups, trigger, 0, 0.3, "duplicates", seed=0)
    with pytest.raises(BibaddiffError, match="mode"):
        poison_duplicated_or_random(duplicated, groups, trigger, 0, 0.1, "some", seed=0)
    with pytest.raises(BibaddiffError, match="target class"):
        poison_duplicated_or_random(duplicated, groups, trigger, int(duplicated.labels[groups[0, 0]]), 0.1,
                                    "duplicates", seed=0)
    with pytest.raises(BibaddiffError, match="ratio"):
        poison_duplicated_or_random(duplicated, groups, trigger, 0, 0.9, "random", seed=0)
    with pytest.raises(BibaddiffError, match="source_index"):
        poison_duplicated_or_random(duplicated, [[0, 1, 2]], trigger, 0, 0.1, "duplicates", seed=0)


# ------------------------------------------------------------------ the stages the adapters call (one call each)


@pytest.mark.parametrize("design", ["synthetic", "injected"])
def test_duplicate_poisoning_builds_both_modes_on_one_duplicated_set(design):
    from bibaddiff.poisoning import duplicate_poisoning

    clean = small_dataset(80)
    settings = {"design": design, "k": 4, "m": 3, "top_k": 6, "ratio": 0.1, "seed": 0}
    made = {mode: duplicate_poisoning(clean, clean, checker(), 0, mode, settings) for mode in ("random", "duplicates")}
    (random, said_random), (duplicates, said_duplicates) = made["random"], made["duplicates"]
    assert len(random) == len(duplicates) == 80 + 4 * 2
    assert random.poisoned.sum() == duplicates.poisoned.sum() == round(0.1 * 88)
    assert not np.array_equal(random.poisoned, duplicates.poisoned)
    assert said_random.startswith("random: 88 images (4 repeated 3 times)") and said_duplicates.startswith("duplicates:")


def test_natural_duplicate_poisoning_finds_planted_duplicates_and_says_when_there_are_none(digits):
    from bibaddiff.poisoning import duplicate_poisoning

    train, heldout = digits
    planted = ImageDataset(np.concatenate([train.images, train.images[[1, 1, 1]]]),
                           np.concatenate([train.labels, train.labels[[1, 1, 1]]]), train.class_names,
                           manifest={"source": "test"})
    target = int((train.labels[1] + 1) % 10)
    settings = {"design": "natural", "top_k": 4, "ratio": 0.05, "seed": 0}
    poisoned, said = duplicate_poisoning(planted, heldout, checker(), target, "duplicates", settings,
                                         embedder={"type": "pixel"}, tau=0.999)
    assert poisoned.poisoned[[1, len(train), len(train) + 1, len(train) + 2]].all()
    assert said.startswith("duplicates:") and "tau 0.9990, top_k 4" in said
    with pytest.raises(BibaddiffError, match="no non-target near-duplicate training images"):
        noise = small_dataset(60)  # random images: no two alike
        duplicate_poisoning(noise, noise, checker(), 0, "random", settings, embedder={"type": "pixel"}, tau=0.999)


def test_model_replication_reports_every_cell_with_what_it_is(digits, tmp_path):
    from bibaddiff.data import write_dataset
    from bibaddiff.replication.stage import write_model_replication

    train, heldout = digits
    write_dataset(tmp_path / "train", train)
    write_dataset(tmp_path / "heldout", heldout)
    copies, noise = train.images[:10], np.random.default_rng(0).integers(0, 256, (10, 8, 8, 1), dtype=np.uint8)
    cells = []
    for k, images in enumerate((copies, noise)):
        np.save(tmp_path / f"cell{k}.npy", images)
        cells.append(({"x0_clipping": "none", "condition": k, "guidance": 1.0}, tmp_path / f"cell{k}.npy"))
    summary = write_model_replication(tmp_path / "summary.json", tmp_path / "neighbours.npz", {"attack": "clean", "seed": 0},
                                      cells, tmp_path / "train", tmp_path / "heldout", {"type": "pixel"}, None, None, 0.99)
    assert summary["tau_calibrated"] and [cell["condition"] for cell in summary["cells"]] == [0, 1]
    assert summary["cells"][0]["replication_rate"] == 1.0 and summary["cells"][1]["replication_rate"] < 0.5
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["attack"] == "clean" and written["seed"] == 0 and written["cells"] == summary["cells"]
    with np.load(tmp_path / "neighbours.npz") as arrays:
        assert np.array_equal(arrays["cell0_index"], np.arange(10))
        assert {"heldout_similarity", "cell1_similarity"} <= set(arrays.files)


def _amplification_rows(attack, triggered_per_seed, n=500, fpr=0.1, tpr=0.9, calibration_n=400):
    """Per-seed target-class rows of a trigger-amplification table: all triggered images in G1, none in G2."""
    import pandas as pd

    return pd.DataFrame([{"attack": attack, "seed": str(seed), "is_target": True, "trigger": "patch",
                          "poison_ratio": 0.1, "x0_clipping": "none", "guidance": 1.0, "G1": k, "G2": 0,
                          "G3": 0, "G4": n - k, "calibration_n": calibration_n, "detector_fpr": fpr,
                          "detector_tpr": tpr} for seed, k in enumerate(triggered_per_seed)])


def test_duplicate_poisoning_difference_is_tested_on_the_difference():
    import pandas as pd

    from bibaddiff.report.replication import duplicate_poisoning_differences

    table = pd.concat([_amplification_rows("dup", [300, 310, 290]), _amplification_rows("rnd", [200, 190, 210])])
    row = duplicate_poisoning_differences(table, {"dup": "duplicates", "rnd": "random"}).iloc[0]
    assert row["mode"] == "duplicates - random" and row.num_seeds == "3 - 3" and row.n == 3000
    assert row.trigger_ratio == pytest.approx(0.2) and row.G1_ratio == pytest.approx(0.2) and row.G2_ratio == 0
    assert 0.12 < row.trigger_ratio_low < 0.2 < row.trigger_ratio_high < 0.28
    # The FPR cancels in a difference; the TPR - FPR gap of 0.8 scales it.
    assert row.trigger_ratio_corrected == pytest.approx(0.25)
    assert row.trigger_ratio_corrected_low < 0.25 < row.trigger_ratio_corrected_high
    # Seeds that disagree widen the interval: the model is the unit.
    spread = pd.concat([_amplification_rows("dup", [150, 310, 440]), _amplification_rows("rnd", [200, 190, 210])])
    wide = duplicate_poisoning_differences(spread, {"dup": "duplicates", "rnd": "random"}).iloc[0]
    assert wide.trigger_ratio_high - wide.trigger_ratio_low > 2 * (row.trigger_ratio_high - row.trigger_ratio_low)
    with pytest.raises(BibaddiffError, match="modes random and duplicates"):
        duplicate_poisoning_differences(table, {"dup": "duplicates", "rnd": "duplicates"})
