"""The pure arithmetic of a run: pass sizes, the iteration split, the ETA."""

from __future__ import annotations

import pytest

from worker.engine.schedule import eta_seconds, fit_longest_side, pass_sizes, split_iterations


def test_fit_longest_side_keeps_the_aspect_ratio() -> None:
    assert fit_longest_side(384, 512, 256) == (192, 256)
    assert fit_longest_side(512, 384, 256) == (256, 192)
    assert fit_longest_side(100, 100, 64) == (64, 64)


def test_pass_sizes_double_up_to_the_requested_size() -> None:
    assert pass_sizes(384, 512, 512, 3) == [(96, 128), (192, 256), (384, 512)]
    assert pass_sizes(384, 512, 512, 1) == [(384, 512)]


def test_pass_sizes_drop_coarse_passes_under_128_px() -> None:
    assert pass_sizes(192, 256, 256, 3) == [(96, 128), (192, 256)]
    assert pass_sizes(48, 64, 64, 3) == [(48, 64)]  # the final pass is always kept


def test_pass_sizes_drop_passes_too_narrow_for_vgg() -> None:
    # A wide panorama: the coarse pass's short side would be 15 px, under 16.
    assert pass_sizes(30, 1000, 1000, 2) == [(30, 1000)]
    assert pass_sizes(200, 1000, 1000, 2) == [(100, 500), (200, 1000)]


def test_split_iterations_gives_coarse_passes_an_eighth_and_the_rest_to_the_finest() -> None:
    assert split_iterations(270, 3) == [33, 33, 204]
    assert split_iterations(270, 2) == [33, 237]
    assert split_iterations(270, 1) == [270]
    assert split_iterations(2, 3) == [0, 0, 2]
    assert sum(split_iterations(1234, 5)) == 1234
    with pytest.raises(ValueError):
        split_iterations(10, 0)


def test_eta_weights_iterations_by_their_pixel_count() -> None:
    assert eta_seconds(0.0, 0, [10, 10], [1, 4]) is None
    # 10 cheap iterations (1 unit each) took 10 s; 10 iterations of 4 units remain: 40 s.
    assert eta_seconds(10.0, 10, [10, 10], [1, 4]) == pytest.approx(40.0)
    assert eta_seconds(50.0, 20, [10, 10], [1, 4]) == pytest.approx(0.0)
