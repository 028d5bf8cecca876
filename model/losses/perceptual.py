"""Perceptual loss: VGG feature matching, as in the Deep Feature Consistent VAE.

Per image b: ``L_b = Σ_l mean_{c,h,w} (φ_l(x̂)_b − φ_l(x)_b)²``, φ_l the output of layer l of an
ImageNet-trained VGG's ``features``, inputs in [0, 1] normalised with ImageNet's mean and std as
torchvision's release expects. Hou et al. 2017, "Deep Feature Consistent Variational Autoencoder" (VGG19
relu1_1, relu2_1, relu3_1 for their VAE-123); Johnson et al. 2016, "Perceptual Losses for Real-Time Style
Transfer and Super-Resolution" (VGG16, our default's relu1_2, relu2_2, relu3_3). A mean per layer keeps
shallow layers (many positions) and deep ones (many channels) on one scale.

The network is written here with torchvision's layer indices, so torchvision's published files load
without torchvision. The weights must be provided — ``perceptual_weights`` or torch.hub's cache — and
are never downloaded silently (training machines often have no network; vgg16's file is 528 MB):
``--download-perceptual-weights`` asks for it. ``random_init=True``: a seeded random VGG, for benchmarks.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Collection, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError

#: torchvision's ``features`` layouts: an int is a 3×3 conv (padding 1) with that many outputs + ReLU,
#: "M" a 2×2 max-pool. vgg16 is cfg "D", vgg19 cfg "E" (Simonyan & Zisserman 2015).
VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
#: torchvision's release of each network: (file name, URL). The hex part is the file's sha256 prefix.
WEIGHT_FILES = {name: (f"{name}-{sha}.pth", f"https://download.pytorch.org/models/{name}-{sha}.pth")
                for name, sha in (("vgg16", "397923af"), ("vgg19", "dcbb9e9d"))}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _layer_names(cfg: Sequence[int | str]) -> dict[str, int]:
    names, i, block, k = {}, 0, 1, 0
    for v in cfg:
        if v == "M":
            names[f"pool{block}"] = i
            i, block, k = i + 1, block + 1, 0
        else:
            k += 1
            names[f"conv{block}_{k}"], names[f"relu{block}_{k}"] = i, i + 1
            i += 2
    return names


#: Per network: layer name (conv1_1, relu1_1, …, pool5) → index in ``features``.
VGG_LAYERS: dict[str, dict[str, int]] = {name: _layer_names(cfg) for name, cfg in VGG_CONFIGS.items()}


def _closest(word: str, options: Sequence[str]) -> str | None:
    # Ties broken by the longer common prefix: 'relu2_3' should suggest 'relu2_2', not 'relu3_3'.
    scored = [(difflib.SequenceMatcher(None, word, o).ratio(), len(os.path.commonprefix([word, o])), o)
              for o in options]
    best = max(scored, default=None)
    return best[2] if best and best[0] >= 0.6 else None


def _check_network(network: str) -> None:
    if network not in VGG_LAYERS:
        hint = _closest(str(network), list(VGG_LAYERS))
        raise ConfigError(f"perceptual_network: unknown network {network!r} "
                          f"({f'did you mean {hint!r}? ' if hint else ''}choose one of {', '.join(VGG_LAYERS)})")


def check_layers(network: str, layers: Sequence[str]) -> None:
    """One-line ConfigError for an unknown network, an unknown or repeated layer, or no layer."""
    _check_network(network)
    if isinstance(layers, str) or not layers:
        raise ConfigError(f"perceptual_layers: expected a non-empty list of layer names, got {layers!r}")
    names = VGG_LAYERS[network]
    seen: set[str] = set()
    for layer in layers:
        if layer not in names:
            hint = _closest(str(layer), list(names))
            relus = [n for n in names if n.startswith("relu")]
            raise ConfigError(f"perceptual_layers: unknown {network} layer {layer!r} "
                              f"({f'did you mean {hint!r}? ' if hint else ''}{network} has {relus[0]} … "
                              f"{relus[-1]}, conv1_1 … conv{relus[-1][4:]}, pool1 … pool5)")
        if layer in seen:
            raise ConfigError(f"perceptual_layers: {network} layer {layer!r} is listed twice")
        seen.add(layer)


class VGGFeatures(nn.Module):
    """VGG ``features`` up to the deepest asked layer; forward(x in [0, 1]) → the asked feature maps.

    State dict keys are torchvision's (``features.{i}.weight``/``.bias``); the normalisation constants
    are non-persistent buffers so they follow ``.to(device)`` without entering the state dict.
    """

    def __init__(self, network: str = "vgg16", layers: Sequence[str] = ("relu1_2", "relu2_2", "relu3_3")) -> None:
        super().__init__()
        layers = tuple(layers.split(",")) if isinstance(layers, str) else tuple(layers)
        check_layers(network, layers)
        self.network, self.layers = network, layers
        self.indices = [VGG_LAYERS[network][name] for name in layers]
        modules: list[nn.Module] = []
        channels = 3
        for v in VGG_CONFIGS[network]:
            if len(modules) > max(self.indices):
                break
            if v == "M":
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                # Not inplace (torchvision's is): an asked conv output must survive the ReLU after it.
                modules += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU()]
                channels = int(v)
        self.features = nn.Sequential(*modules[:max(self.indices) + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.mean) / self.std
        found: dict[int, torch.Tensor] = {}
        for i, module in enumerate(self.features):
            h = module(h)
            if i in self.indices:
                found[i] = h
        return [found[i] for i in self.indices]


def _reset_random(features: VGGFeatures, seed: int = 0) -> None:
    # torchvision's VGG init (Kaiming, fan_out) keeps deep activations alive, unlike nn.Conv2d's default.
    torch.manual_seed(seed)
    for m in features.features:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)


def _published(network: str) -> str:
    return f"torchvision's ImageNet {network} weights, published at {WEIGHT_FILES[network][1]}"


def find_weights(network: str, path: str | os.PathLike | None) -> Path:
    """``path`` if given (it must exist), else torchvision's file in torch.hub's cache; ConfigError if absent."""
    _check_network(network)
    if path is not None:
        given = Path(path).expanduser()
        if not given.is_file():
            raise ConfigError(f"perceptual_weights: {given} does not exist (expected {_published(network)})")
        return given
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    found = folder / WEIGHT_FILES[network][0]
    if not found.is_file():
        raise ConfigError(f"perceptual_weights: {found.name} not found in {folder} ({_published(network)}): "
                          f"set perceptual_weights or pass --download-perceptual-weights")
    return found


def download_weights(network: str) -> Path:
    """Explicit download of torchvision's file into torch.hub's cache (kept if already there)."""
    _check_network(network)
    name, url = WEIGHT_FILES[network]
    dst = Path(torch.hub.get_dir()) / "checkpoints" / name
    if dst.is_file():
        return dst
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        # Writes a temporary file and renames it once the sha256 prefix in the name matched: an
        # interrupted download never leaves a half file under the final name.
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=name.rsplit("-", 1)[1].split(".")[0])
    except Exception as err:
        why = (str(err).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"perceptual_weights: could not download {url} to {dst} ({type(err).__name__}: {why}); "
                          f"download it by hand and set perceptual_weights") from None
    return dst


def _key_order(key: object) -> tuple:
    parts = str(key).split(".")
    numbered = parts[0] == "features" and len(parts) > 1 and parts[1].isdigit()
    return (0, int(parts[1]), parts[-1] != "weight") if numbered else (1, 0, str(key))


def _layout_problem(state: Mapping, network: str, needed: Collection[str]) -> str | None:
    """Why ``state``'s ``features.*`` entries are not (part of) ``network``'s layout, or None.

    A file may hold fewer layers than the network (only those ``needed`` must be there), so a file
    trimmed to the layers in use loads; any ``features.*`` key or shape of another layout is refused,
    which is what tells a vgg19 file from a vgg16 one even when only shallow layers are used."""
    with torch.device("meta"):  # the whole network's shapes, without allocating or initialising it
        shapes = {k: tuple(v.shape) for k, v in VGGFeatures(network, ["pool5"]).state_dict().items()}
    for key in sorted(state, key=_key_order):
        value = state[key]
        if not isinstance(key, str) or not key.startswith(("features.", "classifier.")):
            return f"unexpected key {key!r}"
        if key.startswith("features."):
            if key not in shapes:
                return f"unexpected key {key!r}"
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shapes[key]:
                got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                return f"{key} has shape {got}, expected {list(shapes[key])}"
    missing = sorted((k for k in needed if k not in state), key=_key_order)
    return f"missing key {missing[0]!r}" if missing else None


def load_vgg_weights(features: VGGFeatures, network: str, path: str | os.PathLike) -> None:
    """Load torchvision's state dict (``features.*`` used, ``classifier.*`` ignored); ConfigError otherwise."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # damaged/truncated file, a pickle of arbitrary objects, not a torch file
        why = (str(err).strip().splitlines() or [""])[0][:160]
        raise ConfigError(f"perceptual_weights: cannot read {path} as a weights file ({type(err).__name__}: {why}); "
                          f"expected {_published(network)}") from None
    if not isinstance(state, Mapping):
        raise ConfigError(f"perceptual_weights: {path} holds a {type(state).__name__}, not a state dict "
                          f"(expected {_published(network)})")
    needed = list(features.state_dict())
    problem = _layout_problem(state, network, needed)
    if problem:
        # Name the other network only when the file's layers contradict this one's, not when some are missing.
        fits = [n for n in VGG_CONFIGS if n != network and _layout_problem(state, network, {})
                and _layout_problem(state, n, {}) is None and any(str(k).startswith("features.") for k in state)]
        hint = f"; it looks like {fits[0]}'s: set perceptual_network to {fits[0]}" if fits else ""
        raise ConfigError(f"perceptual_weights: {path} is not torchvision's {network} weights ({problem}){hint}")
    features.load_state_dict({k: state[k] for k in needed})  # strict: every tensor of ``features`` set


class PerceptualLoss(nn.Module):
    """Per-image VGG feature-matching loss [B] (fp32); frozen, always in eval mode. See the module doc."""

    def __init__(self, network: str = "vgg16", layers: Sequence[str] = ("relu1_2", "relu2_2", "relu3_3"),
                 weights: str | os.PathLike | None = None, *, download: bool = False,
                 random_init: bool = False) -> None:
        """``weights``: a file, else torch.hub's cache; ``download``: fetch into that cache when no file is
        given; ``random_init``: no file at all, a seeded random VGG (benchmarks; ``pretrained`` False)."""
        super().__init__()
        # A forked RNG: the global stream (the VAE's own init) is the same with or without this loss.
        with torch.random.fork_rng(devices=[]):
            self.vgg = VGGFeatures(network, layers)
            if random_init:
                _reset_random(self.vgg)
        self.network, self.layers = network, self.vgg.layers
        self.pretrained = not random_init
        if not random_init:
            path = download_weights(network) if download and weights is None else find_weights(network, weights)
            load_vgg_weights(self.vgg, network, path)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        # A fixed feature extractor: the trainer's model.train() must not switch it.
        return super().train(False)

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x_hat, x: B×3×H×W in [0, 1] → [B] fp32; gradients flow to x_hat only."""
        if x_hat.shape != x.shape:
            raise ValueError(f"perceptual loss: x_hat {tuple(x_hat.shape)} and x {tuple(x.shape)} differ")
        with torch.no_grad():
            target = self.vgg(x)
        # Differences in fp32 even under autocast: bf16 features lose small differences to rounding.
        terms = [F.mse_loss(p.float(), t.float(), reduction="none").mean(dim=(1, 2, 3))
                 for p, t in zip(self.vgg(x_hat), target)]
        return torch.stack(terms).sum(0)
