"""The style-transfer engine: pure PyTorch, tensors in and out, progress through a callback.

It knows nothing of Flask, Celery, Redis or files. See docs/engine.md.
"""

from worker.engine.core import transfer
from worker.engine.errors import (
    EngineInterrupted,
    EngineOutOfMemoryError,
    NumericalError,
    WeightsNotFoundError,
)
from worker.engine.images import encode_png, pil_to_tensor, tensor_to_pil
from worker.engine.network import Network, default_device, get_network, load_network
from worker.engine.state import EngineState, Progress

__all__ = [
    "EngineInterrupted",
    "EngineOutOfMemoryError",
    "EngineState",
    "Network",
    "NumericalError",
    "Progress",
    "WeightsNotFoundError",
    "default_device",
    "encode_png",
    "get_network",
    "load_network",
    "pil_to_tensor",
    "tensor_to_pil",
    "transfer",
]
