"""The compact L-BFGS against the textbook two-loop recursion, on a quadratic."""

from __future__ import annotations

import torch

from worker.engine.lbfgs import CompactLBFGS


def _quadratic(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return (a @ a.T + n * torch.eye(n, dtype=torch.float64)).float(), torch.randn(n, generator=gen)


def _two_loop(pairs: list[tuple[torch.Tensor, torch.Tensor]], g: torch.Tensor) -> torch.Tensor:
    """H g by Nocedal and Wright's algorithm 7.4 (float64)."""
    q = g.double().clone()
    alphas = []
    for s, y in reversed(pairs):
        alpha = (s.double() @ q) / (y.double() @ s.double())
        alphas.append(alpha)
        q -= alpha * y.double()
    s, y = pairs[-1][0].double(), pairs[-1][1].double()
    r = q * (s @ y) / (y @ y)
    for (s, y), alpha in zip(pairs, reversed(alphas), strict=True):
        beta = (y.double() @ r) / (y.double() @ s.double())
        r += s.double() * (alpha - beta)
    return r


def test_direction_matches_the_two_loop_recursion_including_a_full_ring() -> None:
    n, history = 40, 4
    a, b = _quadratic(n)
    opt = CompactLBFGS(n, torch.device("cpu"), history=history)
    x = torch.randn(n, generator=torch.Generator().manual_seed(1))
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    prev_x = prev_g = None
    for _ in range(9):  # more steps than the history holds: the ring wraps around
        g = a @ x - b
        if prev_g is not None and prev_x is not None:
            pairs.append((x - prev_x, g - prev_g))
        prev_x, prev_g = x.clone(), g.clone()
        opt.step(x, g.clone())
        if pairs:
            expected = -_two_loop(pairs[-history:], g)
            step = (x - prev_x).double()
            assert torch.allclose(
                step, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max())
            )


def test_it_minimises_a_quadratic() -> None:
    n = 30
    a, b = _quadratic(n)
    x = torch.zeros(n)
    opt = CompactLBFGS(n, torch.device("cpu"), history=10)
    for _ in range(60):
        opt.step(x, a @ x - b)
    solution = torch.linalg.solve(a.double(), b.double()).float()
    assert torch.allclose(x, solution, atol=1e-3)


def test_state_dict_continues_bit_for_bit() -> None:
    n = 20
    a, b = _quadratic(n)
    x = torch.ones(n)
    opt = CompactLBFGS(n, torch.device("cpu"), history=5)
    for _ in range(7):
        opt.step(x, a @ x - b)
    saved, x_saved = opt.state_dict(), x.clone()
    for _ in range(5):
        opt.step(x, a @ x - b)
    restored = CompactLBFGS(n, torch.device("cpu"), history=5)
    restored.load_state_dict(saved)
    for _ in range(5):
        restored.step(x_saved, a @ x_saved - b)
    assert torch.equal(x, x_saved)
