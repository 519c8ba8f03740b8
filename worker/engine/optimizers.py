"""The two optimizers of the loop, behind one small interface: a step from the gradient,
and a state to save and load (the checkpoint's ``optimizer``).

L-BFGS is ``CompactLBFGS`` (``lbfgs.py``); Adam is torch's, its image clamped to 0..1
after every step.
"""

from __future__ import annotations

from typing import Any

import torch

from worker.engine.lbfgs import CompactLBFGS

ADAM_LR = 0.02  # per step, in 0..1 pixel units (crowsonkb/style-transfer-pytorch's value)


class Optimizer:
    """The optimizer interface of the loop: a step from the gradient, and a state to save."""

    def step(self, image: torch.Tensor, grad: torch.Tensor) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class _LBFGS(Optimizer):
    def __init__(self, n: int, device: torch.device) -> None:
        self.lbfgs = CompactLBFGS(n, device, bounds=(0.0, 1.0))

    def step(self, image: torch.Tensor, grad: torch.Tensor) -> None:
        self.lbfgs.step(image.view(-1), grad.view(-1))

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "lbfgs", **self.lbfgs.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lbfgs.load_state_dict(state)


class _Adam(Optimizer):
    def __init__(self) -> None:
        self.param: torch.Tensor | None = None
        self.adam: torch.optim.Adam | None = None
        self.pending: dict[str, Any] | None = None

    def _bind(self, image: torch.Tensor) -> torch.optim.Adam:
        if self.adam is None or self.param is not image:
            self.param = image
            self.adam = torch.optim.Adam([image], lr=ADAM_LR)
            if self.pending is not None:
                self.adam.load_state_dict(self.pending)
                self.pending = None
        return self.adam

    def step(self, image: torch.Tensor, grad: torch.Tensor) -> None:
        adam = self._bind(image)
        image.grad = grad
        adam.step()
        image.grad = None
        with torch.no_grad():
            image.clamp_(0.0, 1.0)

    def state_dict(self) -> dict[str, Any]:
        if self.adam is None:
            return {"kind": "adam", "torch": self.pending}
        # torch returns live references to its moment buffers: copy them to the CPU.
        return {"kind": "adam", "torch": _to_cpu(self.adam.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = state["torch"]


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


def make_optimizer(name: str, n: int, device: torch.device) -> Optimizer:
    if name == "lbfgs":
        return _LBFGS(n, device)
    return _Adam()
