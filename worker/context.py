"""What one worker process holds for all its jobs: settings, database, storage, its name,
the network, its cache of style Gram targets and its row in the workers registry (built
after the fork)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from shared.db import Database
from shared.settings import MIB, Settings
from shared.storage import Storage, open_storage
from shared.workers import default_worker_name
from worker.engine import Network, default_device, get_network, load_network
from worker.engine.style_cache import StyleCache, StyleTargets
from worker.memory_budget import budget_bytes
from worker.registry import WorkerRegistry

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """What one worker process holds for all its jobs (built after the fork)."""

    settings: Settings
    db: Database
    storage: Storage
    # The worker's Celery node name: the lease owner, the ``worker`` a job and its
    # events show, the key of its row in the workers registry, the logs' ``worker``.
    name: str
    hostname: str
    pid: int  # this pool process's: recorded in each claim's event, and in the registry
    # Set when the worker is asked to shut down (SIGTERM): a running job
    # checkpoints and goes back to the queue instead of holding up the shutdown.
    shutting_down: threading.Event = field(default_factory=threading.Event)
    # Sends a job's id to the workers (a follower promoted when its leader is canceled);
    # None: left for the reconciler to send.
    enqueue: Callable[[uuid.UUID], None] | None = None
    _network: Network | None = field(default=None, repr=False)
    _registry: WorkerRegistry | None = field(default=None, repr=False)
    _style_cache: StyleCache | None = field(default=None, repr=False)

    def device(self) -> torch.device:
        device = self.settings.device
        return default_device() if device == "auto" else torch.device(device)

    def memory_budget(self) -> int:
        """The largest job memory estimate this worker claims (``worker.memory_budget``)."""
        return budget_bytes(self.settings, self.device())

    def registry(self) -> WorkerRegistry:
        """This process in the ``workers`` table, started once the network is loaded."""
        if self._registry is None:
            self._registry = WorkerRegistry(
                self.db,
                name=self.name,
                hostname=self.hostname,
                pid=self.pid,
                device=self.device,
                memory_budget=self.memory_budget,
            )
        return self._registry

    def style_cache(self) -> StyleCache:
        """This process's cache of style Gram targets, on its device, sized by
        STYLEQUEUE_STYLE_CACHE_MB (its default depends on the device; 0: off)."""
        if self._style_cache is None:
            self._style_cache = StyleCache(self.settings.style_cache_bytes(self.device().type))
        return self._style_cache

    def style_targets(self) -> StyleTargets:
        """A job's source of style Gram targets: this process's cache (counting for the job)."""
        return StyleTargets(self.style_cache())

    def log_style_cache(
        self, job_id: uuid.UUID, targets: StyleTargets, extra: dict[str, object]
    ) -> None:
        """One line after a job: where its style targets came from, and the cache's counters
        (the worker's metrics of it: hits, misses, evictions since the process started)."""
        stats = self.style_cache().stats()
        log.info(
            "job %s: style targets: %d from the cache, %d computed; the cache: %d hits, "
            "%d misses, %d evictions, %d entries, %.1f of %.0f MiB",
            job_id,
            targets.cached,
            targets.computed,
            stats.hits,
            stats.misses,
            stats.evictions,
            stats.entries,
            stats.bytes / MIB,
            stats.max_bytes / MIB,
            extra={
                **extra,
                **targets.counts(),
                "style_cache_hits": stats.hits,
                "style_cache_misses": stats.misses,
                "style_cache_evictions": stats.evictions,
                "style_cache_entries": stats.entries,
                "style_cache_bytes": stats.bytes,
                "style_cache_max_bytes": stats.max_bytes,
            },
        )

    def close(self) -> None:
        """Stop beating and close the database connections."""
        if self._registry is not None:
            self._registry.stop()
        self.db.dispose()

    def network(self) -> Network:
        """The VGG19 network, loaded on first use and kept for every later job."""
        if self._network is None:
            chosen = self.device()
            path = self.settings.torchvision_weights_path
            if self.settings.weights == "torchvision" and path is not None:
                self._network = load_network("torchvision", chosen, torchvision_path=path)
            else:
                self._network = get_network(self.settings.weights, chosen)
            log.info("loaded %s VGG19 on %s", self.settings.weights, chosen)
            self.registry().start()
        return self._network


def make_context(settings: Settings, name: str | None = None) -> WorkerContext:
    """This process's context, named ``name``: its worker's Celery node name.

    Without one (a context made in-process, outside a Celery worker), the name a
    worker started here now would get by default (``default_worker_name``).
    """
    hostname, pid = socket.gethostname(), os.getpid()
    if name is None:
        name = default_worker_name(
            hostname,
            pid,
            device=settings.device,
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        )
    return WorkerContext(
        settings=settings,
        # A batch's every job holds two connections (its reporter's, its lease thread's).
        db=Database(settings.database_url, pool_size=5 + 2 * settings.batch_max),
        storage=open_storage(settings),
        name=name,
        hostname=hostname,
        pid=pid,
    )
