"""Generation quality: the Fréchet distance against a hand-computed case, KID, the Inception path with random weights
from a local file, the CLIP path with a tiny random CLIP folder, and the config checks that run before any job."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from bibaddiff.config import load_schema, validate_config
from bibaddiff.data import scaled_class_counts
from bibaddiff.errors import BibaddiffError
from bibaddiff.judges import SmallCNN
from bibaddiff.quality import (bootstrap_mean, clip_scores, distance_rows, fid_with_interval, frechet_distance,
                               inception_features, judge_features, kid_over_subsets, load_clip, load_inception,
                               quality_features)
from bibaddiff.report.quality import plot_quality_vs_ratio, quality_table
from workflow_helpers import REPO, TINY_CONFIG

SCHEMA = load_schema()


def test_frechet_distance_of_two_gaussians_with_diagonal_covariances():
    # |(0,0) - (1,2)|^2 = 5; tr = (1 + 4) + (4 + 9) = 18; (cov_a cov_b)^(1/2) = diag(2, 6), traced twice: 16.
    assert frechet_distance([0, 0], np.diag([1.0, 4.0]), [1, 2], np.diag([4.0, 9.0])) == pytest.approx(7.0, abs=1e-9)


def test_frechet_distance_of_two_gaussians_with_correlated_covariances():
    # Both covariances have eigenvectors (1, 1) and (1, -1): cov_a has eigenvalues 3 and 1, cov_b 2 and 8, so
    # cov_a cov_b has 6 and 8 and the trace of its square root is sqrt(6) + sqrt(8).
    cov_a = np.array([[2.0, 1.0], [1.0, 2.0]])
    cov_b = np.array([[5.0, -3.0], [-3.0, 5.0]])
    expected = 5 + (4 + 10) - 2 * (math.sqrt(6) + math.sqrt(8))
    assert frechet_distance([1, 2], cov_a, [0, 0], cov_b) == pytest.approx(expected, abs=1e-9)
    assert frechet_distance([1, 2], cov_a, [1, 2], cov_a) == pytest.approx(0.0, abs=1e-9)


def test_fid_of_samples_approaches_the_closed_form_and_its_interval_covers_it():
    rng = np.random.default_rng(0)
    real = rng.multivariate_normal([0, 0], np.diag([1.0, 4.0]), 20000)
    generated = rng.multivariate_normal([1, 2], np.diag([4.0, 9.0]), 20000)
    result = fid_with_interval(real, generated, bootstrap_samples=40, seed=0)
    assert result["value"] == pytest.approx(7.0, abs=0.3)
    assert result["low"] < result["value"] < result["high"] and result["low"] < 7.0 < result["high"]
    assert fid_with_interval(real, generated, bootstrap_samples=0)["low"] is None


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    real, same = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    shifted = rng.normal(size=(400, 8)) + 1.0
    same_kid = kid_over_subsets(real, same, subsets=20, subset_size=100)
    shifted_kid = kid_over_subsets(real, shifted, subsets=20, subset_size=100)
    assert abs(same_kid["value"]) < 0.05 < shifted_kid["value"]
    # The sd over subsets is the spread of one subset's KID, not a 95% interval: no low/high, its own key.
    assert shifted_kid["kid_sd_over_subsets"] > 0 and shifted_kid["low"] is None and shifted_kid["high"] is None
    assert "95%" not in shifted_kid["interval"] and "sd over 20 subsets" in shifted_kid["interval"]


@pytest.mark.parametrize("call, message", [
    (lambda: frechet_distance([0, 0], np.eye(3), [0, 0], np.eye(2)), "covariances of shape"),
    (lambda: fid_with_interval(np.zeros((1, 2)), np.zeros((5, 2))), "N >= 2"),
    (lambda: fid_with_interval(np.zeros((5, 2)), np.zeros((5, 3))), "differ in width"),
    (lambda: fid_with_interval(np.zeros((5, 2)), np.zeros((5, 2)), bootstrap_samples=-1), "quality.bootstrap_samples"),
    (lambda: kid_over_subsets(np.zeros((5, 2)), np.zeros((5, 2)), subsets=0), "quality.kid_subsets"),
    (lambda: bootstrap_mean(np.array([])), "non-empty"),
])
def test_bad_input_fails_with_one_line(call, message):
    with pytest.raises(BibaddiffError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def test_scaled_class_counts_keep_the_balance_and_the_total():
    assert scaled_class_counts([150, 150, 300], 600).tolist() == [150, 150, 300]
    assert scaled_class_counts([150, 150, 300], 10).tolist() == [3, 2, 5]
    assert scaled_class_counts(np.array([149, 151, 150]), 7).sum() == 7
    with pytest.raises(BibaddiffError, match="counts_per_class"):
        scaled_class_counts([0, 0], 4)


def random_images(count: int, size: int = 8, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, channels), dtype=np.uint8)


def test_judge_features_and_distance_rows_name_the_judge_space():
    torch.manual_seed(0)
    judge = SmallCNN(1, 10).eval()
    real = quality_features(random_images(40), judge, batch_size=16)
    generated = quality_features(random_images(30, seed=1), judge, batch_size=16)
    assert real["judge"].shape == (40, 512) and set(real) == {"judge"}
    rows = distance_rows(real, generated, bootstrap_samples=5, kid_subsets=5, kid_subset_size=20, seed=0)
    assert [row["metric"] for row in rows] == ["fid_judge", "kid_judge"]
    assert rows[0]["value"] > 0 and rows[0]["low"] <= rows[0]["high"]
    with pytest.raises(BibaddiffError, match="3-channel"):
        judge_features(SmallCNN(3, 10), random_images(4))


@pytest.fixture(scope="module")
def random_inception_file(tmp_path_factory):
    """torch-fidelity's Inception-v3 with random weights, saved as its weights file format (a torch.save state dict).
    Building the network asks for weights; here, and only here, that step is skipped to get random ones."""
    from torch_fidelity import feature_extractor_inceptionv3 as fidelity

    patch = pytest.MonkeyPatch()
    patch.setattr(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {})
    patch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
    try:
        torch.manual_seed(0)
        network = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        patch.undo()
    path = tmp_path_factory.mktemp("inception") / "inception-random.pth"
    torch.save(network.state_dict(), path)
    return path


@pytest.mark.slow  # about a minute or more of CPU: the slow tier, not the quick loop
def test_inception_path_with_random_weights_from_a_local_file(random_inception_file):
    network = load_inception(random_inception_file)
    torch.manual_seed(0)
    judge = SmallCNN(1, 10).eval()
    real = quality_features(random_images(6), judge, network, batch_size=4)
    generated = quality_features(random_images(5, seed=2), judge, network, batch_size=4)
    assert real["inception"].shape == (6, 2048) and np.isfinite(real["inception"]).all()
    # Grey and RGB images of the same content give the same features (grey is repeated to three channels).
    grey = random_images(2)
    assert np.allclose(inception_features(network, grey), inception_features(network, np.repeat(grey, 3, axis=-1)))
    rows = distance_rows(real, generated, bootstrap_samples=3, kid_subsets=3, kid_subset_size=4, seed=0)
    assert [row["metric"] for row in rows] == ["fid_judge", "kid_judge", "fid", "kid"]
    assert all(np.isfinite(row["value"]) for row in rows)


def test_a_missing_or_wrong_shaped_inception_file_names_the_key(tmp_path):
    with pytest.raises(BibaddiffError, match="quality.inception_weights: .* not found"):
        load_inception(tmp_path / "absent.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(BibaddiffError, match=f"quality.inception_weights: {wrong} is not an Inception-v3") as error:
        load_inception(wrong)
    assert "\n" not in str(error.value)


def write_tiny_clip(folder, with_tokenizer: bool = True):
    """A randomly initialised two-layer CLIP with a character-level tokenizer, saved with save_pretrained."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    characters = [chr(code) for code in range(33, 127)]
    vocab = {token: i for i, token in enumerate(characters + [c + "</w>" for c in characters]
                                                  + ["<|startoftext|>", "<|endoftext|>"])}
    files = folder.parent / f"{folder.name}-tokenizer-files"
    files.mkdir(parents=True)
    (files / "vocab.json").write_text(json.dumps(vocab))
    (files / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(files / "vocab.json"), str(files / "merges.txt"), model_max_length=16)
    small = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**small, "vocab_size": len(vocab), "max_position_embeddings": 16,
                     "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
                     "pad_token_id": vocab["<|endoftext|>"]},
        vision_config={**small, "image_size": 16, "patch_size": 8}, projection_dim=8)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    if with_tokenizer:
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    else:
        image_processor.save_pretrained(folder)
    return folder


def test_clip_path_with_a_tiny_random_clip_folder(tmp_path):
    folder = write_tiny_clip(tmp_path / "clip")
    model, processor = load_clip(folder)
    images = random_images(6, size=12, channels=3)
    prompts = ["A photo of a cat", "A photo of a dog"] * 3
    scores = clip_scores(model, processor, images, prompts, batch_size=4)
    assert scores.shape == (6,) and np.all((scores >= 0) & (scores <= 100))
    # The same image and prompt score the same, whatever batch it is in.
    assert clip_scores(model, processor, images[:2], prompts[:2])[1] == pytest.approx(scores[1], abs=1e-4)
    summary = bootstrap_mean(scores, 20, seed=0)
    assert summary["low"] <= summary["value"] <= summary["high"]
    with pytest.raises(BibaddiffError, match="one prompt string per image"):
        clip_scores(model, processor, images, prompts[:2])


def tiny_config(**quality) -> dict:
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["quality"] = {**config.get("quality", {}), **quality}
    return config


def test_config_checks_the_quality_stage_before_any_job(tmp_path, random_inception_file):
    validated = validate_config(tiny_config(inception_weights=str(random_inception_file)), SCHEMA)
    assert validated["quality"]["enabled"] and validated["quality"]["guidance"] == 1
    with pytest.raises(BibaddiffError, match="config key quality.num_images: 10 generations .* at least 2 per class, "
                                             "so ask for at least 20"):
        validate_config(tiny_config(num_images=10), SCHEMA)
    with pytest.raises(BibaddiffError, match="quality.inception_weights: .*absent.pth not found"):
        validate_config(tiny_config(inception_weights=str(tmp_path / "absent.pth")), SCHEMA)
    wrong = tmp_path / "wrong.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(BibaddiffError, match="is not an Inception-v3 state dict"):
        validate_config(tiny_config(inception_weights=str(wrong)), SCHEMA)
    with pytest.raises(BibaddiffError, match="quality.clip_model: .*stable_diffusion only"):
        validate_config(tiny_config(clip_model=str(tmp_path)), SCHEMA)
    # Switched off, nothing is checked.
    validate_config(tiny_config(enabled=False, num_images=10), SCHEMA)


def test_a_clip_folder_without_a_tokenizer_is_named(tmp_path):
    from bibaddiff.config import check_clip_folder

    check_clip_folder(str(write_tiny_clip(tmp_path / "complete")))
    folder = write_tiny_clip(tmp_path / "no_tokenizer", with_tokenizer=False)
    with pytest.raises(BibaddiffError, match=f"config key quality.clip_model: {folder} has no tokenizer"):
        check_clip_folder(str(folder))
    with pytest.raises(BibaddiffError, match="is not a local folder"):
        check_clip_folder(str(tmp_path / "absent"))


def test_quality_table_and_figure(tmp_path):
    def result(attack, p, seed, fid):
        return {"model": f"{attack}/seed{seed}", "attack": attack, "trigger": None if p == 0 else "patch",
                "poison_ratio": p,
                "seed": seed, "guidance": 6.0, "n": 100,
                "rows": [{"metric": "fid_judge", "value": fid, "low": fid - 1, "high": fid + 1, "interval": "bootstrap"},
                         {"metric": "kid_judge", "value": 0.01, "low": None, "high": None, "kid_sd_over_subsets": 0.01,
                          "interval": "none (kid_sd_over_subsets: one sd over 10 subsets of 50 images)"}]}

    old_style = result("clean", 0.0, 1, 4.5)  # written when KID's low/high were the mean -+ one sd over subsets
    old_style["p"] = old_style.pop("poison_ratio")  # and when the ratio was named p
    old_style["rows"][1] = {"metric": "kid_judge", "value": 0.01, "low": 0.0, "high": 0.02,
                            "interval": "mean +- std over 10 subsets of 50"}
    table = quality_table([result("patch-p0.1", 0.1, 0, 5.0), result("patch-p0.1", 0.1, 1, 6.0),
                           result("clean", 0.0, 0, 4.0), old_style])
    assert list(table.columns) == ["model", "attack", "trigger", "poison_ratio", "seed", "guidance", "n", "metric", "value",
                                   "low", "high", "kid_sd_over_subsets", "interval"]
    assert len(table) == 8 and (table[table.attack == "clean"].poison_ratio == 0).all() and set(table.metric) == {"fid_judge", "kid_judge"}
    kid, fid = table[table.metric == "kid_judge"], table[table.metric == "fid_judge"]
    assert kid.low.isna().all() and kid.high.isna().all() and kid.kid_sd_over_subsets.tolist() == pytest.approx([0.01] * 4)
    assert fid.kid_sd_over_subsets.isna().all() and fid.low.notna().all()
    table = table[table.model != "clean/seed1"]
    plot_quality_vs_ratio(table, tmp_path / "fid.png", {"patch-p0.1": "patch", "clean": "clean"})
    assert (tmp_path / "fid.png").stat().st_size > 0
    with pytest.raises(BibaddiffError, match="no FID rows"):
        plot_quality_vs_ratio(table[table.metric == "kid_judge"], tmp_path / "none.png")


def test_the_inception_file_is_loaded_once_per_file_version_not_at_every_validation(tmp_path, random_inception_file,
                                                                                    monkeypatch):
    import os

    import bibaddiff.quality

    monkeypatch.setenv("BIBADDIFF_CACHE_DIR", str(tmp_path / "cache"))
    loads = []
    real_load = bibaddiff.quality.load_inception
    monkeypatch.setattr(bibaddiff.quality, "load_inception", lambda path: loads.append(path) or real_load(path))
    config = tiny_config(inception_weights=str(random_inception_file))
    validate_config(config, SCHEMA)
    validate_config(config, SCHEMA)
    assert len(loads) == 1
    stat = random_inception_file.stat()
    os.utime(random_inception_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new version of the file
    validate_config(config, SCHEMA)
    assert len(loads) == 2
    wrong = tmp_path / "wrong.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1)}, wrong)
    for _ in range(2):  # a failure is not remembered
        with pytest.raises(BibaddiffError, match="is not an Inception-v3 state dict"):
            validate_config(tiny_config(inception_weights=str(wrong)), SCHEMA)
    assert len(loads) == 4


def test_the_quality_stage_of_a_model_compares_its_generations_with_the_reference_features(tmp_path):
    from bibaddiff.data import ImageDataset, write_dataset
    from bibaddiff.judges import save_judge
    from bibaddiff.quality import model_quality, reference_features

    torch.manual_seed(0)
    save_judge(tmp_path / "judge", SmallCNN(1, 10).eval(), {"kind": "content", "architecture": "small_cnn",
                                                            "channels": 1, "num_outputs": 10, "image_size": 8,
                                                            "class_names": [str(c) for c in range(10)]})
    for name, seed in (("real", 0), ("generated", 1)):
        write_dataset(tmp_path / name, ImageDataset(random_images(40, seed=seed), np.arange(40) % 10,
                                                    [str(c) for c in range(10)], manifest={"source": "test"}))
    np.savez(tmp_path / "reference.npz", **reference_features(tmp_path / "real", tmp_path / "judge", batch_size=16))
    settings = {"batch_size": 16, "bootstrap_samples": 5, "kid_subsets": 5, "kid_subset_size": 20, "seed": 0,
                "clip_model": None}
    result = model_quality(tmp_path / "generated", tmp_path / "reference.npz", tmp_path / "judge", settings)
    assert result["n"] == 40 and [row["metric"] for row in result["rows"]] == ["fid_judge", "kid_judge"]
    assert result["rows"][0]["value"] > 0
