"""Tests of the guidance convention, the paired initial noise and the pixel <-> model-space conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bibaddiff.diffusion.sampling import cell_noise, combine_guidance
from bibaddiff.images import to_model_space, to_uint8


def eps_pair():
    generator = torch.Generator().manual_seed(0)
    eps_null = torch.randn((2, 1, 4, 4), generator=generator)
    eps_cond = torch.randn((2, 1, 4, 4), generator=generator)
    return eps_null, eps_cond


def test_combine_guidance_zero_is_unconditional():
    eps_null, eps_cond = eps_pair()
    torch.testing.assert_close(combine_guidance(eps_null, eps_cond, 0.0), eps_null, rtol=0, atol=0)


def test_combine_guidance_one_is_conditional():
    eps_null, eps_cond = eps_pair()
    torch.testing.assert_close(combine_guidance(eps_null, eps_cond, 1.0), eps_cond, rtol=1e-6, atol=1e-6)


def test_combine_guidance_three():
    eps_null, eps_cond = eps_pair()
    expected = eps_null + 3 * (eps_cond - eps_null)
    torch.testing.assert_close(combine_guidance(eps_null, eps_cond, 3.0), expected)
    # Equivalently (1 + w) eps_cond - w eps_null with w = 2 (Ho & Salimans).
    torch.testing.assert_close(combine_guidance(eps_null, eps_cond, 3.0), 3 * eps_cond - 2 * eps_null,
                               rtol=1e-5, atol=1e-5)


def test_combine_guidance_hand_values():
    eps_null = torch.tensor([1.0, -2.0, 0.5])
    eps_cond = torch.tensor([2.0, 0.0, 0.5])
    torch.testing.assert_close(combine_guidance(eps_null, eps_cond, 2.0), torch.tensor([3.0, 2.0, 0.5]))
    torch.testing.assert_close(combine_guidance(eps_null, eps_cond, 0.5), torch.tensor([1.5, -1.0, 0.5]))
    torch.testing.assert_close(combine_guidance(eps_null, eps_cond, 0), eps_null)


def test_cell_noise_depends_only_on_seed_and_condition():
    a = cell_noise(4, 1, 8, seed=1234, condition=6)
    b = cell_noise(4, 1, 8, seed=1234, condition=6)
    assert a.shape == (4, 1, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, b)
    # Global RNG state does not leak in.
    numpy_state = np.random.get_state()
    with torch.random.fork_rng():
        torch.manual_seed(99)
        np.random.seed(99)
        assert torch.equal(cell_noise(4, 1, 8, seed=1234, condition=6), a)
    np.random.set_state(numpy_state)
    assert not torch.equal(cell_noise(4, 1, 8, seed=1234, condition=1), a)
    assert not torch.equal(cell_noise(4, 1, 8, seed=1235, condition=6), a)
    # (seed, condition) is not just a sum or swap.
    assert not torch.equal(cell_noise(4, 1, 8, seed=6, condition=1234), a)
    assert not torch.equal(cell_noise(4, 1, 8, seed=1233, condition=7), a)


def test_cell_noise_prefix_is_stable_across_counts():
    # More images extend the same stream: the first images are the same draws.
    few = cell_noise(2, 3, 4, seed=0, condition=0)
    many = cell_noise(5, 3, 4, seed=0, condition=0)
    assert torch.equal(many[:2], few)


def test_cell_noise_looks_standard_normal():
    noise = cell_noise(64, 1, 16, seed=3, condition=2)
    assert abs(float(noise.mean())) < 0.05
    assert abs(float(noise.std()) - 1.0) < 0.05


@pytest.mark.parametrize("channels", [1, 3])
def test_model_space_round_trip_is_exact(channels):
    values = np.arange(256, dtype=np.uint8)
    images = np.stack([np.resize(np.roll(values, 17 * k), (16, 16, channels)) for k in range(3)]).astype(np.uint8)
    assert set(np.unique(images)) == set(range(256))
    tensor = to_model_space(images)
    assert tensor.shape == (3, channels, 16, 16) and tensor.dtype == torch.float32
    back = to_uint8(tensor)
    assert back.dtype == np.uint8 and back.shape == images.shape
    np.testing.assert_array_equal(back, images)


def test_model_space_values_and_layout():
    images = np.zeros((1, 2, 3, 3), np.uint8)
    images[0, 0, 1] = [0, 255, 51]
    images[0, 1, 2] = [255, 0, 204]
    tensor = to_model_space(images)
    assert tensor.shape == (1, 3, 2, 3)
    torch.testing.assert_close(tensor[0, :, 0, 1], torch.tensor([-1.0, 1.0, -0.6]))
    torch.testing.assert_close(tensor[0, :, 1, 2], torch.tensor([1.0, -1.0, 0.6]))
    assert float(tensor.min()) == -1.0 and float(tensor.max()) == 1.0


def test_to_uint8_clamps_and_rounds():
    samples = torch.tensor([-3.0, -1.0, 0.0, 1.0, 5.0, 0.5]).reshape(1, 1, 1, 6)
    # (x + 1) * 127.5 after clamping to [-1, 1]: 0, 0, 127.5 -> 128 (half to even), 255, 255, 191.25 -> 191
    np.testing.assert_array_equal(to_uint8(samples)[0, 0, :, 0], [0, 0, 128, 255, 255, 191])


class _OracleUNet(torch.nn.Module):
    """A stand-in UNet whose noise prediction points exactly at a constant clean image per class label."""

    def __init__(self, scheduler, clean_by_label: dict[int, float]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.scheduler = scheduler
        self.clean_by_label = clean_by_label

    def forward(self, sample, t, class_labels):
        alpha = self.scheduler.alphas_cumprod[int(t)]
        clean = torch.stack([torch.full(sample.shape[1:], self.clean_by_label[int(c)]) for c in class_labels])
        eps = (sample - alpha.sqrt() * clean) / (1 - alpha).sqrt()
        return type("Output", (), {"sample": eps})()


def test_strong_guidance_ends_at_the_clipped_extrapolation():
    from diffusers import DDPMScheduler

    from bibaddiff.diffusion.sampling import sample_ddim

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    unet = _OracleUNet(scheduler, {3: 0.8, 10: 0.2})
    noise = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.full((4,), 3)
    # s = 1.5: 0.2 + 1.5 * (0.8 - 0.2) = 1.1, clipped to 1; s = 0.5 stays inside: 0.5.
    assert torch.allclose(sample_ddim(unet, scheduler, labels, 10, 1.5, 20, noise, x0_clipping="clip_recompute"), torch.ones(4, 1, 4, 4), atol=1e-3)
    assert torch.allclose(sample_ddim(unet, scheduler, labels, 10, 0.5, 20, noise, x0_clipping="clip_recompute"), torch.full((4, 1, 4, 4), 0.5), atol=1e-3)
    # s = 3 extrapolates to 2.0: the sample must stay at the clipped value instead of drifting away.
    assert torch.allclose(sample_ddim(unet, scheduler, labels, 10, 3.0, 20, noise, x0_clipping="clip_recompute"), torch.ones(4, 1, 4, 4), atol=1e-3)


@pytest.mark.parametrize("mode, recompute", [("clip_recompute", True), ("clip", False), ("none", False)])
def test_ddim_recomputes_noise_only_when_asked(monkeypatch, mode, recompute):
    """clip_recompute must ask DDIM for the noise of the clipped image at every step (see sampling.sample_ddim)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    from bibaddiff.diffusion.sampling import sample_ddim

    calls = []
    original = DDIMScheduler.step

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("use_clipped_model_output"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DDIMScheduler, "step", spy)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    unet = _OracleUNet(scheduler, {3: 0.8, 10: 0.2})
    sample_ddim(unet, scheduler, torch.full((2,), 3), 10, 3.0, 5, torch.randn(2, 1, 4, 4), x0_clipping=mode)
    assert calls == [recompute] * 5


class _AffineUNet(torch.nn.Module):
    """eps = 0.6 x + bias(label): large enough at high noise levels that the predicted x0 leaves [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, sample, t, class_labels):
        bias = torch.where(class_labels == 10, -0.4, 0.9).float().view(-1, 1, 1, 1)
        return type("Output", (), {"sample": 0.6 * sample + bias})()


def hand_stepped_ddim(noise, alphas_cumprod, steps, scale, mode):
    """DDIM (eta = 0) written out from its update rule, for the guided affine model above."""
    step = 1000 // steps
    sample = noise.clone()
    for t in range(step * (steps - 1), -1, -step):
        eps_cond, eps_null = 0.6 * sample + 0.9, 0.6 * sample - 0.4
        eps = eps_null + scale * (eps_cond - eps_null)
        alpha = alphas_cumprod[t]
        alpha_prev = alphas_cumprod[t - step] if t - step >= 0 else torch.tensor(1.0)
        x0 = (sample - (1 - alpha).sqrt() * eps) / alpha.sqrt()
        if mode != "none":
            x0 = x0.clamp(-1, 1)
        if mode == "clip_recompute":
            eps = (sample - alpha.sqrt() * x0) / (1 - alpha).sqrt()
        sample = alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps
    return sample


def test_each_x0_clipping_mode_matches_a_hand_stepped_ddim():
    from diffusers import DDPMScheduler

    from bibaddiff.diffusion.sampling import sample_ddim

    # A DDPMScheduler clips by default: the mode, not this config, must decide.
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    noise = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.full((3,), 2)
    results = {}
    for mode in ("none", "clip", "clip_recompute"):
        results[mode] = sample_ddim(_AffineUNet(), scheduler, labels, 10, 2.0, 10, noise, x0_clipping=mode)
        expected = hand_stepped_ddim(noise, scheduler.alphas_cumprod, 10, 2.0, mode)
        torch.testing.assert_close(results[mode], expected, rtol=1e-4, atol=1e-4)
    # The modes must differ on this model, or the comparison above proves nothing.
    assert not torch.allclose(results["none"], results["clip"], atol=1e-2)
    assert not torch.allclose(results["clip"], results["clip_recompute"], atol=1e-2)
    assert results["none"].abs().max() > 1  # no clipping: the final x0 is left where the model puts it


def test_unknown_x0_clipping_mode_is_refused():
    from diffusers import DDPMScheduler

    from bibaddiff.diffusion.sampling import sample_ddim
    from bibaddiff.errors import BibaddiffError

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    with pytest.raises(BibaddiffError, match="x0_clipping must be one of none, clip, clip_recompute; got 'clamp'"):
        sample_ddim(_AffineUNet(), scheduler, torch.full((1,), 2), 10, 2.0, 2, torch.zeros(1, 1, 4, 4), x0_clipping="clamp")


# ------------------------------------------------------------------------------- x0 clipping in the config


def _validated(**generation):
    from pathlib import Path

    import yaml

    from bibaddiff.config import load_schema, validate_config

    repo = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((repo / "tests/configs/tiny.yaml").read_text())
    config["generation"].pop("x0_clipping", None)
    config["generation"].update(generation)
    return validate_config(config, load_schema())


def test_x0_clipping_default_is_a_list_of_one_mode():
    from bibaddiff.config import default_x0_clipping

    assert _validated()["generation"]["x0_clipping"] == [default_x0_clipping()["ddpm"]]
    assert _validated(x0_clipping="clip")["generation"]["x0_clipping"] == ["clip"]
    assert _validated(x0_clipping=["clip_recompute", "none"])["generation"]["x0_clipping"] == ["clip_recompute", "none"]


@pytest.mark.parametrize("value", ["clamp", ["none", "nope"], []])
def test_unknown_x0_clipping_in_the_config(value):
    from bibaddiff.errors import BibaddiffError

    with pytest.raises(BibaddiffError, match="config key generation.x0_clipping"):
        _validated(x0_clipping=value)


@pytest.mark.slow  # about a minute or more of CPU: the slow tier, not the quick loop
def test_a_cell_does_not_depend_on_its_batch_size():
    """The workflow treats generation.batch_size as a resource, not a rerun trigger: this is why."""
    from bibaddiff.diffusion.model import build_scheduler, build_unet
    from bibaddiff.diffusion.sampling import generate_images

    torch.manual_seed(0)
    unet = build_unet(8, 1, 3, block_out_channels=[8, 16], norm_num_groups=4).eval()
    scheduler = build_scheduler()
    cells = [generate_images(unet, scheduler, 3, 1, 2.0, 5, 4, seed=7, batch_size=batch, sample_shape=(1, 8, 8),
                             x0_clipping="none") for batch in (1, 2, 5)]
    for cell in cells[1:]:
        # Batched convolutions may round the last float bit differently; no pixel moves by more than one level.
        assert np.abs(cell.astype(int) - cells[0].astype(int)).max() <= 1
