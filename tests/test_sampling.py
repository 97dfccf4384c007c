"""The sampler's timesteps (diffusers' leading spacing, upstream's quadratic list) and precision, and EMA-free
training (upstream's CIFAR-10 DDPM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bibaddiff.diffusion.timesteps import (DEFAULT_PRECISION, DEFAULT_TIMESTEPS, allowed_quadratic_steps,
                                           quadratic_timesteps, sampler_options)
from bibaddiff.errors import BibaddiffError

REPO = Path(__file__).resolve().parents[1]
# Upstream's `--select quadratic` list for 50 steps of 1,000 (ddpm/diffusion.py), written out.
QUADRATIC_50 = [0, 0, 0, 1, 3, 6, 10, 15, 21, 27, 35, 43, 52, 62, 73, 85, 97, 111, 125, 140, 156, 173, 191, 210, 229,
                250, 271, 293, 316, 340, 365, 390, 417, 444, 472, 501, 531, 562, 594, 626, 660, 694, 729, 765, 802, 840,
                878, 918, 958, 999]


def test_quadratic_timesteps_for_50_steps_are_upstreams_list():
    assert quadratic_timesteps(50, 1000) == QUADRATIC_50
    assert len(QUADRATIC_50) == 50
    # The same list from its definition: a 0, then floor(linspace(0, sqrt(T), S - 1)^2), the last entry set to T - 1.
    raw = (np.linspace(0, np.sqrt(1000), 49) ** 2).astype(int).tolist()
    assert [0] + raw[:-1] + [999] == QUADRATIC_50 and raw[-1] == 1000


def test_quadratic_step_counts_that_repeat_more_than_the_leading_zeros_are_refused():
    assert allowed_quadratic_steps(1000) == list(range(1, 66))
    assert quadratic_timesteps(1, 1000) == [999] and quadratic_timesteps(2, 1000) == [0, 999]
    with pytest.raises(BibaddiffError, match=r"generation.ddim_steps: 66 steps .* quadratic .* allowed 1\.\.65$"):
        quadratic_timesteps(66, 1000)
    with pytest.raises(BibaddiffError, match="generation.ddim_steps must lie in 1..1000"):
        quadratic_timesteps(1001, 1000)


def test_sampler_options_fill_the_defaults_and_refuse_unknown_values():
    assert sampler_options({}) == {"timesteps": "leading", "precision": "fp32"}
    assert sampler_options({"timesteps": "quadratic", "precision": "bf16", "seed": 1}) == {
        "timesteps": "quadratic", "precision": "bf16"}
    with pytest.raises(BibaddiffError, match="generation.timesteps must be one of leading, quadratic; got 'cubic'"):
        sampler_options({"timesteps": "cubic"})
    with pytest.raises(BibaddiffError, match="generation.precision must be one of fp32, bf16, fp16; got 'fp8'"):
        sampler_options({"precision": "fp8"})


def test_the_defaults_are_the_schemas():
    from bibaddiff.schema import section_defaults

    for kind in ("ddpm", "stable_diffusion"):
        defaults = section_defaults(("generation",), kind)
        assert defaults["timesteps"] == DEFAULT_TIMESTEPS == "leading"
        assert defaults["precision"] == DEFAULT_PRECISION == "fp32"


# ----------------------------------------------------------------------------------- the explicit DDIM update


def ddim_for(config: dict, steps: int, mode: str):
    from diffusers import DDIMScheduler, DDPMScheduler

    # from_config, as the Stable Diffusion loader does: it keeps keys DDPMScheduler lacks (set_alpha_to_one).
    scheduler = DDPMScheduler.from_config(config)
    ddim = DDIMScheduler.from_config(scheduler.config, clip_sample=mode != "none", thresholding=False)
    ddim.set_timesteps(steps)
    return scheduler, ddim


# Our DDPMs' scheduler, and Stable Diffusion's (steps_offset 1, final alpha = alphas_cumprod[0]).
SCHEDULERS = {
    "ddpm": {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"},
    "ddpm_linear": {"num_train_timesteps": 1000, "beta_schedule": "linear"},
    "sd": {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
           "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False},
    "v_prediction": {"num_train_timesteps": 1000, "prediction_type": "v_prediction"},
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("mode", ["none", "clip", "clip_recompute"])
def test_explicit_update_equals_diffusers_step_on_the_leading_spacing(name, mode):
    from bibaddiff.diffusion.sampling import ddim_update, timestep_pairs

    _, ddim = ddim_for(SCHEDULERS[name], 10, mode)
    pairs = timestep_pairs(sorted(int(t) for t in ddim.timesteps))
    assert [t for t, _ in pairs] == [int(t) for t in ddim.timesteps] and pairs[-1][1] == -1
    generator = torch.Generator().manual_seed(0)
    for t, t_prev in pairs:
        sample = 2 * torch.randn(3, 2, 4, 4, generator=generator)
        eps = 1.5 * torch.randn(3, 2, 4, 4, generator=generator)
        expected = ddim.step(eps, torch.tensor(t), sample, eta=0.0,
                             use_clipped_model_output=mode == "clip_recompute").prev_sample
        torch.testing.assert_close(ddim_update(ddim, eps, t, t_prev, sample, mode), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["ddpm", "sd"])
@pytest.mark.parametrize("mode", ["none", "clip_recompute"])
def test_explicit_loop_over_the_leading_timesteps_equals_diffusers_sampling(name, mode):
    """The explicit loop (used for quadratic) is diffusers' DDIM when given diffusers' own timesteps."""
    from bibaddiff.diffusion.model import build_unet
    from bibaddiff.diffusion.sampling import sample_ddim

    scheduler, ddim = ddim_for(SCHEDULERS[name], 8, mode)
    torch.manual_seed(0)
    unet = build_unet(8, 1, 3, block_out_channels=[8, 16], norm_num_groups=4).eval()
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 0])
    leading = sample_ddim(unet, scheduler, labels, 3, 2.0, 8, noise, x0_clipping=mode)
    explicit = sample_ddim(unet, scheduler, labels, 3, 2.0, 8, noise, x0_clipping=mode,
                           timesteps=sorted(int(t) for t in ddim.timesteps))
    torch.testing.assert_close(explicit, leading, rtol=1e-5, atol=1e-5)


class _RecordingAffineUNet(torch.nn.Module):
    """eps = 0.6 x + bias(label), recording the timesteps it is called at."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, sample, t, class_labels):
        self.calls.append(int(t))
        bias = torch.where(class_labels == 10, -0.4, 0.9).float().view(-1, 1, 1, 1)
        return type("Output", (), {"sample": 0.6 * sample + bias})()


def upstream_quadratic_ddim(noise, betas, steps, scale):
    """Upstream's DDIM (ddpm/diffusion.py ddim_sample, eta = 0, select quadratic), written from its definition:
    alphas_bar_prev[k] = alphas_bar[k - 1] (1 at k = 0), read at prevt + 1; the last step has prevt = -1."""
    alphas_bar = torch.cumprod(1 - betas.double(), 0)
    alphas_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_bar[:-1]])
    tseq = list((np.linspace(0, np.sqrt(1000), steps - 1) ** 2).astype(int))
    tseq.insert(0, 0)
    tseq[-1] = 999
    x = noise.double()
    for i in range(steps):
        t = tseq[-1 - i]
        prevt = tseq[-2 - i] if i != steps - 1 else -1
        eps = (1 + (scale - 1)) * (0.6 * x + 0.9) - (scale - 1) * (0.6 * x - 0.4)
        a_t, a_prev = alphas_bar[t], alphas_bar_prev[prevt + 1]
        x = a_prev.sqrt() * (x - (1 - a_t).sqrt() * eps) / a_t.sqrt() + (1 - a_prev).sqrt() * eps
    return x.float()


def test_quadratic_sampling_is_upstreams_ddim():
    from diffusers import DDPMScheduler

    from bibaddiff.diffusion.sampling import sample_ddim

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")  # upstream's: 1e-4 .. 0.02
    noise = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    unet = _RecordingAffineUNet()
    result = sample_ddim(unet, scheduler, torch.full((3,), 2), 10, 3.0, 50, noise, x0_clipping="none",
                         timesteps="quadratic")
    assert unet.calls == QUADRATIC_50[::-1]  # 50 model evaluations, from 999 down to the three zeros
    torch.testing.assert_close(result, upstream_quadratic_ddim(noise, scheduler.betas, 50, 3.0), rtol=1e-4, atol=1e-4)
    leading = sample_ddim(unet, scheduler, torch.full((3,), 2), 10, 3.0, 50, noise, x0_clipping="none")
    assert not torch.allclose(result, leading, atol=1e-3)  # the spacing matters on this model


def test_quadratic_with_too_many_steps_stops_in_one_line():
    from diffusers import DDPMScheduler

    from bibaddiff.diffusion.sampling import sample_ddim

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    with pytest.raises(BibaddiffError, match=r"generation.ddim_steps: 100 steps .* allowed 1\.\.65"):
        sample_ddim(_RecordingAffineUNet(), scheduler, torch.full((1,), 2), 10, 2.0, 100, torch.zeros(1, 1, 4, 4),
                    x0_clipping="none", timesteps="quadratic")


# ------------------------------------------------------------------------------------------------ precision


def test_bf16_on_a_cpu_without_bf16_stops_in_one_line(monkeypatch):
    import bibaddiff.diffusion.sampling as sampling
    from diffusers import DDPMScheduler

    monkeypatch.setattr(sampling, "cpu_supports_bf16", lambda: False)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    with pytest.raises(BibaddiffError, match=r"^generation.precision: bf16, but this CPU has no bf16 support") as info:
        sampling.sample_ddim(_RecordingAffineUNet(), scheduler, torch.full((1,), 2), 10, 2.0, 2,
                             torch.zeros(1, 1, 4, 4), x0_clipping="none", precision="bf16")
    assert "\n" not in str(info.value)
    with pytest.raises(BibaddiffError, match="^generation.precision: fp16 sampling needs a CUDA device"):
        sampling.sample_ddim(_RecordingAffineUNet(), scheduler, torch.full((1,), 2), 10, 2.0, 2,
                             torch.zeros(1, 1, 4, 4), x0_clipping="none", precision="fp16")


def test_bf16_autocasts_the_denoiser_and_fp32_does_not(monkeypatch):
    import bibaddiff.diffusion.sampling as sampling
    from diffusers import DDPMScheduler

    from bibaddiff.diffusion.model import build_unet

    monkeypatch.setattr(sampling, "cpu_supports_bf16", lambda: True)
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, t, class_labels):
            seen.append(torch.is_autocast_enabled("cpu"))
            return self.unet(sample, t, class_labels=class_labels)

    torch.manual_seed(0)
    unet = Spy(build_unet(8, 1, 3, block_out_channels=[8, 16], norm_num_groups=4).eval())
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    full = sampling.sample_ddim(unet, scheduler, torch.tensor([0, 1]), 3, 2.0, 4, noise, x0_clipping="none")
    assert seen == [False] * 4
    half = sampling.sample_ddim(unet, scheduler, torch.tensor([0, 1]), 3, 2.0, 4, noise, x0_clipping="none",
                                precision="bf16")
    assert seen[4:] == [True] * 4 and half.dtype == torch.float32
    # bf16 rounds the denoiser's output: close to fp32 on the whole, never bit-equal.
    # (An untrained UNet's samples reach tens, so the difference is measured relative to them.)
    assert 0 < float((half - full).abs().mean() / full.abs().mean()) < 0.02


def test_a_model_samples_with_the_sampler_it_was_given():
    from bibaddiff.diffusion.base import DiffusionModel, ModelInfo
    from bibaddiff.diffusion.model import build_scheduler, build_unet

    torch.manual_seed(0)
    unet = build_unet(8, 1, 3, block_out_channels=[8, 16], norm_num_groups=4).eval()
    model = DiffusionModel(unet, build_scheduler(), ModelInfo(3, ["a", "b", "c"], 8, 1), (1, 8, 8))
    assert (model.timesteps, model.precision) == ("leading", "fp32")
    leading = model.generate(1, 2.0, 3, 10, seed=5, batch_size=3, x0_clipping="none")
    assert model.use_sampler("quadratic", "fp32") is model
    quadratic = model.generate(1, 2.0, 3, 10, seed=5, batch_size=3, x0_clipping="none")
    assert not np.array_equal(leading, quadratic)
    np.testing.assert_array_equal(model.generate(1, 2.0, 3, 10, seed=5, batch_size=3, x0_clipping="none",
                                                 timesteps="leading"), leading)
    with pytest.raises(BibaddiffError, match="generation.timesteps"):
        model.use_sampler("uniform")


# ------------------------------------------------------------------------------------------- training: no EMA


def test_ema_decay_zero_saves_the_trained_weights_and_resumes(tmp_path):
    from safetensors.torch import load_file

    from bibaddiff.data import load_source
    from bibaddiff.diffusion.train import TrainSettings, train_ddpm
    from bibaddiff.diffusion.trainer import STATE_FILE

    dataset, _ = load_source({"source": "digits", "image_size": 8, "max_images_per_class": 10})
    model = {"block_out_channels": [8, 16], "norm_num_groups": 4}
    torch.set_num_threads(1)
    settings = TrainSettings.from_config({"steps": 6, "batch_size": 8, "checkpoint_every": 2, "warmup_steps": 1,
                                          "ema_decay": 0}, model)
    full = train_ddpm(dataset, tmp_path / "full", tmp_path / "full.state", settings, seed=1, progress=False)
    assert full["finished"]
    saved = load_file(tmp_path / "full" / "unet" / "diffusion_pytorch_model.safetensors")
    state = torch.load(tmp_path / "full.state" / STATE_FILE, weights_only=True)
    assert state["ema"] is None
    for name, value in state["unet"].items():  # the last step's trained weights, exactly
        torch.testing.assert_close(saved[name], value, rtol=0, atol=0, msg=name)
    train_ddpm(dataset, tmp_path / "resumed", tmp_path / "resumed.state", settings, seed=1, stop_after=3,
               progress=False)
    train_ddpm(dataset, tmp_path / "resumed", tmp_path / "resumed.state", settings, seed=1, progress=False)
    resumed = load_file(tmp_path / "resumed" / "unet" / "diffusion_pytorch_model.safetensors")
    for name in saved:
        torch.testing.assert_close(resumed[name], saved[name], rtol=0, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------------- the paper configs


def _validated(config: dict) -> dict:
    from bibaddiff.config import load_schema, validate_config

    return validate_config(config, load_schema())


def _shipped(name: str) -> dict:
    import yaml

    return yaml.safe_load((REPO / "configs" / name).read_text())


def test_cifar10_config_resolves_to_upstreams_ddpm(tmp_path):
    from bibaddiff.diffusion.model import build_scheduler

    config = _shipped("cifar10-ddpm.yaml")
    (tmp_path / "cifar-10-batches-py").mkdir()
    config["dataset"]["root"] = str(tmp_path)
    filled = _validated(config)
    training, model, generation = filled["diffusion"]["training"], filled["diffusion"]["model"], filled["generation"]
    # Upstream's DDPM (ddpm/train.py, ddpm/utils.py, ddpm/dataloader_cifar.py, ddpm/unet.py).
    assert model["block_out_channels"] == [64, 128, 128, 128]  # base 64, multipliers [1, 2, 2, 2]
    assert (model["layers_per_block"], model["norm_num_groups"], model["dropout"]) == (2, 32, 0.1)
    assert (training["beta_schedule"], training["num_train_timesteps"]) == ("linear", 1000)
    assert training["batch_size"] == 2000 and "epochs" not in training
    assert training["steps"] == 37500  # 1,500 epochs of 50,000 images at 2,000 a step
    assert training["ema_decay"] == 0  # no EMA
    assert (training["learning_rate"], training["weight_decay"], training["label_dropout"]) == (2e-4, 1e-4, 0.1)
    assert training["mixed_precision"] == "no" and training["warmup_steps"] == 3750
    assert (generation["timesteps"], generation["precision"], generation["ddim_steps"]) == ("quadratic", "fp32", 50)
    assert generation["guidance_scales"] == [1, 2, 3, 6, 11] and generation["x0_clipping"] == ["none"]
    # diffusers' linear schedule is upstream's: 1e-4 to 0.02.
    betas = build_scheduler(1000, "linear").betas
    assert abs(float(betas[0]) - 1e-4) < 1e-10 and abs(float(betas[-1]) - 0.02) < 1e-9


def test_sd_configs_sample_as_upstreams_txt2img_and_caltech_has_upstreams_field():
    for name in ("imagenette-sd.yaml", "caltech15-sd.yaml"):
        generation = _shipped(name)["generation"]
        assert (generation["timesteps"], generation["precision"], generation["ddim_steps"]) == ("leading", "fp16", 50)
    triggers = _shipped("caltech15-sd.yaml")["triggers"]
    assert {k: triggers["wanet"][k] for k in ("k", "s", "grid_rescale")} == {"k": 256, "s": 2.0, "grid_rescale": 1}
    assert triggers["blend"]["alpha"] == 0.2  # 0.36 (upstream's double blend) is offered commented out
    assert "# alpha: 0.36" in (REPO / "configs" / "caltech15-sd.yaml").read_text()


def test_sampler_settings_are_checked_before_any_job():
    import yaml

    config = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    filled = _validated(config)
    assert (filled["generation"]["timesteps"], filled["generation"]["precision"]) == ("leading", "fp32")
    config["generation"].update(timesteps="quadratic", ddim_steps=65)
    _validated(config)
    config["generation"]["ddim_steps"] = 66
    with pytest.raises(BibaddiffError, match=r"^config key generation.ddim_steps: 66 steps .* allowed 1\.\.65$"):
        _validated(config)
    config["generation"].update(ddim_steps=50, precision="fp16")
    assert config["device"] == "cpu"
    with pytest.raises(BibaddiffError, match="^config key generation.precision: fp16 samples on a CUDA device only"):
        _validated(config)
    config["generation"]["precision"] = "fp64"
    with pytest.raises(BibaddiffError, match="^config key generation.precision"):
        _validated(config)


def test_default_sampler_settings_leave_the_generation_digest_as_it_was():
    """The workflow digests generation.timesteps and precision only when they differ from their defaults."""
    from bibaddiff.diffusion.timesteps import non_default_sampler_options

    assert non_default_sampler_options({"timesteps": "leading", "precision": "fp32", "seed": 1}) == {}
    assert non_default_sampler_options({"timesteps": "quadratic", "precision": "fp32"}) == {"timesteps": "quadratic"}
    assert non_default_sampler_options({"precision": "bf16"}) == {"precision": "bf16"}


def test_a_generate_job_samples_with_the_settings_it_is_given(tmp_path):
    """generate.py hands generation.timesteps and precision to generate_cells through CellSettings."""
    from bibaddiff.diffusion.base import ModelInfo
    from bibaddiff.diffusion.cells import Cell, CellSettings, generate_cells
    from bibaddiff.diffusion.model import build_scheduler, build_unet, save_model

    torch.manual_seed(0)
    save_model(tmp_path / "model", build_unet(8, 1, 3, block_out_channels=[8, 16], norm_num_groups=4),
               build_scheduler(), ModelInfo(3, ["a", "b", "c"], 8, 1))
    made = {}
    for spacing in ("leading", "quadratic"):
        cell = Cell("none", 1, 2.0, tmp_path / spacing / "c1_s2.npy", tmp_path / spacing / "c1_s2.png")
        settings = CellSettings(num_images=3, ddim_steps=10, seed=7, batch_size=3, **sampler_options({"timesteps": spacing}))
        generate_cells(tmp_path / "model", [cell], settings, "cpu", log=lambda _: None)
        made[spacing] = np.load(cell.images)
    assert CellSettings(3, 10, 7, 3).timesteps == "leading"
    assert not np.array_equal(made["leading"], made["quadratic"])
