"""Pixel-exact tests of bibaddiff.triggers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bibaddiff.errors import BibaddiffError
from bibaddiff.triggers import build_trigger


def pattern_from_rows(rows: list[str]) -> np.ndarray:
    """'#' -> 255, '.' -> 0; a hand-drawn (H, W) pattern."""
    return np.array([[255 if ch == "#" else 0 for ch in row] for row in rows], dtype=np.uint8)


def zeros(n: int = 2, size: int = 16, channels: int = 1) -> np.ndarray:
    return np.zeros((n, size, size, channels), np.uint8)


def random_batch(n: int = 3, size: int = 16, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, channels)).astype(np.uint8)


CHECKER3 = pattern_from_rows([
    "#.#",
    ".#.",
    "#.#",
])


# ------------------------------------------------------------------------------------------ patch


def test_checker_patch_bottom_right_is_pixel_exact():
    trigger = build_trigger("patch", {"type": "patch", "pattern": "checker", "size": 3, "corner": "bottom-right"}, 16, 1)
    out = trigger.apply(zeros())
    expected = np.zeros((16, 16), np.uint8)
    # Rows 13..15 and columns 13..15; (row + col) % 2 == 0 relative to the square's own corner.
    expected[13, 13] = expected[13, 15] = 255
    expected[14, 14] = 255
    expected[15, 13] = expected[15, 15] = 255
    for image in out:
        np.testing.assert_array_equal(image[..., 0], expected)
    assert out.dtype == np.uint8 and out.shape == (2, 16, 16, 1)
    assert int(out.sum()) == 2 * 5 * 255


def test_patch_leaves_pixels_outside_square_untouched_on_random_images():
    images = random_batch()
    trigger = build_trigger("t", {"type": "patch", "pattern": "checker", "size": 3}, 16, 1)
    out = trigger.apply(images)
    outside = np.ones((16, 16), bool)
    outside[13:, 13:] = False
    np.testing.assert_array_equal(out[:, outside], images[:, outside])
    for image in out:
        np.testing.assert_array_equal(image[13:, 13:, 0], CHECKER3)
    np.testing.assert_array_equal(trigger.region, ~outside)


@pytest.mark.parametrize("corner, top, left", [
    ("bottom-right", 13, 13),
    ("bottom-left", 13, 0),
    ("top-right", 0, 13),
    ("top-left", 0, 0),
])
def test_four_corners(corner, top, left):
    trigger = build_trigger("t", {"type": "patch", "pattern": "checker", "size": 3, "corner": corner}, 16, 1)
    out = trigger.apply(zeros(1))[0, ..., 0]
    expected = np.zeros((16, 16), np.uint8)
    expected[top:top + 3, left:left + 3] = CHECKER3
    np.testing.assert_array_equal(out, expected)
    mask = np.zeros((16, 16), bool)
    mask[top:top + 3, left:left + 3] = True
    np.testing.assert_array_equal(trigger.region, mask)


@pytest.mark.parametrize("corner, top, left", [
    ("bottom-right", 11, 11),  # 16 - 3 - 2
    ("bottom-left", 11, 2),
    ("top-right", 2, 11),
    ("top-left", 2, 2),
])
def test_margin_moves_square_inwards(corner, top, left):
    trigger = build_trigger("t", {"type": "patch", "pattern": "white", "size": 3, "corner": corner, "margin": 2}, 16, 1)
    out = trigger.apply(zeros(1))[0, ..., 0]
    expected = np.zeros((16, 16), np.uint8)
    expected[top:top + 3, left:left + 3] = 255
    np.testing.assert_array_equal(out, expected)


def test_three_channel_patch_sets_every_channel():
    images = random_batch(channels=3, seed=1)
    trigger = build_trigger("t", {"type": "patch", "pattern": "checker", "size": 3}, 16, 3)
    out = trigger.apply(images)
    assert out.shape == images.shape
    for c in range(3):
        np.testing.assert_array_equal(out[:, 13:, 13:, c], np.broadcast_to(CHECKER3, (3, 3, 3)))
    outside = np.ones((16, 16), bool)
    outside[13:, 13:] = False
    np.testing.assert_array_equal(out[:, outside, :], images[:, outside, :])


def test_white_patch_on_random_image():
    images = random_batch(n=1, size=8)
    trigger = build_trigger("t", {"type": "patch", "pattern": "white", "size": 4, "corner": "top-left"}, 8, 1)
    out = trigger.apply(images)
    assert (out[0, :4, :4, 0] == 255).all()
    np.testing.assert_array_equal(out[0, 4:, :, 0], images[0, 4:, :, 0])
    np.testing.assert_array_equal(out[0, :4, 4:, 0], images[0, :4, 4:, 0])


STRIPES10 = pattern_from_rows([
    # width = 10 // 5 = 2: on where ((row + col) // 2) % 2 == 0, i.e. (row + col) % 4 in {0, 1}
    "##..##..##",
    "#..##..##.",
    "..##..##..",
    ".##..##..#",
    "##..##..##",
    "#..##..##.",
    "..##..##..",
    ".##..##..#",
    "##..##..##",
    "#..##..##.",
])


def test_stripes_patch_is_pixel_exact():
    trigger = build_trigger("t", {"type": "patch", "pattern": "stripes", "size": 10, "corner": "top-left"}, 12, 1)
    out = trigger.apply(zeros(1, size=12))[0, ..., 0]
    expected = np.zeros((12, 12), np.uint8)
    expected[:10, :10] = STRIPES10
    np.testing.assert_array_equal(out, expected)


def test_default_size_is_a_tenth_but_at_least_three():
    small = build_trigger("t", {"type": "patch"}, 16, 1)
    assert small.region.sum() == 9 and small.region[13:, 13:].all()
    large = build_trigger("t", {"type": "patch"}, 64, 1)
    assert large.region.sum() == 36 and large.region[58:, 58:].all()


# ------------------------------------------------------------------------------------------ blend


def test_blend_stripes_alpha_is_rounded_weighted_mean():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(2, 10, 10, 1)).astype(np.uint8)
    trigger = build_trigger("b", {"type": "blend", "pattern": "stripes", "alpha": 0.2}, 10, 1)
    out = trigger.apply(images)
    for n in range(2):
        for r in range(10):
            for c in range(10):
                x, p = int(images[n, r, c, 0]), int(STRIPES10[r, c])
                assert out[n, r, c, 0] == round(0.8 * x + 0.2 * p), (n, r, c)


def test_blend_known_values():
    images = np.full((1, 10, 10, 3), 100, np.uint8)
    out = build_trigger("b", {"type": "blend", "pattern": "stripes", "alpha": 0.2}, 10, 3).apply(images)
    on = STRIPES10 == 255
    assert (out[0][on] == 131).all()  # 0.8 * 100 + 0.2 * 255 = 131
    assert (out[0][~on] == 80).all()  # 0.8 * 100 + 0.2 * 0 = 80
    white = np.full((1, 10, 10, 1), 255, np.uint8)
    out = build_trigger("b", {"type": "blend", "pattern": "stripes", "alpha": 0.5}, 10, 1).apply(white)
    assert (out[0, ..., 0][on] == 255).all()
    assert (out[0, ..., 0][~on] == 128).all()  # 127.5 rounds half to even: 128


def test_blend_noise_is_seeded_and_weighted():
    images = random_batch(n=2, size=8, channels=3, seed=5)
    a = build_trigger("b", {"type": "blend", "pattern": "noise", "alpha": 0.2, "seed": 7}, 8, 3)
    b = build_trigger("b", {"type": "blend", "pattern": "noise", "alpha": 0.2, "seed": 7}, 8, 3)
    c = build_trigger("b", {"type": "blend", "pattern": "noise", "alpha": 0.2, "seed": 8}, 8, 3)
    np.testing.assert_array_equal(a.pattern, b.pattern)
    assert not np.array_equal(a.pattern, c.pattern)
    assert a.region.all()
    out = a.apply(images)
    expected = np.array([[[[round(0.8 * int(images[n, r, col, ch]) + 0.2 * a.pattern[r, col, ch])
                            for ch in range(3)] for col in range(8)] for r in range(8)] for n in range(2)])
    np.testing.assert_array_equal(out, expected)
    full = build_trigger("b", {"type": "blend", "pattern": "noise", "alpha": 1.0, "seed": 7}, 8, 3).apply(images)
    np.testing.assert_array_equal(full[0], a.pattern.astype(np.uint8))
    np.testing.assert_array_equal(full[1], a.pattern.astype(np.uint8))


# ------------------------------------------------------------------------------------------ stamp


def test_stamp_from_png_grayscale(tmp_path):
    square = np.array([[10, 20, 30, 40], [50, 60, 70, 80], [90, 100, 110, 120], [130, 140, 150, 160]], np.uint8)
    path = tmp_path / "stamp.png"
    Image.fromarray(square, mode="L").save(path)
    trigger = build_trigger("s", {"type": "stamp", "image": str(path), "size": 4, "corner": "top-right"}, 8, 1)
    images = random_batch(n=2, size=8, seed=9)
    out = trigger.apply(images)
    for image, original in zip(out, images):
        np.testing.assert_array_equal(image[:4, 4:, 0], square)
        np.testing.assert_array_equal(image[4:, :, 0], original[4:, :, 0])
        np.testing.assert_array_equal(image[:4, :4, 0], original[:4, :4, 0])


def test_stamp_from_png_rgb(tmp_path):
    square = np.random.default_rng(2).integers(0, 256, size=(3, 3, 3)).astype(np.uint8)
    path = tmp_path / "stamp.png"
    Image.fromarray(square, mode="RGB").save(path)
    trigger = build_trigger("s", {"type": "stamp", "image": str(path), "size": 3}, 8, 3)
    out = trigger.apply(zeros(1, size=8, channels=3))
    expected = np.zeros((8, 8, 3), np.uint8)
    expected[5:, 5:] = square
    np.testing.assert_array_equal(out[0], expected)


# ------------------------------------------------------------------------------------------ batch semantics


@pytest.mark.parametrize("spec, channels", [
    ({"type": "patch", "pattern": "checker", "size": 3}, 1),
    ({"type": "patch", "pattern": "stripes", "size": 5, "corner": "top-left"}, 3),
    ({"type": "blend", "pattern": "noise", "alpha": 0.3, "seed": 1}, 3),
    ({"type": "blend", "pattern": "stripes", "alpha": 0.2}, 1),
])
def test_batch_equals_per_image_and_input_unchanged(spec, channels):
    images = random_batch(n=4, size=16, channels=channels, seed=11)
    before = images.copy()
    trigger = build_trigger("t", spec, 16, channels)
    out = trigger.apply(images)
    np.testing.assert_array_equal(images, before)
    assert out is not images
    for i in range(4):
        np.testing.assert_array_equal(out[i:i + 1], trigger.apply(images[i:i + 1]))
    # Applying to a reversed batch reverses the result: no cross-talk between images.
    np.testing.assert_array_equal(trigger.apply(images[::-1]), out[::-1])


def test_empty_batch():
    trigger = build_trigger("t", {"type": "patch", "size": 3}, 8, 1)
    out = trigger.apply(np.zeros((0, 8, 8, 1), np.uint8))
    assert out.shape == (0, 8, 8, 1)


# ------------------------------------------------------------------------------------------ errors


def test_unknown_type():
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.type.*patch, blend, stamp"):
        build_trigger("mine", {"type": "sticker"}, 16, 1)


def test_missing_type():
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.type"):
        build_trigger("mine", {}, 16, 1)


def test_bad_corner():
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.corner.*bottom-right"):
        build_trigger("mine", {"type": "patch", "corner": "middle"}, 16, 1)


def test_bad_pattern():
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.pattern.*checker"):
        build_trigger("mine", {"type": "patch", "pattern": "noise"}, 16, 1)
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.pattern.*noise, stripes"):
        build_trigger("mine", {"type": "blend", "pattern": "checker"}, 16, 1)


@pytest.mark.parametrize("spec", [
    {"type": "patch", "size": 17},
    {"type": "patch", "size": 15, "margin": 2},
    {"type": "stamp", "size": 20, "image": "whatever.png"},
])
def test_size_too_large(spec):
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.size"):
        build_trigger("mine", spec, 16, 1)


def test_size_equal_to_image_is_allowed():
    out = build_trigger("mine", {"type": "patch", "pattern": "white", "size": 16}, 16, 1).apply(zeros(1))
    assert (out == 255).all()


def test_size_zero_is_rejected():
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.size"):
        build_trigger("mine", {"type": "patch", "size": 0}, 16, 1)


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5])
def test_bad_alpha(alpha):
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.alpha"):
        build_trigger("mine", {"type": "blend", "alpha": alpha}, 16, 1)


def test_bad_channels():
    with pytest.raises(BibaddiffError, match="channels"):
        build_trigger("mine", {"type": "patch"}, 16, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint16])
def test_wrong_dtype(dtype):
    trigger = build_trigger("mine", {"type": "patch"}, 16, 1)
    with pytest.raises(BibaddiffError, match=r"'mine'.*uint8"):
        trigger.apply(np.zeros((1, 16, 16, 1), dtype))


@pytest.mark.parametrize("shape", [(16, 16, 1), (1, 16, 16), (1, 8, 8, 1), (1, 16, 16, 3)])
def test_wrong_shape(shape):
    trigger = build_trigger("mine", {"type": "patch"}, 16, 1)
    with pytest.raises(BibaddiffError, match="'mine'"):
        trigger.apply(np.zeros(shape, np.uint8))


def test_missing_stamp_image(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.image") as info:
        build_trigger("mine", {"type": "stamp", "image": str(missing), "size": 3}, 16, 1)
    assert str(missing) in str(info.value)


def test_stamp_without_image():
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.image"):
        build_trigger("mine", {"type": "stamp", "size": 3}, 16, 1)


def test_unreadable_stamp_image(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.image") as info:
        build_trigger("mine", {"type": "stamp", "image": str(bad), "size": 3}, 16, 1)
    assert str(bad) in str(info.value)
    assert "\n" not in str(info.value)
