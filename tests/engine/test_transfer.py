"""transfer() end to end on the CPU with tiny images and few iterations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from shared.params import parse_params
from worker.engine import EngineInterrupted, EngineState, Network, Progress, schedule, transfer
from worker.engine.colors import rgb_to_yiq
from worker.engine.images import resize
from worker.engine.losses import STYLE_LAYERS, gram_matrix

TINY = {"size": 48, "iterations": 12, "scales": 1}
TWO_PASSES = {**TINY, "size": 64, "scales": 2, "iterations": 32}  # 32 px (4 it.), then 64 px (28)


@pytest.fixture(autouse=True)
def small_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Allow 32 px coarse passes, so that two passes fit in a 64 px test image."""
    monkeypatch.setattr(schedule, "MIN_PASS_LONGEST_SIDE_PX", 32)


def run(
    network: Network, content: torch.Tensor, styles: list[torch.Tensor], **params: Any
) -> torch.Tensor:
    return transfer(network, content, styles, parse_params({**TINY, **params}))


def style_distance(network: Network, image: torch.Tensor, style: torch.Tensor) -> float:
    """How far the Gram statistics of ``image`` are from ``style``'s (relative, summed over layers)."""
    with torch.no_grad():
        a = network.features(image.unsqueeze(0), STYLE_LAYERS)
        b = network.features(style.unsqueeze(0), STYLE_LAYERS)
        return sum(
            float((gram_matrix(a[k]) - gram_matrix(b[k])).norm() / gram_matrix(b[k]).norm())
            for k in STYLE_LAYERS
        )


def test_losses_fall_and_progress_is_reported(
    network: Network, content: torch.Tensor, style: torch.Tensor
) -> None:
    reports: list[Progress] = []
    out = transfer(network, content, [style], parse_params(TWO_PASSES), on_progress=reports.append)
    assert [p.iteration for p in reports] == list(range(1, 33))
    assert {p.iterations for p in reports} == {32}
    assert [p.scale for p in reports] == [0] * 4 + [1] * 28  # a coarse pass gets an eighth
    assert all(p.scales == 2 for p in reports)
    for scale in (0, 1):
        losses = [p.loss for p in reports if p.scale == scale]
        assert losses[-1] < 0.8 * losses[0], losses
    assert reports[0].loss == pytest.approx(
        reports[0].content_loss + reports[0].style_loss + reports[0].tv_loss, rel=1e-5
    )
    assert reports[-1].eta_seconds == 0.0
    assert reports[-1].elapsed_seconds >= reports[0].elapsed_seconds > 0
    assert out.shape == (3, 48, 64)
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_output_leaves_the_content_and_moves_toward_the_style(
    network: Network, content: torch.Tensor, style: torch.Tensor, optimizer: str
) -> None:
    out = run(network, content, [style], iterations=20, optimizer=optimizer)
    small_content = resize(content.unsqueeze(0), 36, 48)[0]
    assert (out - small_content).abs().mean() > 0.02
    small_style = resize(style.unsqueeze(0), 30, 48)[0]
    assert style_distance(network, out, small_style) < 0.7 * style_distance(
        network, small_content, small_style
    )


def test_longest_side_is_size_for_any_aspect_ratio(network: Network, style: torch.Tensor) -> None:
    portrait = torch.rand(3, 90, 40)
    out = run(network, portrait, [style], size=40, iterations=2)
    assert out.shape == (3, 40, 18)


def test_blend_weights_change_the_result(
    network: Network,
    content: torch.Tensor,
    style: torch.Tensor,
    load: Callable[[str], torch.Tensor],
) -> None:
    other = load("shipwreck")
    first = run(network, content, [style, other], style_blend=[1, 0])
    second = run(network, content, [style, other], style_blend=[0, 1])
    even = run(network, content, [style, other])
    assert (first - second).abs().mean() > 0.01
    assert (first - even).abs().mean() > 0.005
    # A blend of [1, 0] is the first style alone.
    assert torch.allclose(first, run(network, content, [style]), atol=1e-4)


def test_preserve_colors_keeps_the_content_chroma(
    network: Network, content: torch.Tensor, style: torch.Tensor
) -> None:
    out = run(network, content, [style], preserve_colors=True)
    small_content = resize(content.unsqueeze(0), 36, 48)
    chroma_out = rgb_to_yiq(out.unsqueeze(0))[:, 1:]
    chroma_content = rgb_to_yiq(small_content)[:, 1:]
    # Equal up to the final clamp to 0..1.
    assert (chroma_out - chroma_content).abs().mean() < 0.01
    plain = run(network, content, [style])
    assert (rgb_to_yiq(plain.unsqueeze(0))[:, 1:] - chroma_content).abs().mean() > 0.02


def test_same_seed_same_image(network: Network, content: torch.Tensor, style: torch.Tensor) -> None:
    a = run(network, content, [style], init="noise", seed=7, iterations=5)
    b = run(network, content, [style], init="noise", seed=7, iterations=5)
    c = run(network, content, [style], init="noise", seed=8, iterations=5)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_cancel_is_honoured_within_one_iteration(
    network: Network, content: torch.Tensor, style: torch.Tensor
) -> None:
    seen: list[int] = []
    stop = [False]

    def on_progress(p: Progress) -> None:
        seen.append(p.iteration)
        if p.iteration == 3:
            stop[0] = True

    with pytest.raises(EngineInterrupted) as info:
        transfer(
            network, content, [style], parse_params(TINY),
            on_progress=on_progress, should_stop=lambda: stop[0],
        )  # fmt: skip
    assert seen == [1, 2, 3]
    assert info.value.state.iteration == 3
    assert info.value.code == "interrupted"


def test_a_stop_asked_after_the_last_iteration_is_honoured_even_with_nothing_left_to_run(
    network: Network, content: torch.Tensor, style: torch.Tensor
) -> None:
    """A cancel read as the last iteration ends, or by the claim of an attempt that
    resumes from a state at the very end: the engine stops, it does not return an image."""
    params = parse_params(TINY)
    whole = transfer(network, content, [style], params)
    stop = [False]

    def on_progress(p: Progress) -> None:
        stop[0] = p.iteration == p.iterations

    with pytest.raises(EngineInterrupted) as info:
        transfer(
            network, content, [style], params,
            on_progress=on_progress, should_stop=lambda: stop[0],
        )  # fmt: skip
    state = EngineState.from_bytes(info.value.state.to_bytes())
    assert state.iteration == params.iterations
    with pytest.raises(EngineInterrupted):
        transfer(network, content, [style], params, resume=state, should_stop=lambda: True)
    assert torch.equal(transfer(network, content, [style], params, resume=state), whole)


@pytest.mark.parametrize(
    ("optimizer", "cut"), [("lbfgs", 2), ("lbfgs", 4), ("lbfgs", 9), ("adam", 8)]
)
def test_saved_state_resumes_exactly(
    network: Network, content: torch.Tensor, style: torch.Tensor, optimizer: str, cut: int
) -> None:
    """Interrupt, serialise, restore: the same image as an uninterrupted run, bit for bit.

    cut=4 stops at the boundary between the two passes. The L-BFGS history is
    part of the state, and the CPU is deterministic, so no tolerance is needed.
    """
    params = parse_params({**TWO_PASSES, "optimizer": optimizer})
    whole = transfer(network, content, [style], params)
    with pytest.raises(EngineInterrupted) as info:
        transfer(
            network, content, [style], params, on_progress=lambda p: None, should_stop=_after(cut)
        )
    state = EngineState.from_bytes(info.value.state.to_bytes())
    assert state.iteration == cut
    iterations: list[int] = []
    resumed = transfer(
        network,
        content,
        [style],
        params,
        resume=state,
        on_progress=lambda p: iterations.append(p.iteration),
    )
    assert iterations == list(range(cut + 1, 33))
    assert torch.equal(whole, resumed)


def test_progress_state_mid_run_resumes_exactly(
    network: Network, content: torch.Tensor, style: torch.Tensor
) -> None:
    params = parse_params(TINY)
    saved: list[bytes] = []
    previews: list[torch.Tensor] = []

    def on_progress(p: Progress) -> None:
        if p.iteration == 5:
            saved.append(p.state().to_bytes())
            previews.append(p.image())

    whole = transfer(network, content, [style], params, on_progress=on_progress)
    assert previews[0].shape == (3, 36, 48)
    resumed = transfer(network, content, [style], params, resume=EngineState.from_bytes(saved[0]))
    assert torch.equal(whole, resumed)


def test_progress_image_only_inside_the_callback(
    network: Network, content: torch.Tensor, style: torch.Tensor
) -> None:
    kept: list[Progress] = []
    run_params = parse_params({**TINY, "iterations": 2})
    transfer(network, content, [style], run_params, on_progress=kept.append)
    with pytest.raises(RuntimeError):
        kept[0].image()


def _after(n: int) -> Callable[[], bool]:
    calls = [0]

    def should_stop() -> bool:
        calls[0] += 1
        return calls[0] > n

    return should_stop
