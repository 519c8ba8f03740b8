"""A worker's cache of style Gram targets: a popular style's targets are computed once.

A job's style targets are each style's Gram matrices at the five style layers,
one VGG19 forward pass per style and per coarse-to-fine pass. Jobs on a service
often reuse a few styles, so a worker process keeps the Gram matrices of the
styles it used lately (``StyleCache``) and a later job with the same style at
the same size takes them from there instead of computing them again.

The key (``StyleKey``) is everything the Gram matrices depend on:

* the style's pixels: a BLAKE2b digest of the decoded style exactly as the
  engine prepared it (float32 RGB, transparency flattened onto white, and with
  ``preserve_colors`` its luminance matched to the content's), with its shape;
  not of the uploaded file, so that the same painting re-encoded or with other
  metadata is the same style, and a recoloured one is not;
* the size it is resized to for the pass (what ``style_scale`` and the pass's
  size decide: two jobs whose styles are resized alike share their targets);
* the network: the loaded ``Network`` object (a number given to each in this
  process), its weights' name, its device and its convolutions' dtype;
* the style layers, and ``STYLE_TARGETS_VERSION``.

A blend caches each style's matrices separately (a style of weight 0 is never
looked up, as it is never computed). The cache is bounded by bytes, least
recently used out, and holds the matrices where they were computed (on the
worker's GPU, or in its memory on the CPU). A job gets the very tensors an
earlier job computed with the same function (``losses.style_grams``), so on
the CPU its result is bit for bit the one it has with the cache off (on a GPU,
up to the GPU's own run-to-run nondeterminism). It is thread-safe.
``StyleTargets`` is one transfer's use of it, counting what came from the cache.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch

from worker.engine.losses import STYLE_LAYERS, GramSource, style_grams
from worker.engine.network import Network

# Bump when the way a style's Gram matrices are computed from its pixels changes
# (the resizing, the network's preprocessing or padding, the Gram normalisation).
STYLE_TARGETS_VERSION = 1

Grams = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class StyleKey:
    """What one style's Gram matrices at one size depend on."""

    pixels: str  # BLAKE2b-128 of the style's float32 pixels and shape, as the engine got them
    size: tuple[int, int]  # (height, width) it is resized to for the pass
    network: int  # the Network object's number in this process (its weights)
    weights: str
    device: str
    dtype: str
    layers: tuple[str, ...] = STYLE_LAYERS
    version: int = STYLE_TARGETS_VERSION


@dataclass(frozen=True)
class CacheStats:
    """A cache's counters since the process started, and what it holds now."""

    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    max_bytes: int


def pixels_digest(image: torch.Tensor) -> str:
    """The hex BLAKE2b-128 digest of ``image``'s float32 values and shape (copied to the CPU)."""
    values = image.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(tuple(values.shape)).encode())
    digest.update(values.numpy().data)
    return digest.hexdigest()


_network_numbers: weakref.WeakKeyDictionary[Network, int] = weakref.WeakKeyDictionary()
_network_lock = threading.Lock()
_next_number = itertools.count(1)


def network_number(network: Network) -> int:
    """A number for ``network`` unique in this process while it lives (never reused)."""
    with _network_lock:
        number = _network_numbers.get(network)
        if number is None:
            number = _network_numbers[network] = next(_next_number)
        return number


def style_key(network: Network, pixels: str, resized: torch.Tensor) -> StyleKey:
    """The key of the style whose digest is ``pixels``, resized to ``resized``'s size."""
    return StyleKey(
        pixels=pixels,
        size=(int(resized.shape[-2]), int(resized.shape[-1])),
        network=network_number(network),
        weights=str(network.weights),
        device=str(network.device),
        dtype=str(network.dtype),
    )


def grams_bytes(grams: Grams) -> int:
    """The memory ``grams`` hold (one style at one size: ~2.3 MiB, whatever the size)."""
    return sum(t.numel() * t.element_size() for t in grams.values())


class StyleCache:
    """Recently used styles' Gram matrices, at most ``max_bytes`` of them; 0: no cache.

    Least recently used out. Safe to share between threads: the lookups and
    insertions hold a lock, the computing of a missing entry does not (two
    threads missing the same style both compute it; the first one's is kept).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._entries: OrderedDict[StyleKey, tuple[Grams, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, key: StyleKey) -> Grams | None:
        """The Gram matrices under ``key`` (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return entry[0]

    def put(self, key: StyleKey, grams: Grams) -> None:
        """Keep ``grams`` under ``key``, evicting the least recently used beyond the bound.

        An entry larger than the whole bound is not kept.
        """
        size = grams_bytes(grams)
        frozen = MappingProxyType(dict(grams))
        with self._lock:
            if size > self.max_bytes or key in self._entries:
                return
            self._entries[key] = (frozen, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted
                self._evictions += 1

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                entries=len(self._entries),
                bytes=self._bytes,
                max_bytes=self.max_bytes,
            )

    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0


class StyleTargets:
    """Where one job's style Gram matrices come from: ``cache`` when it has them, else
    computed (and kept there). Without a cache (or a disabled one), always computed.

    ``cached`` and ``computed`` count the style-and-pass lookups of each kind, over
    every ``transfer`` it was given to (a job started over after a checkpoint that
    did not fit counts both runs).
    """

    def __init__(self, cache: StyleCache | None = None) -> None:
        self.cache = cache if cache is not None and cache.enabled else None
        self.cached = 0
        self.computed = 0

    def source(self, network: Network, styles: Sequence[torch.Tensor]) -> GramSource:
        """The ``Objective``'s ``grams_of`` for ``styles`` (each ``[1,3,H,W]`` as the engine
        prepared them, before resizing): style i's matrices at the size it was resized to."""
        digests: dict[int, str] = {}

        def grams_of(index: int, resized: torch.Tensor) -> Grams:
            if self.cache is None:
                self.computed += 1
                return style_grams(network, resized)
            if index not in digests:  # once per style and job, only when the cache is on
                digests[index] = pixels_digest(styles[index])
            key = style_key(network, digests[index], resized)
            found = self.cache.get(key)
            if found is not None:
                self.cached += 1
                return found
            grams = style_grams(network, resized)
            self.cache.put(key, grams)
            self.computed += 1
            return grams

        return grams_of

    def counts(self) -> dict[str, int]:
        """For a job's ``succeeded`` event and log line."""
        return {"style_targets_cached": self.cached, "style_targets_computed": self.computed}
