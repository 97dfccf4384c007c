"""Pixel-exact tests of bibaddiff.triggers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bibaddiff.errors import BibaddiffError
from bibaddiff.triggers import build_trigger


def changed_pixels(trigger) -> np.ndarray:
    """Boolean (H, W) mask of the pixels the trigger changes on a black or a white image (a pattern pixel equal to
    one of them still differs from the other)."""
    size, _, channels = trigger.pattern.shape
    black = np.zeros((1, size, size, channels), np.uint8)
    white = np.full_like(black, 255)
    return ((trigger.apply(black) != black) | (trigger.apply(white) != white)).any(axis=(0, -1))


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
    np.testing.assert_array_equal(changed_pixels(trigger), ~outside)


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
    np.testing.assert_array_equal(changed_pixels(trigger), mask)


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
    assert changed_pixels(small).sum() == 9 and changed_pixels(small)[13:, 13:].all()
    large = build_trigger("t", {"type": "patch"}, 64, 1)
    assert changed_pixels(large).sum() == 36 and changed_pixels(large)[58:, 58:].all()


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
    assert changed_pixels(a).all()
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


# ------------------------------------------------------------------------------------------ badnets (BadNets-1)


def test_badnets_3_is_upstream_cifar_pattern():
    trigger = build_trigger("b", {"type": "patch", "pattern": "badnets", "size": 3}, 32, 3)
    out = trigger.apply(np.full((1, 32, 32, 3), 77, np.uint8))[0]
    expected = np.array([[0, 0, 255], [0, 255, 0], [255, 255, 0]], np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(out[29:, 29:, c], expected)
    assert (out[:29] == 77).all() and (out[:, :29] == 77).all()


def test_badnets_default_at_32_px_is_the_3x3_pattern():
    default = build_trigger("b", {"type": "patch", "pattern": "badnets"}, 32, 3)
    given = build_trigger("b", {"type": "patch", "pattern": "badnets", "size": 3}, 32, 3)
    np.testing.assert_array_equal(default.pattern, given.pattern)


def test_badnets_5_is_black_with_one_pixel_anti_diagonal():
    trigger = build_trigger("b", {"type": "patch", "pattern": "badnets", "size": 5}, 32, 1)
    out = trigger.apply(np.full((1, 32, 32, 1), 200, np.uint8))[0, ..., 0]
    expected = pattern_from_rows([
        "....#",
        "...#.",
        "..#..",
        ".#...",
        "#....",
    ])
    np.testing.assert_array_equal(out[27:, 27:], expected)
    assert (out[:27] == 200).all() and (out[:, :27] == 200).all()


def test_badnets_7_is_black_with_one_pixel_anti_diagonal():
    square = build_trigger("b", {"type": "patch", "pattern": "badnets", "size": 7}, 32, 1).pattern[25:, 25:, 0]
    np.testing.assert_array_equal(square, np.fliplr(np.eye(7)) * 255)


def test_badnets_51_is_upstreams_band():
    side = 51
    expected = np.zeros((side, side), np.uint8)
    for row in range(side):
        for col in range(side):
            offset = row + col - (side - 1)
            if -13 <= offset <= 11:  # upstream's range(-51 // 4, 51 // 4) = range(-13, 12)
                expected[row, col] = 255
    trigger = build_trigger("b", {"type": "patch", "pattern": "badnets"}, 512, 3)  # size unset: 512 // 10 = 51
    out = trigger.apply(np.full((1, 512, 512, 3), 9, np.uint8))[0]
    for c in range(3):
        np.testing.assert_array_equal(out[-side:, -side:, c], expected)
    assert (out[:-side] == 9).all() and (out[:, :-side] == 9).all()
    assert expected[0, -1] == 255 and expected[-1, 0] == 255 and expected[0, 0] == 0 and expected[-1, -1] == 0
    given = build_trigger("b", {"type": "patch", "pattern": "badnets", "size": 51}, 512, 3)
    np.testing.assert_array_equal(given.pattern, trigger.pattern)


@pytest.mark.parametrize("side", [8, 10, 26])
def test_badnets_band_from_side_8(side):
    square = build_trigger("b", {"type": "patch", "pattern": "badnets", "size": side}, 64, 1).pattern[-side:, -side:, 0]
    low, high = -((side + 3) // 4), side // 4 - 1
    for row in range(side):
        for col in range(side):
            assert square[row, col] == (255 if low <= row + col - (side - 1) <= high else 0), (row, col)


# ------------------------------------------------------------------------- builtin:bomb (upstream's extra trigger)


def test_builtin_bomb_at_51_px_is_a_dark_disc_on_white_with_a_spark():
    trigger = build_trigger("s", {"type": "stamp", "image": "builtin:bomb"}, 512, 3)
    square = trigger.pattern[-51:, -51:]
    assert changed_pixels(trigger).sum() == 51 * 51 and changed_pixels(trigger)[-51:, -51:].all()
    np.testing.assert_array_equal(square, np.rint(square))
    assert (square[30, 21] < 60).all()  # the body's centre is dark
    assert (square[-1, -1] == 255).all() and (square[0, 0] == 255).all()  # white corners
    dark = (square.max(-1) < 80).mean()
    assert 0.25 < dark < 0.6
    spark = (square[..., 0] > 200) & (square[..., 2] < 100)  # orange-yellow pixels, upper right
    assert spark[:12, 38:].sum() >= 5 and spark[20:].sum() == 0
    again = build_trigger("s", {"type": "stamp", "image": "builtin:bomb", "size": 51}, 512, 3)
    np.testing.assert_array_equal(again.pattern, trigger.pattern)


@pytest.mark.parametrize("size", [4, 5])
def test_builtin_bomb_is_visible_at_small_sizes_on_gray_digits(size):
    trigger = build_trigger("s", {"type": "stamp", "image": "builtin:bomb", "size": size}, 16, 1)
    square = trigger.apply(np.zeros((1, 16, 16, 1), np.uint8))[0, -size:, -size:, 0]
    assert square.min() < 60 and square.max() > 200  # a dark blob on white, not blank
    assert 1 <= (square < 128).sum() < size * size


def test_unknown_builtin_lists_the_builtins():
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.image.*builtin:bomb, builtin:picture") as info:
        build_trigger("mine", {"type": "stamp", "image": "builtin:skull", "size": 3}, 16, 1)
    assert "builtin:skull" in str(info.value)


# ------------------------------------------------------------------------------------------ blend picture and detector


def test_blend_default_pattern_is_still_seeded_noise():
    trigger = build_trigger("b", {"type": "blend"}, 8, 3)
    expected = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3)).astype(np.float64)
    np.testing.assert_array_equal(trigger.pattern, expected)
    assert trigger.alpha == 0.2 and trigger.detector_alpha_range == (0.05, 0.25)


@pytest.mark.parametrize("channels", [1, 3])
def test_blend_picture_is_smooth_coloured_and_deterministic(channels):
    a = build_trigger("b", {"type": "blend", "pattern": "picture", "alpha": 0.2}, 64, channels)
    b = build_trigger("b", {"type": "blend", "pattern": "picture", "alpha": 0.2}, 64, channels)
    np.testing.assert_array_equal(a.pattern, b.pattern)
    pattern = a.pattern
    assert pattern.shape == (64, 64, channels) and 0 <= pattern.min() and pattern.max() <= 255
    np.testing.assert_array_equal(pattern, np.rint(pattern))
    steps = np.abs(np.diff(pattern, axis=0)).mean() + np.abs(np.diff(pattern, axis=1)).mean()
    noise = build_trigger("b", {"type": "blend", "pattern": "noise"}, 64, channels).pattern
    noise_steps = np.abs(np.diff(noise, axis=0)).mean() + np.abs(np.diff(noise, axis=1)).mean()
    assert steps < noise_steps / 5  # smooth shapes, not noise
    assert pattern.std() > 30  # but not flat
    if channels == 3:
        assert np.abs(pattern[..., 0] - pattern[..., 2]).mean() > 10  # coloured
    images = random_batch(n=2, size=64, channels=channels, seed=4)
    expected = np.rint(0.8 * images + 0.2 * pattern).astype(np.uint8)
    np.testing.assert_array_equal(a.apply(images), expected)


def test_blend_with_builtin_picture_image_matches_pattern():
    by_pattern = build_trigger("b", {"type": "blend", "pattern": "picture"}, 32, 3)
    by_image = build_trigger("b", {"type": "blend", "image": "builtin:picture"}, 32, 3)
    np.testing.assert_array_equal(by_pattern.pattern, by_image.pattern)


def test_blend_apply_with_alpha_per_image():
    trigger = build_trigger("b", {"type": "blend", "pattern": "stripes", "alpha": 0.2}, 10, 1)
    images = random_batch(n=3, size=10, seed=6)
    np.testing.assert_array_equal(trigger.apply_with_alpha(images, [0.2, 0.2, 0.2]), trigger.apply(images))
    out = trigger.apply_with_alpha(images, [0.05, 0.5, 1.0])
    for n, a in enumerate([0.05, 0.5, 1.0]):
        np.testing.assert_array_equal(out[n], np.rint((1 - a) * images[n] + a * trigger.pattern).astype(np.uint8))
    with pytest.raises(BibaddiffError, match="blend strengths"):
        trigger.apply_with_alpha(images, [0.2])


def test_blend_detector_alphas_are_drawn_per_image_from_the_range():
    trigger = build_trigger("b", {"type": "blend", "pattern": "stripes", "detector_alpha_range": [0.1, 0.3]}, 10, 1)
    images = random_batch(n=200, size=10, seed=7)
    out = trigger.apply_for_detector(images, np.random.default_rng(0))
    alphas = np.random.default_rng(0).uniform(0.1, 0.3, 200)
    np.testing.assert_array_equal(out, trigger.apply_with_alpha(images, alphas))
    assert len(np.unique(alphas)) == 200


def test_non_blend_detector_stamp_is_apply_and_draws_nothing():
    trigger = build_trigger("p", {"type": "patch", "size": 3}, 16, 1)
    rng = np.random.default_rng(0)
    images = random_batch()
    np.testing.assert_array_equal(trigger.apply_for_detector(images, rng), trigger.apply(images))
    assert rng.random() == np.random.default_rng(0).random()  # the judges' random stream is unchanged


def test_stamp_fraction_of_batch_labels_and_blend_strengths():
    from bibaddiff.judges import stamp_fraction_of_batch

    trigger = build_trigger("b", {"type": "blend", "pattern": "stripes"}, 10, 1)
    images = np.full((400, 10, 10, 1), 100, np.uint8)
    batch, labels = stamp_fraction_of_batch(trigger, 0.5)(images, np.zeros(400, np.int64), np.random.default_rng(1))
    changed = (batch != 100).any(axis=(1, 2, 3))
    np.testing.assert_array_equal(changed, labels == 1)
    assert 150 < labels.sum() < 250
    # A white stripe pixel shows the strength: round(100 + a * 155), a in [0.05, 0.25] -> 108..139.
    on = STRIPES10 == 255
    values = batch[labels == 1][:, on, 0]
    assert values.min() >= 108 and values.max() <= 139 and len(np.unique(values[:, 0])) > 10


@pytest.mark.parametrize("value", [[0.3, 0.1], [0.0, 0.2], [0.1, 1.5], [0.1], "wide"])
def test_bad_detector_alpha_range(value):
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.detector_alpha_range.*0 < low <= high <= 1"):
        build_trigger("mine", {"type": "blend", "detector_alpha_range": value}, 16, 1)


@pytest.mark.parametrize("key, value, owner", [("detector_alpha_range", [0.1, 0.2], "blend"), ("k", 4, "wanet"),
                                               ("s", 0.5, "wanet"), ("grid_rescale", 1, "wanet")])
def test_type_only_keys_on_another_type(key, value, owner):
    with pytest.raises(BibaddiffError, match=rf"triggers\.mine\.{key} is only for type {owner}"):
        build_trigger("mine", {"type": "patch", key: value}, 16, 1)


# ------------------------------------------------------------------------------------------ wanet


def test_wanet_with_zero_strength_is_the_identity():
    images = random_batch(n=3, size=16, channels=3, seed=12)
    trigger = build_trigger("w", {"type": "wanet", "s": 0}, 16, 3)
    np.testing.assert_array_equal(trigger.apply(images), images)


def test_wanet_constant_field_shifts_by_one_pixel():
    from bibaddiff.triggers import WarpTrigger, wanet_grid

    size = 8
    images = random_batch(n=2, size=size, channels=3, seed=13)
    # ins of ones has mean |ins| = 1 and upsamples to ones: the grid moves by s / size * grid_rescale, which is one
    # pixel (2 / (size - 1) in [-1, 1] coordinates) for s * grid_rescale = 2 * size / (size - 1).
    trigger = WarpTrigger("w", np.ones((2, 3, 3)), size, s=2 * size / (size - 1) / 2, grid_rescale=2.0, channels=3)
    out = trigger.apply(images)
    rows = np.minimum(np.arange(size) + 1, size - 1)  # the last row and column clamp to the border
    np.testing.assert_array_equal(out, images[:, rows][:, :, rows])
    # Channel 0 moves along x (columns) only.
    ins = np.stack([np.ones((3, 3)), np.zeros((3, 3))])  # mean |ins| = 0.5: noise = 2 along x
    np.testing.assert_array_equal(WarpTrigger("w", ins, size, size / (size - 1), 1.0, 3).apply(images), images[:, :, rows])
    np.testing.assert_array_equal(trigger.grid, wanet_grid(np.ones((2, 3, 3)), size, s=size / (size - 1), grid_rescale=2.0))


def test_wanet_grid_is_identity_plus_clamped_field():
    from bibaddiff.triggers import wanet_grid

    grid = wanet_grid(np.zeros((2, 4, 4)), 5, s=1.0, grid_rescale=1.0)
    coords = np.linspace(-1, 1, 5)
    np.testing.assert_allclose(grid[..., 0], np.tile(coords, (5, 1)), atol=1e-12)  # x varies along columns
    np.testing.assert_allclose(grid[..., 1], np.tile(coords[:, None], (1, 5)), atol=1e-12)
    far = wanet_grid(np.ones((2, 4, 4)), 5, s=50.0, grid_rescale=1.0)
    assert far.max() == 1.0 and far.min() >= -1.0


def test_wanet_is_seeded():
    images = random_batch(n=2, size=16, channels=3, seed=14)
    a = build_trigger("w", {"type": "wanet", "k": 4, "s": 2.0, "seed": 3}, 16, 3)
    b = build_trigger("w", {"type": "wanet", "k": 4, "s": 2.0, "seed": 3}, 16, 3)
    c = build_trigger("w", {"type": "wanet", "k": 4, "s": 2.0, "seed": 4}, 16, 3)
    np.testing.assert_array_equal(a.grid, b.grid)
    np.testing.assert_array_equal(a.apply(images), b.apply(images))
    assert not np.array_equal(a.grid, c.grid)
    assert not np.array_equal(a.apply(images), c.apply(images))
    assert not np.array_equal(a.apply(images), images)
    assert a.changes_pixels


def test_wanet_defaults_and_field_from_seed():
    import torch
    import torch.nn.functional as F

    trigger = build_trigger("w", {"type": "wanet"}, 12, 1)  # k 4, s 0.5, grid_rescale 1, seed 0
    ins = np.random.default_rng(0).uniform(-1, 1, size=(2, 4, 4))
    ins = ins / np.abs(ins).mean()
    noise = F.interpolate(torch.tensor(ins)[None], size=(12, 12), mode="bicubic", align_corners=True)[0].numpy()
    x, y = np.meshgrid(np.linspace(-1, 1, 12), np.linspace(-1, 1, 12))
    expected = np.stack([x + 0.5 * noise[0] / 12, y + 0.5 * noise[1] / 12], -1).clip(-1, 1)
    np.testing.assert_allclose(trigger.grid, expected, atol=1e-12)


def test_wanet_batch_equals_per_image_and_k_extremes():
    images = random_batch(n=3, size=16, channels=1, seed=15)
    for k in (1, 16):
        trigger = build_trigger("w", {"type": "wanet", "k": k, "s": 1.0}, 16, 1)
        out = trigger.apply(images)
        for i in range(3):
            np.testing.assert_array_equal(out[i:i + 1], trigger.apply(images[i:i + 1]))
        np.testing.assert_array_equal(trigger.apply(images[::-1]), out[::-1])
    assert build_trigger("w", {"type": "wanet"}, 16, 1).apply(np.zeros((0, 16, 16, 1), np.uint8)).shape == (0, 16, 16, 1)


@pytest.mark.parametrize("k", [0, -1, 17, 2.5, "four"])
def test_wanet_bad_k(k):
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.k must be an integer in \[1, 16\]"):
        build_trigger("mine", {"type": "wanet", "k": k}, 16, 1)


def test_wanet_bad_strength():
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.s must be a finite number"):
        build_trigger("mine", {"type": "wanet", "s": "strong"}, 16, 1)


# ------------------------------------------------------------------------------------------ additive (Trojan)


def test_additive_npy_is_added_and_clipped(tmp_path):
    pattern = np.zeros((4, 4), np.float32)
    pattern[0, 0], pattern[1, 1], pattern[2, 2], pattern[3, 3] = 100, -50, 0.4, 0.6
    path = tmp_path / "trojan.npy"
    np.save(path, pattern)
    images = np.array([[[[200], [10], [10], [10]], [[10], [30], [10], [10]],
                        [[10], [10], [10], [10]], [[10], [10], [10], [10]]]], np.uint8)
    out = build_trigger("t", {"type": "additive", "image": str(path)}, 4, 1).apply(images)[0, ..., 0]
    expected = np.full((4, 4), 10, np.uint8)
    expected[0, 0], expected[1, 1], expected[2, 2], expected[3, 3] = 255, 0, 10, 11
    np.testing.assert_array_equal(out, expected)


def test_additive_two_dimensional_pattern_on_every_channel_and_rgb_pattern(tmp_path):
    flat = np.arange(16, dtype=np.float64).reshape(4, 4)
    np.save(tmp_path / "flat.npy", flat)
    images = random_batch(n=2, size=4, channels=3, seed=16)
    out = build_trigger("t", {"type": "additive", "image": str(tmp_path / "flat.npy")}, 4, 3).apply(images)
    np.testing.assert_array_equal(out, np.clip(images.astype(int) + flat[..., None], 0, 255))
    rgb = np.random.default_rng(0).integers(-40, 40, size=(4, 4, 3))
    np.save(tmp_path / "rgb.npy", rgb)
    out = build_trigger("t", {"type": "additive", "image": str(tmp_path / "rgb.npy")}, 4, 3).apply(images)
    np.testing.assert_array_equal(out, np.clip(images.astype(int) + rgb, 0, 255))


def test_additive_image_file_is_resized_and_added(tmp_path):
    square = np.full((8, 8), 20, np.uint8)
    Image.fromarray(square, mode="L").save(tmp_path / "p.png")
    out = build_trigger("t", {"type": "additive", "image": str(tmp_path / "p.png")}, 4, 1).apply(zeros(1, size=4))
    assert (out == 20).all()


@pytest.mark.parametrize("shape", [(4, 5), (5, 5), (5, 5, 1), (5, 5, 2), (5, 5, 3, 1), (5,)])
def test_additive_wrong_shape(tmp_path, shape):
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros(shape))
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.image") as info:
        build_trigger("mine", {"type": "additive", "image": str(path)}, 4, 1)
    message = str(info.value)
    assert "(4, 4) or (4, 4, 1)" in message and str(shape) in message and "\n" not in message


def test_additive_missing_or_unreadable_file(tmp_path):
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.image.*not found"):
        build_trigger("mine", {"type": "additive", "image": str(tmp_path / "nope.npy")}, 4, 1)
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.image.*cannot read"):
        build_trigger("mine", {"type": "additive", "image": str(tmp_path / "bad.npy")}, 4, 1)
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.image"):
        build_trigger("mine", {"type": "additive"}, 4, 1)


# ------------------------------------------------------------------------------------------ relabel


def test_relabel_changes_no_pixel():
    images = random_batch(n=3, size=16, channels=3, seed=17)
    trigger = build_trigger("none", {"type": "relabel"}, 16, 3)
    out = trigger.apply(images)
    np.testing.assert_array_equal(out, images)
    assert out is not images
    assert trigger.changes_pixels is False
    with pytest.raises(BibaddiffError, match="'none'"):
        trigger.apply(np.zeros((1, 8, 8, 3), np.uint8))


def test_changes_pixels_for_every_pixel_trigger(tmp_path):
    np.save(tmp_path / "p.npy", np.ones((16, 16)))
    specs = [{"type": "patch"}, {"type": "blend"}, {"type": "stamp", "image": "builtin:bomb"}, {"type": "wanet"},
             {"type": "additive", "image": str(tmp_path / "p.npy")}]
    for spec in specs:
        assert build_trigger("t", spec, 16, 1).changes_pixels, spec


def test_every_trigger_is_a_trigger(tmp_path):
    from bibaddiff.triggers import Trigger

    np.save(tmp_path / "p.npy", np.ones((16, 16)))
    for kind, extra in [("patch", {}), ("blend", {}), ("stamp", {"image": "builtin:bomb"}), ("wanet", {}),
                        ("additive", {"image": str(tmp_path / "p.npy")}), ("relabel", {})]:
        trigger = build_trigger("t", {"type": kind, **extra}, 16, 1)
        assert isinstance(trigger, Trigger) and trigger.name == "t"
        assert trigger.apply(zeros()).shape == (2, 16, 16, 1)


def test_new_bad_patterns_name_the_allowed_values():
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.pattern.*checker, stripes, white, badnets; got 'picture'"):
        build_trigger("mine", {"type": "patch", "pattern": "picture"}, 16, 1)
    with pytest.raises(BibaddiffError, match=r"triggers\.mine\.pattern.*noise, stripes, picture; got 'badnets'"):
        build_trigger("mine", {"type": "blend", "pattern": "badnets"}, 16, 1)


@pytest.mark.parametrize("kind", ["wanet", "additive", "relabel"])
def test_pattern_on_a_type_without_patterns(kind):
    with pytest.raises(BibaddiffError, match=rf"triggers\.mine\.pattern is only for types patch.*badnets.*picture.*{kind}"):
        build_trigger("mine", {"type": kind, "pattern": "noise"}, 16, 1)


# ------------------------------------------------------------------------------------------ chunks


CHUNKED_SPECS = {
    "patch": {"type": "patch", "pattern": "checker", "size": 3},
    "blend": {"type": "blend", "pattern": "noise", "alpha": 0.2},
    "wanet": {"type": "wanet"},
    "additive": {"type": "additive", "image": "builtin:picture"},
}


@pytest.mark.parametrize("kind", sorted(CHUNKED_SPECS))
def test_a_batch_stamped_in_chunks_equals_each_image_stamped_alone(kind, monkeypatch):
    import bibaddiff.triggers

    trigger = build_trigger(kind, CHUNKED_SPECS[kind], 8, 3)
    images = np.random.default_rng(0).integers(0, 256, size=(7, 8, 8, 3), dtype=np.uint8)
    alone = np.stack([trigger.apply(image[None])[0] for image in images])
    monkeypatch.setattr(bibaddiff.triggers, "CHUNK_VALUES", 2 * 8 * 8 * 3)  # chunks of 2 images, the last of 1
    np.testing.assert_array_equal(trigger.apply(images), alone)


def test_blend_strengths_stay_with_their_images_across_chunks(monkeypatch):
    import bibaddiff.triggers

    trigger = build_trigger("blend", CHUNKED_SPECS["blend"], 8, 1)
    images = np.random.default_rng(1).integers(0, 256, size=(5, 8, 8, 1), dtype=np.uint8)
    alphas = np.array([0.05, 0.1, 0.15, 0.2, 0.25])
    alone = np.stack([trigger.apply_with_alpha(image[None], alpha[None])[0] for image, alpha in zip(images, alphas)])
    monkeypatch.setattr(bibaddiff.triggers, "CHUNK_VALUES", 2 * 8 * 8)
    np.testing.assert_array_equal(trigger.apply_with_alpha(images, alphas), alone)


def test_stamping_a_whole_set_makes_no_float_copy_of_it(monkeypatch):
    """A blend touches every pixel in float64; chunks bound those temporaries instead of 8 bytes per pixel of the set."""
    import tracemalloc

    import bibaddiff.triggers

    monkeypatch.setattr(bibaddiff.triggers, "CHUNK_VALUES", 2 ** 16)
    trigger = build_trigger("blend", CHUNKED_SPECS["blend"], 32, 3)
    images = np.random.default_rng(2).integers(0, 256, size=(3000, 32, 32, 3), dtype=np.uint8)  # 9.2 MB
    tracemalloc.start()
    try:
        stamped = trigger.apply(images)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stamped.dtype == np.uint8
    # The uint8 result, plus float64 temporaries of one chunk (a handful of 2 ** 16-value arrays).
    assert peak < stamped.nbytes + 8 * 8 * 2 ** 16, f"peak {peak} bytes for a {stamped.nbytes}-byte set"
