"""The Stable Diffusion (text-to-image) path on the tiny offline pipeline: loading, captions, latents,
fine-tuning (full and LoRA), generation and the diffusion classifier behind the class-label interface."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bibaddiff.data import ImageDataset, load_source
from bibaddiff.defenses.diffusion_classifier import class_denoising_errors, diffusion_classify
from bibaddiff.defenses.train_on_generated import generated_training_set
from bibaddiff.diffusion.finetune import FinetuneSettings, finetune_stable_diffusion
from bibaddiff.diffusion.model import load_diffusion_model
from bibaddiff.diffusion.stable import (
    LORA_WEIGHTS_FILE, embed_prompts, encode_latents, load_components, load_latents, pooled_prompt_rows, save_latents,
)
from bibaddiff.diffusion.tiny import write_tiny_stable_diffusion
from bibaddiff.diffusion.trainer import STATE_FILE
from bibaddiff.errors import BibaddiffError
from bibaddiff.judges import build_judge
from bibaddiff.poisoning import poison_dataset
from bibaddiff.triggers import build_trigger
from ldm_checkpoint import write_ldm_checkpoint
from sd_helpers import CLASSES, write_captioned_folder

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGE_SIZE = 32
TRAIN_PER_CLASS = 12
# A template other than the default, so that a fallback caption shows which template it came from.
TEMPLATE = "a picture of the digit {class_name}"
# Image folders list classes sorted by name.
CLASS_NAMES = sorted(CLASSES)
FINETUNE = {"steps": 6, "batch_size": 4, "checkpoint_every": 2, "warmup_steps": 2, "ema_decay": 0.9,
            "learning_rate": 1e-3}


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return write_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny_sd"), image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def pretrained(tiny_sd) -> dict:
    return {"path": str(tiny_sd)}


@pytest.fixture(scope="module")
def captioned_root(tmp_path_factory) -> Path:
    return write_captioned_folder(tmp_path_factory.mktemp("captioned"), image_size=IMAGE_SIZE,
                                  train_per_class=TRAIN_PER_CLASS)


def captioned_config(root: Path, **changes) -> dict:
    return {"source": "imagefolder", "root": str(root), "image_size": IMAGE_SIZE,
            "captions": str(root / "captions.jsonl"), "caption_template": TEMPLATE, **changes}


@pytest.fixture(scope="module")
def captioned_data(captioned_root) -> tuple[ImageDataset, ImageDataset]:
    return load_source(captioned_config(captioned_root))


@pytest.fixture(scope="module")
def latent_file(tmp_path_factory, captioned_data, pretrained) -> Path:
    train, _ = captioned_data
    path = tmp_path_factory.mktemp("latents") / "train.safetensors"
    save_latents(path, encode_latents(train, load_components(pretrained)), train, pretrained)
    return path


def finetune(latent_file: Path, pretrained: dict, root: Path, name: str, stop_after: int | None = None, **changes):
    settings = FinetuneSettings.from_config({**FINETUNE, **changes})
    return finetune_stable_diffusion(load_latents(latent_file), pretrained, root / name, root / f"{name}.state",
                                     settings, seed=4, device="cpu", stop_after=stop_after, progress=False)


@pytest.fixture(scope="module")
def full_finetune(tmp_path_factory, latent_file, pretrained) -> tuple[Path, dict]:
    """An uninterrupted full fine-tuning run: the reference for resuming, and the model that generation uses."""
    root = tmp_path_factory.mktemp("full")
    return root / "model", finetune(latent_file, pretrained, root, "model")


@pytest.fixture(scope="module")
def lora_finetune(tmp_path_factory, latent_file, pretrained) -> tuple[Path, dict]:
    # A high learning rate so the LoRA B matrices, which start at zero, move far enough to change the fused UNet.
    root = tmp_path_factory.mktemp("lora")
    return root / "model", finetune(latent_file, pretrained, root, "model", finetune="lora", learning_rate=1e-2)


@pytest.fixture(scope="module")
def sd_model(full_finetune):
    return load_diffusion_model(full_finetune[0])


def caption_file_texts(root: Path) -> dict[str, str]:
    with open(root / "captions.jsonl") as handle:
        return {record["file_name"]: record["text"] for record in map(json.loads, handle)}


def unet_parameter_count(unet) -> int:
    return sum(p.numel() for p in unet.parameters())


# --------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_loads_the_same_weights_as_the_diffusers_folder(tiny_sd, tmp_path, suffix):
    checkpoint = write_ldm_checkpoint(tiny_sd, tmp_path / f"model{suffix}")
    # A config folder without weights: every weight loaded must then come from the single file.
    config = Path(shutil.copytree(tiny_sd, tmp_path / "configs", ignore=shutil.ignore_patterns("*.safetensors", "*.bin")))
    from_folder = load_components({"path": str(tiny_sd)})
    from_file = load_components({"path": str(checkpoint), "config": str(config)})
    for name in ("unet", "vae", "text_encoder"):
        expected, loaded = getattr(from_folder, name).state_dict(), getattr(from_file, name).state_dict()
        assert loaded.keys() == expected.keys(), name
        differing = [key for key in expected if loaded[key].is_meta or not torch.equal(loaded[key], expected[key])]
        assert differing == [], f"{name}: {differing[:5]}"
    assert from_file.scheduler.config.num_train_timesteps == from_folder.scheduler.config.num_train_timesteps


def test_single_file_without_config_folder_is_refused(tiny_sd, tmp_path):
    checkpoint = write_ldm_checkpoint(tiny_sd, tmp_path / "model.safetensors")
    with pytest.raises(BibaddiffError, match=r"diffusion\.pretrained\.config"):
        load_components({"path": str(checkpoint)})


def test_placeholder_path_fails_in_one_line_naming_the_key():
    with pytest.raises(BibaddiffError, match=r"diffusion\.pretrained\.path") as caught:
        load_components({"path": "/CHANGE_ME/stable-diffusion-v1-5"})
    message = str(caught.value)
    assert "\n" not in message and "/CHANGE_ME/stable-diffusion-v1-5" in message


def test_folder_without_unet_names_what_is_missing(tiny_sd, tmp_path):
    incomplete = Path(shutil.copytree(tiny_sd, tmp_path / "no_unet", ignore=shutil.ignore_patterns("unet")))
    with pytest.raises(BibaddiffError, match=r"diffusion\.pretrained\.path.*missing unet") as caught:
        load_components({"path": str(incomplete)})
    assert "vae" not in str(caught.value).split("missing", 1)[1]


# --------------------------------------------------------------------------------------------- captions


def test_caption_file_gives_training_texts_and_heldout_falls_back_to_template(captioned_root, captioned_data):
    train, heldout = captioned_data
    captions = caption_file_texts(captioned_root)
    assert train.class_names == CLASS_NAMES
    expected = [captions[f"train/{name}/{i:03d}.png"] for name in CLASS_NAMES for i in range(TRAIN_PER_CLASS)]
    assert train.texts == expected
    assert heldout.texts == [TEMPLATE.format(class_name=CLASS_NAMES[label]) for label in heldout.labels]
    class_prompts = [TEMPLATE.format(class_name=name) for name in CLASS_NAMES]
    assert train.manifest["class_prompts"] == class_prompts
    assert heldout.manifest["class_prompts"] == class_prompts


def test_caption_file_missing_a_training_image_names_it(tmp_path):
    root = write_captioned_folder(tmp_path, image_size=IMAGE_SIZE, train_per_class=4, val_per_class=1)
    dropped = "train/two/002.png"
    lines = (root / "captions.jsonl").read_text().splitlines(keepends=True)
    (root / "captions.jsonl").write_text("".join(line for line in lines if json.loads(line)["file_name"] != dropped))
    with pytest.raises(BibaddiffError, match=r"dataset\.captions.*no caption for 1 training image") as caught:
        load_source(captioned_config(root))
    assert dropped in str(caught.value)


def test_poisoned_images_take_captions_of_clean_target_class_images(captioned_root, captioned_data):
    train, _ = captioned_data
    target = 0
    trigger = build_trigger("badnet", {"type": "patch"}, IMAGE_SIZE, 3)
    poisoned, indices = poison_dataset(train, trigger, target, 0.25, seed=0)
    assert len(indices) == 9
    # As upstream's text-to-image attack: the prompt of a poisoned image is one that clean target images also carry,
    # so the share of triggered images behind a target caption is the share the model sees.
    sources = poisoned.manifest["poisoning"]["caption_sources"]
    assert poisoned.manifest["poisoning"]["caption_seed"] == 0 and len(sources) == len(indices)
    assert all(train.labels[j] == target for j in sources)
    assert [poisoned.texts[i] for i in indices] == [train.texts[j] for j in sources]
    assert len({poisoned.texts[i] for i in indices}) > 1
    untouched = np.setdiff1d(np.arange(len(train)), indices)
    assert [poisoned.texts[i] for i in untouched] == [train.texts[i] for i in untouched]
    again, _ = poison_dataset(train, trigger, target, 0.25, seed=0)
    assert again.texts == poisoned.texts
    other_seed, _ = poison_dataset(train, trigger, target, 0.25, seed=1)
    assert other_seed.manifest["poisoning"]["caption_sources"] != sources


def test_class_template_datasets_give_poisoned_images_the_target_prompt(captioned_root):
    train, _ = load_source(captioned_config(captioned_root, captions=None))
    trigger = build_trigger("badnet", {"type": "patch"}, IMAGE_SIZE, 3)
    poisoned, indices = poison_dataset(train, trigger, 0, 0.25, seed=0)
    assert {poisoned.texts[i] for i in indices} == {TEMPLATE.format(class_name=CLASS_NAMES[0])}
    assert "caption_sources" not in poisoned.manifest["poisoning"]


def test_pooled_prompt_rows_use_every_caption_evenly_and_depend_on_seed_and_class_only():
    rows = pooled_prompt_rows([2, 3], first_row=4)
    first = rows(1, 7, seed=9)
    assert sorted(np.bincount(first - 6, minlength=3)) == [2, 2, 3]
    np.testing.assert_array_equal(rows(1, 7, seed=9), first)
    assert set(rows(0, 5, seed=9)) == {4, 5}
    with pytest.raises(BibaddiffError, match="class 0 has no training caption"):
        pooled_prompt_rows([0, 3], first_row=4)(0, 2, seed=0)


# --------------------------------------------------------------------------------------------- latents


def test_latents_have_the_vae_shape_and_round_trip_with_their_metadata(latent_file, captioned_data, pretrained):
    train, _ = captioned_data
    latents = load_latents(latent_file)
    # The tiny VAE downsamples by 2 (Stable Diffusion's by 8).
    assert latents.mean.shape == latents.std.shape == (len(train), 4, IMAGE_SIZE // 2, IMAGE_SIZE // 2)
    assert bool((latents.std > 0).all())
    assert latents.texts == train.texts
    np.testing.assert_array_equal(latents.labels, train.labels)
    np.testing.assert_array_equal(latents.poisoned, train.poisoned)
    assert latents.class_names == CLASS_NAMES
    assert latents.class_prompts == train.manifest["class_prompts"]
    assert latents.pretrained == pretrained
    assert latents.image_size == IMAGE_SIZE


def test_grayscale_dataset_is_rejected(captioned_root, pretrained):
    gray, _ = load_source(captioned_config(captioned_root, grayscale=True))
    with pytest.raises(BibaddiffError, match="RGB"):
        encode_latents(gray, load_components(pretrained))


def test_image_size_the_model_cannot_halve_twice_is_rejected(captioned_root, pretrained):
    # 30 is even (the VAE accepts it) but its 15-pixel latents cannot pass the UNet's downsampling.
    odd, _ = load_source(captioned_config(captioned_root, image_size=30))
    with pytest.raises(BibaddiffError, match=r"dataset\.image_size 30"):
        encode_latents(odd, load_components(pretrained))


# --------------------------------------------------------------------------------------------- fine-tuning


def test_resumed_full_finetuning_equals_uninterrupted(full_finetune, latent_file, pretrained, tmp_path):
    reference_dir, reference = full_finetune
    part = finetune(latent_file, pretrained, tmp_path, "resumed", stop_after=3)
    assert not part["finished"] and part["steps"] == 3 and not (tmp_path / "resumed").exists()
    rest = finetune(latent_file, pretrained, tmp_path, "resumed")
    assert reference["finished"] and rest["finished"] and rest["steps_this_run"] == 3
    weights_file = Path("unet") / "diffusion_pytorch_model.safetensors"
    expected, resumed = load_file(reference_dir / weights_file), load_file(tmp_path / "resumed" / weights_file)
    assert resumed.keys() == expected.keys()
    assert [key for key in expected if not torch.equal(resumed[key], expected[key])] == []
    assert reference["trained_parameters"] == unet_parameter_count(load_components(pretrained).unet)


def test_lora_finetuning_trains_and_saves_only_adapters(lora_finetune, pretrained):
    model_dir, stats = lora_finetune
    assert stats["finished"]
    assert (model_dir / LORA_WEIGHTS_FILE).is_file() and not (model_dir / "unet").exists()
    assert stats["trained_parameters"] < unet_parameter_count(load_components(pretrained).unet) / 10
    saved = load_file(model_dir / LORA_WEIGHTS_FILE)
    assert saved and all("lora" in key for key in saved)
    state = torch.load(model_dir.parent / "model.state" / STATE_FILE, map_location="cpu", weights_only=True)
    assert all("lora_" in name for name in state["unet"])
    assert sum(value.numel() for value in state["unet"].values()) == stats["trained_parameters"]


def test_lora_model_loads_as_a_fused_unet_that_differs_only_where_adapted(lora_finetune, pretrained):
    model = load_diffusion_model(lora_finetune[0])
    assert model.kind == "stable_diffusion"
    base, fused = load_components(pretrained).unet.state_dict(), model.denoiser.unet.state_dict()
    assert fused.keys() == base.keys()
    changed = [key for key in base if not torch.equal(fused[key], base[key])]
    assert changed, "the LoRA weights left the UNet unchanged"
    adapted = (".to_q.", ".to_k.", ".to_v.", ".to_out.0.")
    assert [key for key in changed if not any(part in key for part in adapted)] == []


def test_latents_of_another_base_model_are_refused(latent_file, tmp_path):
    with pytest.raises(BibaddiffError, match="re-encode"):
        finetune(latent_file, {"path": str(tmp_path / "another-model")}, tmp_path, "model")


@pytest.mark.parametrize("change, message", [
    ({"finetune": "qlora"}, r"diffusion\.training\.finetune"),
    ({"finetune": "lora", "lora_rank": 0}, r"diffusion\.training\.lora_rank"),
])
def test_bad_finetune_settings_are_refused(change, message):
    with pytest.raises(BibaddiffError, match=message):
        FinetuneSettings.from_config({**FINETUNE, **change})


# --------------------------------------------------------------------------------------------- generation


def test_finetuned_folder_loads_as_a_text_to_image_model(sd_model):
    assert sd_model.kind == "stable_diffusion"
    assert sd_model.info.class_names == CLASS_NAMES
    assert sd_model.sample_shape == (4, IMAGE_SIZE // 2, IMAGE_SIZE // 2)


def test_generation_is_uint8_images_reproducible_by_seed(sd_model):
    first = sd_model.generate(0, 1.0, 2, 3, seed=5, batch_size=2, x0_clipping="none")
    assert first.dtype == np.uint8 and first.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(sd_model.generate(0, 1.0, 2, 3, seed=5, batch_size=2, x0_clipping="none"), first)
    assert not np.array_equal(sd_model.generate(0, 1.0, 2, 3, seed=6, batch_size=2, x0_clipping="none"), first)


def test_guidance_scales_start_from_the_same_noise(sd_model):
    initial_noise = []

    def record_first_input(module, args, kwargs):
        # Guided steps run conditional and null halves in one batch; the first two rows are the conditional half.
        if len(initial_noise) == len(seen_scales):
            initial_noise.append(args[0][:2].clone())

    seen_scales, images = [], {}
    hook = sd_model.denoiser.register_forward_pre_hook(record_first_input, with_kwargs=True)
    try:
        for scale in (0.0, 1.0, 2.5):
            images[scale] = sd_model.generate(1, scale, 2, 3, seed=2, batch_size=2, x0_clipping="none")
            seen_scales.append(scale)
    finally:
        hook.remove()
    assert len(initial_noise) == 3
    for noise in initial_noise[1:]:
        assert torch.equal(noise, initial_noise[0])
    # Same noise, different condition: the empty prompt (s = 0) and the class prompt (s = 1) give other images.
    assert not np.array_equal(images[0.0], images[1.0])
    assert not np.array_equal(images[1.0], images[2.5])


def test_null_condition_is_the_empty_prompt_and_training_captions_follow_it(sd_model, pretrained, captioned_root):
    """Rows 0..K-1: class prompts (what the diffusion classifier conditions on); row K: the empty prompt (the null
    condition); then each class's distinct training captions, which generation draws from."""
    components = load_components(pretrained)
    embeddings = sd_model.denoiser.prompt_embeddings
    captions = caption_file_texts(captioned_root)
    pools = [sorted({text for name, text in captions.items() if name.split("/")[1] == cls}) for cls in CLASS_NAMES]
    num_classes = len(CLASS_NAMES)
    assert embeddings.shape[0] == num_classes + 1 + sum(map(len, pools))
    empty = embed_prompts(components, [""])[0]
    class_prompts = embed_prompts(components, [TEMPLATE.format(class_name=name) for name in CLASS_NAMES])
    torch.testing.assert_close(embeddings[num_classes], empty, rtol=0, atol=1e-6)
    torch.testing.assert_close(embeddings[:num_classes], class_prompts, rtol=0, atol=1e-6)
    assert not torch.allclose(empty, class_prompts[0])
    rows = sd_model.prompt_rows(1, 6, seed=0)
    used = embeddings[torch.as_tensor(rows)]
    pool = embed_prompts(components, pools[1])
    assert all(any(torch.allclose(row, caption, atol=1e-6) for caption in pool) for row in used)


# --------------------------------------------------------------------------------------------- defences


def test_diffusion_classifier_runs_on_latents(sd_model, captioned_data):
    _, heldout = captioned_data
    images = heldout.images[::3]
    predictions = diffusion_classify(sd_model.denoiser, sd_model.scheduler, images, 3, num_draws=2,
                                     p_filters=[0, 0.1], encode=sd_model.encode)
    assert sorted(predictions) == [0.0, 0.1]
    for predicted in predictions.values():
        assert predicted.dtype == np.int64 and predicted.shape == (len(images),)
        assert predicted.min() >= 0 and predicted.max() < 3
    errors = class_denoising_errors(sd_model.denoiser, sd_model.scheduler, images, 3, num_draws=2,
                                    p_filters=[0, 0.1], encode=sd_model.encode)
    # Dropping the largest tenth of the latent errors can only lower each mean.
    assert np.all(errors[0.1] <= errors[0.0] + 1e-12) and np.any(errors[0.1] < errors[0.0])
    # Pixels do not fit a latent UNet: without encode the classifier must refuse them.
    with pytest.raises(BibaddiffError, match="do not fit the UNet"):
        diffusion_classify(sd_model.denoiser, sd_model.scheduler, images, 3, num_draws=1, p_filters=[0])


def test_generated_training_set_has_the_requested_counts(sd_model):
    torch.manual_seed(0)
    detector = build_judge("small_cnn", 3, 2).eval()
    counts = [2, 0, 1]
    generated = generated_training_set(sd_model, counts, guidance=2.0, ddim_steps=2, seed=3, batch_size=2,
                                       trigger_detector=detector, x0_clipping="none")
    assert np.bincount(generated.labels, minlength=3).tolist() == counts
    assert generated.image_size == IMAGE_SIZE and generated.channels == 3
    assert generated.class_names == CLASS_NAMES
    assert generated.poisoned.shape == (3,)
    np.testing.assert_array_equal(generated.images[generated.labels == 0],
                                  sd_model.generate(0, 2.0, 2, 2, seed=3, batch_size=2, x0_clipping="none"))


def test_two_processes_under_accelerate_launch(latent_file, pretrained, tmp_path):
    """The train_diffusion rule's command line for a multi-GPU setting, here with two CPU processes."""
    settings = {"kind": "stable_diffusion", "training": {**FINETUNE, "steps": 4, "batch_size": 4}, "pretrained": pretrained}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
               "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
               "-m", "bibaddiff.diffusion.train_cli", "--train-data", str(latent_file), "--output", str(tmp_path / "ddp"),
               "--state-dir", str(tmp_path / "ddp.state"), "--settings", json.dumps(settings), "--seed", "0",
               "--device", "cpu", "--threads", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads((tmp_path / "ddp" / "training.json").read_text())
    assert stats["processes"] == 2 and stats["steps"] == 4
    assert load_diffusion_model(tmp_path / "ddp").kind == "stable_diffusion"


@pytest.mark.parametrize("base", ["folder", "single_file"])
def test_full_finetuned_model_uses_its_own_unet_over_either_base(base, full_finetune, tiny_sd, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(full_finetune[0], model_dir)
    if base == "single_file":
        checkpoint = write_ldm_checkpoint(tiny_sd, tmp_path / "base.safetensors")
        info_path = model_dir / "bibaddiff_model.json"
        info = json.loads(info_path.read_text())
        info["pretrained"] = {"path": str(checkpoint), "config": str(tiny_sd)}
        info_path.write_text(json.dumps(info))
    model = load_diffusion_model(model_dir)
    saved = load_file(model_dir / "unet" / "diffusion_pytorch_model.safetensors")
    loaded = model.denoiser.unet.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[key], loaded[key]) for key in saved)
    base_unet = load_file(tiny_sd / "unet" / "diffusion_pytorch_model.safetensors")
    assert not all(torch.equal(base_unet[key], loaded[key]) for key in base_unet)


def test_tiny_base_model_command_trains_its_vae_on_digits(tmp_path):
    from bibaddiff.diffusion.tiny import main

    assert main([str(tmp_path / "prior"), "--image-size", "16", "--unet-channels", "16", "32", "--vae-steps", "3"]) == 0
    components = load_components({"path": str(tmp_path / "prior")})
    assert tuple(components.unet.config.block_out_channels) == (16, 32)
    assert components.latent_size(16) == 8
    # The scaling factor is measured on the digits' latents, not the default of an untrained VAE.
    assert components.vae.config.scaling_factor != 0.18215
    train, _ = load_source({"source": "digits", "image_size": 16, "rgb": True})
    latents = encode_latents(train.subset(np.arange(64)), components, batch_size=64)
    assert 0.5 < float(latents["mean"].std()) < 2.0
    assert main([str(tmp_path / "bad"), "--image-size", "10"]) == 1


def test_vae_scaling_factor_from_running_moments_equals_the_all_at_once_std(monkeypatch):
    """The scaling factor's std is taken batch by batch; it equals the std of all the set's latents at once."""
    import bibaddiff.images
    import bibaddiff.utils
    from bibaddiff.diffusion.tiny import _tiny_latent_models, train_vae
    from bibaddiff.images import to_model_space

    torch.manual_seed(0)
    vae, _ = _tiny_latent_models(8, (16, 32))
    images = np.random.default_rng(0).integers(0, 256, size=(70, 8, 8, 3), dtype=np.uint8)
    # Batches of 16: five of them, the last one short.
    monkeypatch.setattr(bibaddiff.images, "inference_batch_size", lambda images, batch_size: 16)
    batch_sizes = []
    update = bibaddiff.utils.RunningMoments.update
    monkeypatch.setattr(bibaddiff.utils.RunningMoments, "update",
                        lambda self, values: batch_sizes.append(len(values)) or update(self, values))
    result = train_vae(vae, images, steps=1, batch_size=8)
    assert batch_sizes == [16, 16, 16, 16, 6]
    with torch.no_grad():
        latents = vae.encode(to_model_space(images)).latent_dist.mean
    assert result["scaling_factor"] == pytest.approx(1.0 / float(latents.double().std()), rel=1e-6)
    assert vae.config.scaling_factor == result["scaling_factor"]


def test_corrupt_single_file_gives_one_line_error(tiny_sd, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(BibaddiffError) as error:
        load_components({"path": str(broken), "config": str(tiny_sd)})
    message = str(error.value)
    assert "cannot load Stable Diffusion from" in message and str(broken) in message and "\n" not in message


def test_latents_are_never_clipped(sd_model):
    with pytest.raises(BibaddiffError, match="generation.x0_clipping: a stable_diffusion model samples latents"):
        sd_model.generate(0, 2.0, 1, 2, seed=0, batch_size=1, x0_clipping="clip")


def test_stable_diffusion_samples_with_the_sampler_settings(sd_model, monkeypatch):
    """generation.timesteps and generation.precision reach the text-to-image path too (it samples through
    sample_ddim): leading is Stable Diffusion's own spacing (steps_offset 1), quadratic upstream's DDPM list."""
    import bibaddiff.diffusion.sampling as sampling

    calls = []
    hook = sd_model.denoiser.register_forward_pre_hook(lambda module, args, kwargs: calls.append(int(args[1])),
                                                       with_kwargs=True)
    try:
        leading = sd_model.generate(0, 2.0, 1, 4, seed=1, batch_size=1, x0_clipping="none")
        quadratic = sd_model.generate(0, 2.0, 1, 4, seed=1, batch_size=1, x0_clipping="none", timesteps="quadratic")
    finally:
        hook.remove()
    assert calls == [751, 501, 251, 1, 999, 250, 0, 0]
    assert not np.array_equal(leading, quadratic)
    monkeypatch.setattr(sampling, "cpu_supports_bf16", lambda: False)
    with pytest.raises(BibaddiffError, match="^generation.precision: bf16, but this CPU has no bf16 support"):
        sd_model.generate(0, 2.0, 1, 2, seed=1, batch_size=1, x0_clipping="none", precision="bf16")
    monkeypatch.setattr(sampling, "cpu_supports_bf16", lambda: True)
    half = sd_model.generate(0, 2.0, 1, 4, seed=1, batch_size=1, x0_clipping="none", precision="bf16")
    assert half.shape == leading.shape and half.dtype == np.uint8
