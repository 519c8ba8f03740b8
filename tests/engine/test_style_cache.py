"""The cache of style Gram targets: a run served from it is bit for bit a run that computed
its targets; the key tells apart what changes the targets; the byte bound evicts the least
recently used; it stays consistent under threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch

from shared.params import parse_params
from worker.engine import Network, schedule, transfer
from worker.engine.losses import STYLE_LAYERS, style_grams
from worker.engine.style_cache import StyleCache, StyleKey, StyleTargets, grams_bytes

MIB = 1024 * 1024
# Two passes of 32 and 64 px (the coarse pass allowed under 128 px by ``small_passes``).
TWO_PASSES = {"size": 64, "scales": 2, "iterations": 10}


@pytest.fixture(autouse=True)
def small_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedule, "MIN_PASS_LONGEST_SIDE_PX", 32)


@pytest.fixture(scope="module")
def matisse(load: Callable[[str], torch.Tensor]) -> torch.Tensor:
    return load("woman-with-hat-matisse")


def run(
    network: Network,
    content: torch.Tensor,
    styles: list[torch.Tensor],
    targets: StyleTargets | None,
    **params: Any,
) -> torch.Tensor:
    return transfer(
        network, content, styles, parse_params({**TWO_PASSES, **params}), style_targets=targets
    )


def test_a_run_from_the_cache_is_bit_for_bit_a_run_that_computed_its_targets(
    network: Network, content: torch.Tensor, style: torch.Tensor, matisse: torch.Tensor
) -> None:
    styles = [style, matisse]
    plain = transfer(network, content, styles, parse_params(TWO_PASSES))  # no cache at all
    cache = StyleCache(64 * MIB)
    first, second = StyleTargets(cache), StyleTargets(cache)
    computed = run(network, content, styles, first)
    cached = run(network, content, styles, second)
    # Two styles of a blend, each cached on its own, at each of the two passes.
    assert (first.cached, first.computed) == (0, 4)
    assert (second.cached, second.computed) == (4, 0)
    assert cache.stats().entries == 4
    assert torch.equal(computed, plain)
    assert torch.equal(cached, plain)
    # The counts a worker writes into the job's succeeded event.
    assert second.counts() == {"style_targets_cached": 4, "style_targets_computed": 0}


def test_the_key_tells_apart_the_style_its_scale_and_colour_matching(
    network: Network,
    content: torch.Tensor,
    style: torch.Tensor,
    matisse: torch.Tensor,
    load: Callable[[str], torch.Tensor],
) -> None:
    cache = StyleCache(64 * MIB)
    one_pass = {"size": 32, "scales": 1, "iterations": 1}

    def lookups(styles: list[torch.Tensor], **params: Any) -> tuple[int, int]:
        targets = StyleTargets(cache)
        run(network, content, styles, targets, **{**one_pass, **params})
        return targets.cached, targets.computed

    assert lookups([style]) == (0, 1)
    assert lookups([style]) == (1, 0)
    assert lookups([matisse]) == (0, 1), "another style"
    assert lookups([style], style_scale=2.0) == (0, 1), "another style_scale: another size"
    assert lookups([style], style_scale=2.0) == (1, 0)
    assert lookups([style], preserve_colors=True) == (0, 1), "matched to the content's luminance"
    assert lookups([style], preserve_colors=True) == (1, 0)
    other_content = load("chelsea")
    targets = StyleTargets(cache)
    transfer(
        network,
        other_content,
        [style],
        parse_params({**one_pass, "preserve_colors": True}),
        style_targets=targets,
    )
    assert (targets.cached, targets.computed) == (0, 1), "another content's luminance"
    # The same style with another content and the colours not matched: the same targets.
    targets = StyleTargets(cache)
    transfer(network, other_content, [style], parse_params(one_pass), style_targets=targets)
    assert (targets.cached, targets.computed) == (1, 0)
    # A blend's style of weight 0 is neither computed nor looked up.
    assert lookups([style, matisse], style_blend=[1, 0]) == (1, 0)


def test_the_byte_bound_evicts_the_least_recently_used(network: Network) -> None:
    grams = style_grams(network, torch.rand(1, 3, 32, 32))
    size = grams_bytes(grams)
    assert set(grams) == set(STYLE_LAYERS)
    assert 2 * MIB < size < 3 * MIB  # the five Gram matrices, whatever the image's size
    cache = StyleCache(2 * size + size // 2)  # room for two entries

    def key(name: str) -> StyleKey:
        return StyleKey(name, (32, 32), 1, "caffe", "cpu", "torch.float32")

    cache.put(key("a"), grams)
    cache.put(key("b"), grams)
    assert cache.get(key("a")) is not None  # now the most recently used
    cache.put(key("c"), grams)
    assert cache.get(key("b")) is None, "the least recently used went"
    assert cache.get(key("a")) is not None and cache.get(key("c")) is not None
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.evictions) == (2, 2 * size, 1)
    assert (stats.hits, stats.misses) == (3, 1)
    small = StyleCache(size - 1)
    small.put(key("a"), grams)
    assert small.get(key("a")) is None, "an entry larger than the bound is not kept"


def test_a_cache_of_zero_bytes_is_off(
    network: Network, content: torch.Tensor, style: torch.Tensor
) -> None:
    cache = StyleCache(0)
    for _ in range(2):
        targets = StyleTargets(cache)
        run(network, content, [style], targets, size=32, scales=1, iterations=1)
        assert (targets.cached, targets.computed) == (0, 1)
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (0, 0, 0)


def test_the_cache_stays_consistent_under_threads(network: Network) -> None:
    grams = style_grams(network, torch.rand(1, 3, 16, 16))
    size = grams_bytes(grams)
    cache = StyleCache(3 * size)
    keys = [StyleKey(str(i), (16, 16), 1, "caffe", "cpu", "torch.float32") for i in range(6)]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for step in range(300):
                key = keys[(offset + step) % len(keys)]
                if cache.get(key) is None:
                    cache.put(key, grams)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    stats = cache.stats()
    assert stats.hits + stats.misses == 4 * 300
    assert stats.entries <= 3 and stats.bytes == stats.entries * size <= stats.max_bytes
