"""model.losses.perceptual: the VGG written here against plain functional ops, torchvision's file format,
the one-line errors for missing or wrong weights, and the loss's contract (per image, fp32, frozen VGG).

No torchvision and no real weights: every file is written by the test from random tensors, with
torchvision's key names (``features.{i}.weight``/``.bias``, ``classifier.*``).
"""
from __future__ import annotations

import re
import urllib.error

import pytest
import torch
import torch.nn.functional as F

from model.losses.perceptual import (VGG_CONFIGS, VGG_LAYERS, PerceptualLoss, VGGFeatures, check_layers,
                                     download_weights, find_weights, load_vgg_weights)
from pipeline.errors import ConfigError
from tests.utils import single_thread  # noqa: F401 (the fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

#: torchvision's vgg.py cfgs "D" and "E", written out again so that a typo in the module shows.
TORCHVISION_CFGS = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
HUB_FILE = "vgg16-397923af.pth"
HUB_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"


def reference_features(state: dict, network: str, layers, x: torch.Tensor) -> list[torch.Tensor]:
    """torchvision's ``features`` applied by hand, naming each output as it goes."""
    h, out, i, block, k = (x - MEAN) / STD, {}, 0, 1, 0
    for v in TORCHVISION_CFGS[network]:
        if v == "M":
            h = out[f"pool{block}"] = F.max_pool2d(h, 2, 2)
            i, block, k = i + 1, block + 1, 0
        else:
            k += 1
            h = out[f"conv{block}_{k}"] = F.conv2d(h, state[f"features.{i}.weight"], state[f"features.{i}.bias"],
                                                   padding=1)
            h = out[f"relu{block}_{k}"] = F.relu(h)
            i += 2
        if all(name in out for name in layers):
            break
    return [out[name] for name in layers]


def random_state(features: VGGFeatures, seed: int) -> dict[str, torch.Tensor]:
    """New values for every tensor of ``features`` (He-scaled, so deep layers stay non-trivial)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * (2 / v[0].numel()) ** 0.5 if v.dim() > 1
            else 0.1 * torch.randn(v.shape, generator=gen) for k, v in features.state_dict().items()}


def with_classifier(state: dict) -> dict:
    return {**state, "classifier.0.weight": torch.randn(8, 4), "classifier.0.bias": torch.zeros(8),
            "classifier.6.weight": torch.randn(2, 8), "classifier.6.bias": torch.zeros(2)}


def one_line_error(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


@pytest.fixture
def images():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 32, 32, generator=gen), torch.rand(2, 3, 32, 32, generator=gen)


# --- the network -------------------------------------------------------------------------------------

def test_configs_and_torchvision_indices():
    assert VGG_CONFIGS == TORCHVISION_CFGS
    # The slice points LPIPS and many perceptual-loss repos use on torchvision's features.
    vgg16, vgg19 = VGG_LAYERS["vgg16"], VGG_LAYERS["vgg19"]
    assert [vgg16[n] for n in ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")] == [3, 8, 15, 22, 29]
    assert [vgg19[n] for n in ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")] == [1, 6, 11, 20, 29]
    assert VGG_LAYERS["vgg19"]["relu5_4"] == 35 and VGG_LAYERS["vgg16"]["pool5"] == 30
    keys = list(VGGFeatures("vgg19", ["pool5"]).state_dict())
    assert keys[:4] == ["features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias"]
    assert keys[-1] == "features.34.bias" and len(keys) == 32


@pytest.mark.parametrize("network, layers", [
    ("vgg16", ["relu1_2", "relu2_2", "relu3_3"]),
    ("vgg16", ["relu5_3", "conv1_1", "pool2", "relu4_1"]),   # any order, deepest first
    ("vgg19", ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]),
    ("vgg19", ["conv3_4", "relu5_4"]),
])
def test_features_match_functional_reference(network, layers, images):
    vgg = VGGFeatures(network, layers)
    vgg.load_state_dict(random_state(vgg, seed=1))
    deepest = max(VGG_LAYERS[network][n] for n in layers)
    assert len(vgg.features) == deepest + 1  # built up to the deepest asked layer only
    x = images[0][:1]
    got = vgg(x)
    want = reference_features(vgg.state_dict(), network, layers, x)
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        assert w.abs().max() > 1e-2
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    # channels_last takes other conv algorithms (another summation order): equal to fp32 rounding.
    got_cl = vgg(x.contiguous(memory_format=torch.channels_last))
    for g, w in zip(got_cl, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * w.abs().max().item())


# --- layer names -------------------------------------------------------------------------------------

def test_check_layers_accepts_every_name():
    for network, names in VGG_LAYERS.items():
        check_layers(network, list(names))


@pytest.mark.parametrize("network, layers, match", [
    ("vgg16", ["relu2_3"], r"unknown vgg16 layer 'relu2_3' \(did you mean 'relu2_2'\? vgg16 has relu1_1 … relu5_3"),
    ("vgg16", ["relu1_2", "relu5_4"], r"unknown vgg16 layer 'relu5_4' \(did you mean 'relu5_3'\?"),
    ("vgg19", ["rleu3_4"], r"did you mean 'relu3_4'\? vgg19 has relu1_1 … relu5_4"),
    ("vgg16", ["block1_conv1"], r"unknown vgg16 layer 'block1_conv1' \(vgg16 has"),
    ("vgg16", ["relu1_2", "relu2_2", "relu1_2"], r"'relu1_2' is listed twice"),
    ("vgg16", [], r"perceptual_layers: expected a non-empty list"),
    ("vgg11", ["relu1_1"], r"perceptual_network: unknown network 'vgg11' .*vgg16, vgg19"),
    ("resnet50", ["relu1_1"], r"unknown network 'resnet50'"),
])
def test_check_layers_refuses(network, layers, match):
    with pytest.raises(ConfigError, match=match) as excinfo:
        check_layers(network, layers)
    one_line_error(excinfo)
    with pytest.raises(ConfigError, match=match):
        VGGFeatures(network, layers)


# --- the weights file ------------------------------------------------------------------------------------

def test_loader_takes_torchvision_keys_and_uses_them(tmp_path, images):
    vgg = VGGFeatures("vgg16", ["relu1_2", "relu2_2"])
    before = [f.clone() for f in vgg(images[0])]
    state = random_state(vgg, seed=2)
    torch.save(with_classifier(state), tmp_path / "vgg16.pth")
    load_vgg_weights(vgg, "vgg16", tmp_path / "vgg16.pth")
    after = vgg(images[0])
    for b, a, w in zip(before, after, reference_features(state, "vgg16", vgg.layers, images[0])):
        assert not torch.allclose(a, b)
        torch.testing.assert_close(a, w, rtol=1e-5, atol=1e-5)
    # A full network's file loads into a shallower one (the deeper layers are not needed).
    deep = VGGFeatures("vgg16", ["relu5_3"])
    torch.save(with_classifier(random_state(deep, seed=3)), tmp_path / "full.pth")
    loss = PerceptualLoss("vgg16", ["relu1_2", "relu2_2"], weights=str(tmp_path / "full.pth"))
    assert loss.pretrained
    torch.testing.assert_close(loss.vgg.features[0].weight, torch.load(tmp_path / "full.pth")["features.0.weight"])


def _bad_files(tmp_path) -> dict:
    vgg19 = VGGFeatures("vgg19", ["relu4_1"]).state_dict()
    vgg16 = VGGFeatures("vgg16", ["relu2_2"]).state_dict()
    files = {
        "vgg19.pth": with_classifier(vgg19),
        "shape.pth": {**vgg16, "features.2.weight": torch.zeros(64, 32, 3, 3)},
        "short.pth": {k: v for k, v in vgg16.items() if k.startswith(("features.0.", "features.2."))},
        "resnet.pth": {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)},
        "tensor.pth": torch.zeros(3),
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    good = (tmp_path / "vgg16.pth")
    torch.save(vgg16, good)
    (tmp_path / "truncated.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    return files


@pytest.mark.parametrize("name, match", [
    ("vgg19.pth", r"vgg19.pth is not torchvision's vgg16 weights \(unexpected key 'features.16.weight'\); "
                  r"it looks like vgg19's"),
    ("shape.pth", r"features.2.weight has shape \[64, 32, 3, 3\], expected \[64, 64, 3, 3\]"),
    ("short.pth", r"short.pth is not torchvision's vgg16 weights \(missing key 'features.5.weight'\)"),
    ("resnet.pth", r"resnet.pth is not torchvision's vgg16 weights \(unexpected key '(conv1|fc).weight'\)$"),
    ("tensor.pth", r"tensor.pth holds a Tensor, not a state dict"),
    ("truncated.pth", r"cannot read .*truncated.pth as a weights file"),
    ("text.pth", r"cannot read .*text.pth as a weights file"),
])
def test_loader_refuses_other_files(tmp_path, name, match):
    _bad_files(tmp_path)
    vgg = VGGFeatures("vgg16", ["relu2_2"])
    with pytest.raises(ConfigError, match=match) as excinfo:
        load_vgg_weights(vgg, "vgg16", tmp_path / name)
    assert one_line_error(excinfo).startswith("perceptual_weights: ")
    with pytest.raises(ConfigError, match=match):
        PerceptualLoss("vgg16", ["relu2_2"], weights=tmp_path / name)


def test_find_weights(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"perceptual_weights: .*nowhere.pth does not exist .*" + HUB_URL) as ei:
        find_weights("vgg16", str(tmp_path / "nowhere.pth"))
    one_line_error(ei)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    with pytest.raises(ConfigError, match=rf"{HUB_FILE} not found in {re.escape(str(hub / 'checkpoints'))} "
                                          rf"\(.*{HUB_URL}\).*"
                                          r"set perceptual_weights or pass --download-perceptual-weights") as ei:
        find_weights("vgg16", None)
    one_line_error(ei)
    with pytest.raises(ConfigError, match="vgg19-dcbb9e9d.pth not found"):
        find_weights("vgg19", None)
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / HUB_FILE).write_bytes(b"")
    assert find_weights("vgg16", None) == hub / "checkpoints" / HUB_FILE
    assert find_weights("vgg16", str(tmp_path / "hub/checkpoints" / HUB_FILE)).is_file()
    with pytest.raises(ConfigError, match="unknown network"):
        find_weights("vgg13", None)


def test_download_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConfigError, match=rf"could not download {HUB_URL} to .*{HUB_FILE} \(URLError") as ei:
        download_weights("vgg16")
    one_line_error(ei)
    with pytest.raises(ConfigError, match="could not download"):
        PerceptualLoss(download=True)

    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        torch.save(VGGFeatures("vgg16", ["relu1_2"]).state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    loss = PerceptualLoss("vgg16", ["relu1_2"], download=True)
    assert loss.pretrained and calls == [(HUB_URL, "397923af")]
    assert download_weights("vgg16") == tmp_path / "hub/checkpoints" / HUB_FILE and len(calls) == 1  # kept


# --- the loss ----------------------------------------------------------------------------------------------

def test_loss_values_and_definition(images):
    x_hat, x = images
    loss = PerceptualLoss("vgg16", ["relu1_2", "relu2_2", "relu3_3"], random_init=True)
    assert not loss.pretrained
    zero = loss(x, x.clone())
    assert zero.shape == (2,) and zero.dtype == torch.float32 and torch.equal(zero, torch.zeros(2))
    got = loss(x_hat, x)
    want = sum(((a - b) ** 2).mean(dim=(1, 2, 3)) for a, b in zip(
        reference_features(loss.vgg.state_dict(), "vgg16", loss.layers, x_hat),
        reference_features(loss.vgg.state_dict(), "vgg16", loss.layers, x)))
    assert (got > 0).all()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    one = loss(torch.cat([x[:1], x_hat[1:]]), x)  # per image: only the changed one is > 0
    assert one[0] == 0 and one[1] > 0


def test_random_init_is_seeded_and_leaves_the_global_rng(images):
    state = torch.random.get_rng_state()
    a = PerceptualLoss("vgg16", ["relu2_2"], random_init=True)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = PerceptualLoss("vgg16", ["relu2_2"], random_init=True)
    assert torch.equal(a(*images), b(*images))


def test_gradients_reach_x_hat_only(images):
    loss = PerceptualLoss("vgg19", ["relu1_1", "relu2_1", "relu3_1"], random_init=True)
    x_hat = images[0].clone().requires_grad_(True)
    x = images[1].clone().requires_grad_(True)
    loss(x_hat, x).sum().backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    assert x.grad is None
    params = list(loss.parameters())
    assert params and all(not p.requires_grad and p.grad is None for p in params)


def test_always_in_eval_mode():
    loss = PerceptualLoss("vgg16", ["relu1_2"], random_init=True)
    parent = torch.nn.ModuleDict({"loss": loss})
    for module in (loss, parent):
        module.train()
        assert not loss.training and not any(m.training for m in loss.modules())
    assert loss.train() is loss


def test_autocast_bf16_and_channels_last(images):
    x_hat, x = (im[..., :16, :16].contiguous() for im in images)  # CPU bf16 convs are slow: a small image
    loss = PerceptualLoss("vgg16", ["relu1_2", "relu2_2"], random_init=True)
    want = loss(x_hat, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(x_hat.requires_grad_(True), x)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=0.1, atol=0.0)
    got.sum().backward()
    assert torch.isfinite(x_hat.grad).all()
    cl = loss(x_hat.detach().contiguous(memory_format=torch.channels_last),
              x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, want, rtol=1e-5, atol=1e-6)
