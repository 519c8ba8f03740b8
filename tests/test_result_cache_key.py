"""The result cache's key, and the weights' identity the API computes without the network."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.params import parse_params
from shared.result_cache import CacheRequest, cache_key
from shared.settings import Settings
from shared.weights_id import weights_file, weights_identity
from worker.engine.network import caffe_weights_path, default_torchvision_path

DATA = Path(__file__).parent / "data"
CONTENT = (DATA / "tubingen.png").read_bytes()
STYLE = (DATA / "starry_night.png").read_bytes()
OTHER = (DATA / "shipwreck.png").read_bytes()


def _settings(**values: object) -> Settings:
    return Settings(database_url="sqlite://", **values)  # type: ignore[arg-type]


def test_the_api_finds_the_weights_file_the_engine_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert weights_file(_settings()) == caffe_weights_path()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    assert weights_file(_settings(weights="torchvision")) == default_torchvision_path()
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights_file(_settings(weights="torchvision")) == default_torchvision_path()
    chosen = tmp_path / "mine.pth"
    assert weights_file(_settings(weights="torchvision", torchvision_weights_path=chosen)) == chosen


def test_the_weights_identity_is_the_files_digest_and_none_without_a_file(
    tmp_path: Path,
) -> None:
    caffe = weights_identity(_settings())
    assert caffe is not None and caffe.startswith("caffe:") and len(caffe) == len("caffe:") + 64
    assert weights_identity(_settings()) == caffe  # kept, not read again
    one, two = tmp_path / "one.pth", tmp_path / "two.pth"
    one.write_bytes(b"a" * 100)
    two.write_bytes(b"b" * 100)  # the same size: still other weights
    ids = [
        weights_identity(_settings(weights="torchvision", torchvision_weights_path=path))
        for path in (one, two)
    ]
    assert ids[0] != ids[1] and all(i and i.startswith("torchvision:") for i in ids)
    missing = _settings(weights="torchvision", torchvision_weights_path=tmp_path / "none.pth")
    assert weights_identity(missing) is None
    assert CacheRequest.of(missing).weights is None  # no key: the cache is off


def test_the_key_covers_inputs_in_order_parameters_with_defaults_engine_and_weights() -> None:
    params = parse_params({"size": 64})
    key = cache_key(params, CONTENT, [STYLE], "caffe:w")
    assert key == cache_key(parse_params({"size": 64, "seed": 0}), CONTENT, [STYLE], "caffe:w")
    others = {
        cache_key(parse_params({"size": 64, "seed": 1}), CONTENT, [STYLE], "caffe:w"),
        cache_key(params, CONTENT, [STYLE + b"\0"], "caffe:w"),
        cache_key(params, STYLE, [CONTENT], "caffe:w"),
        cache_key(params, CONTENT, [STYLE, OTHER], "caffe:w"),
        cache_key(params, CONTENT, [OTHER, STYLE], "caffe:w"),
        cache_key(params, CONTENT, [STYLE], "caffe:v"),
    }
    assert key not in others and len(others) == 6
