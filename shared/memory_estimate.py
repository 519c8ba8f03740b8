"""A job's peak device memory, estimated from its shape before any worker claims it (no torch).

The API computes it at submit (it knows the content's size once the upload is
decoded) and stores it in ``jobs.memory_estimate``; a worker claims only jobs whose
estimate fits its budget (``worker_budget_bytes``); a batch of jobs run together
costs ``estimate_peak_bytes(..., batch=n)``. docs/engine.md ("Memory") says how the
model was calibrated and what it was measured against.

The model, per job in a run, at the final (largest) pass's ``h x w`` pixels:

- the VGG19 activations kept for the backward pass, up to relu5_1: each
  convolution's output and its ReLU's, at the resolution of its block (the 2x2
  pools halve each side), ``ACTIVATION_FLOATS_PER_PIXEL`` values per output pixel,
  in the network's precision (bfloat16 on a GPU, float32 on the CPU);
- the backward pass's own gradients of those activations, of the order of the
  two largest (relu1_x): ``BACKWARD_FLOATS_PER_PIXEL``;
- the optimizer's image-sized vectors (3 values per pixel, float32): L-BFGS keeps
  ``2 m`` of them (``LBFGS_HISTORY`` pairs) plus a few of its own; Adam two moments
  and a few more;
- the style images' forward pass (no gradient), at ``style_scale`` times the
  output's size, when their Gram targets are computed.

The activations' count is multiplied by ``ACTIVATION_CALIBRATION``, measured.
Once per run: the network's weights (``WEIGHT_PARAMETERS``) and a run's scratch
(``run_overhead_bytes``: on a GPU the CUDA context and cuDNN's workspaces). The sum is multiplied
by ``SAFETY_FACTOR``, which covers the allocator's slack and what the model leaves
out (the Gram matrices, the losses' temporaries).
"""

from __future__ import annotations

from shared.params import StyleParams
from shared.sizes import output_shape

MIB = 1024 * 1024

# Channels of each convolution of VGG19 up to conv5_1 and its block's downsampling
# (each block after the first follows a 2x2 max pool).
_VGG_LAYERS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (64, 1),
    (128, 2),
    (128, 2),
    (256, 4),
    (256, 4),
    (256, 4),
    (256, 4),
    (512, 8),
    (512, 8),
    (512, 8),
    (512, 8),
    (512, 16),
)
# A convolution's output and its ReLU's, each kept for the backward pass, per output pixel.
ACTIVATION_FLOATS_PER_PIXEL: float = sum(2 * c / (d * d) for c, d in _VGG_LAYERS)
BACKWARD_FLOATS_PER_PIXEL: float = 2 * 64
STYLE_FORWARD_FLOATS_PER_PIXEL: float = 2 * 64  # no gradient: the two largest at a time
LBFGS_HISTORY = 50  # worker.engine.lbfgs.HISTORY_SIZE
LBFGS_EXTRA_VECTORS = 6  # the image, its gradient, the direction, the previous ones
ADAM_VECTORS = 6  # two moments, the image, its gradient, the step's temporaries
IMAGE_CHANNELS = 3
# 3x3 convolutions up to conv5_1: 12,944,960 parameters (weights and biases).
WEIGHT_PARAMETERS = 12_944_960
# Calibration (bench/memory_estimate.py, on the CPU): the engine's activations came to
# about 1.6 times the count above (the channels-last copies, the pools' indices, the
# losses' features), and a run's scratch (oneDNN's, the threads' arenas) to about
# 128 MiB whatever the size. On a GPU: the CUDA context and cuDNN's workspaces.
ACTIVATION_CALIBRATION = 1.6
CPU_OVERHEAD_BYTES = 128 * MIB
CUDA_OVERHEAD_BYTES = 768 * MIB
# Over the calibrated sum: the allocator's slack and fragmentation, what varies by host.
SAFETY_FACTOR = 1.25
# What a worker keeps aside from its device's memory when no budget is set.
RESERVE_FRACTION = 0.1
MIN_RESERVE_BYTES = 512 * MIB


def _float_bytes(device_kind: str) -> int:
    """Bytes per activation value: the network runs in bfloat16 on a GPU."""
    return 2 if device_kind == "cuda" else 4


def run_overhead_bytes(device_kind: str) -> int:
    """A run's memory beside its jobs' and the weights, whatever its size."""
    return CUDA_OVERHEAD_BYTES if device_kind == "cuda" else CPU_OVERHEAD_BYTES


def job_bytes(params: StyleParams, content_hw: tuple[int, int], *, device_kind: str) -> int:
    """One job's share of a run's peak, before the safety factor (no weights, no context)."""
    height, width = content_hw
    out_w, out_h = output_shape(width, height, params.size)
    pixels = out_w * out_h
    activations = (
        (ACTIVATION_FLOATS_PER_PIXEL + BACKWARD_FLOATS_PER_PIXEL) * ACTIVATION_CALIBRATION * pixels
    )
    vectors = (
        2 * LBFGS_HISTORY + LBFGS_EXTRA_VECTORS if params.optimizer == "lbfgs" else ADAM_VECTORS
    )
    optimizer = vectors * IMAGE_CHANNELS * pixels * 4
    style_pixels = pixels * params.style_scale**2
    style = STYLE_FORWARD_FLOATS_PER_PIXEL * style_pixels * _float_bytes(device_kind)
    # The style pass runs before the optimization, not with it: the larger of the two.
    return int(max(activations * _float_bytes(device_kind) + optimizer, style))


def estimate_peak_bytes(
    params: StyleParams,
    content_hw: tuple[int, int],
    n_styles: int = 1,
    *,
    batch: int = 1,
    device_kind: str = "cuda",
) -> int:
    """The peak device memory of ``batch`` such jobs run together, in bytes.

    ``content_hw``: the content image's (height, width) as uploaded; the output's
    longest side is ``params.size``. ``n_styles`` matters little (their Gram targets
    are a few MiB each) and is counted as such. ``device_kind``: "cuda" or "cpu".
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    grams = sum(c * c for c, _ in _VGG_LAYERS[::2]) * 4 * max(1, n_styles)
    per_job = job_bytes(params, content_hw, device_kind=device_kind) + grams
    fixed = WEIGHT_PARAMETERS * _float_bytes(device_kind) + run_overhead_bytes(device_kind)
    return int((fixed + batch * per_job) * SAFETY_FACTOR)


def batch_member_bytes(estimate: int, *, device_kind: str = "cuda") -> int:
    """What one more job adds to a batch's peak: its ``estimate`` (as the API stored it,
    for ``device_kind``, alone) less what a run costs once (the weights, the scratch)."""
    fixed = WEIGHT_PARAMETERS * _float_bytes(device_kind) + run_overhead_bytes(device_kind)
    return max(0, estimate - int(fixed * SAFETY_FACTOR))


def batch_peak_bytes(estimates: list[int | None], *, device_kind: str = "cuda") -> int:
    """The peak of the jobs of ``estimates`` (each as stored, alone) run as one batch: the
    run's fixed part once, each job's own share once (None: not estimated, counted 0)."""
    known = [e for e in estimates if e is not None]
    if not known:
        return 0
    own = [batch_member_bytes(e, device_kind=device_kind) for e in known]
    return known[0] - own[0] + sum(own)


def worker_budget_bytes(device_total_bytes: int, *, override_mb: float | None = None) -> int:
    """What a worker may claim: ``override_mb`` (STYLEQUEUE_WORKER_MEMORY_MB) when set,
    else its device's memory less a reserve (a tenth, at least 512 MiB)."""
    if override_mb is not None:
        return int(override_mb * MIB)
    reserve = max(MIN_RESERVE_BYTES, int(device_total_bytes * RESERVE_FRACTION))
    return max(0, device_total_bytes - reserve)


def fits(estimate: int | None, budget: int | None) -> bool:
    """Whether a job of ``estimate`` fits a worker of ``budget`` (None: unknown, fits)."""
    return estimate is None or budget is None or estimate <= budget
