"""config.json + ``--key value`` overrides → one validated, merged config dict.

config.json holds every hyper-parameter; this module holds what each key means and which values
are allowed (:data:`SCHEMA`), so a typo or a bad value ends the run with one ``ConfigError`` line
before any work starts. The merged dict is what train.py saves in the run directory.
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from kernels.impl import IMPLS
from pipeline.errors import ConfigError
from pipeline.cache import CACHES
from pipeline.loader import BACKENDS

#: Where the defaults live: the project root, beside train.py.
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config.json"

_AUTO = "auto"


_DATA, _MODEL, _LOSS, _OPTIMISATION, _RUNTIME, _LOGGING, _ARTIFACTS = (
    "data", "model", "loss", "optimisation", "runtime", "logging", "artifacts")
#: The groups of ``train.py -h``, in the order it shows them (each key names its group), with their titles.
GROUPS = {
    _DATA: "data: where the images come from and how they are loaded",
    _MODEL: "model: the network (a resumed run refuses changes to these)",
    _LOSS: "loss: reconstruction term, KL weight and schedule, added terms",
    _OPTIMISATION: "optimisation: steps, batches, AdamW, learning rate, seed",
    _RUNTIME: "runtime: precision, compilation, determinism, DDP",
    _LOGGING: "run directory, logging and checkpoints",
    _ARTIFACTS: "pictures and the evaluation every run ends with",
}


@dataclass(frozen=True)
class Key:
    """One config key: its value kind, help text, an optional check (``must``: the limit it enforces, as
    messages and ``-h`` say it), its group in ``train.py -h`` and the placeholder ``-h`` shows for its value."""

    kind: str  # int | float | bool | str | ints | floats | strs | auto_bool
    help: str
    check: Callable[[Any], bool] | None = None
    must: str = ""
    nullable: bool = False
    choices: tuple[str, ...] = ()
    group: str = ""
    metavar: str = ""


def _pos(x: Any) -> bool:
    return x > 0


def _nonneg(x: Any) -> bool:
    return x >= 0


SCHEMA: dict[str, Key] = {
    # run + data
    "name": Key("str", "run name: the run directory is OUT_DIR/NAME unless --out is given", group=_LOGGING,
                metavar="NAME"),
    "out_dir": Key("str", "parent folder of run directories", group=_LOGGING, metavar="DIR"),
    "data": Key("str", "preshard's output folder (manifest.json + split folders); null: the synthetic default, "
                       "drawn and sharded on first use", nullable=True, group=_DATA, metavar="DIR"),
    "synthetic_dir": Key("str", "where the default run draws its synthetic CelebA-layout set", group=_DATA,
                         metavar="DIR"),
    "synthetic_shards": Key("str", "where the default run preshards that set", group=_DATA, metavar="DIR"),
    "synthetic_images": Key("int", "faces in the synthetic set (another count redraws it)", _pos, "> 0",
                            group=_DATA),
    "seed": Key("int", "seed for weights, noise, sampling, shuffling and the synthetic set", _nonneg, ">= 0",
                group=_OPTIMISATION),
    # model
    "image_size": Key("int", "side of the square images in pixels; a multiple of 2**len(channels)", _pos, "> 0",
                      group=_MODEL),
    "channels": Key("ints", "encoder widths, one stride-2 stage each (the decoder mirrors them)",
                    lambda v: len(v) > 0 and all(c > 0 for c in v), "a non-empty list of positive ints",
                    group=_MODEL),
    "latent_dim": Key("int", "size of z", _pos, "> 0", group=_MODEL),
    "kernel_size": Key("int", "convolution kernel size", lambda v: 2 <= v <= 7, "in 2..7", group=_MODEL),
    "res_blocks": Key("int", "residual blocks per stage (0 = the seed's plain network)", _nonneg, ">= 0",
                      group=_MODEL),
    # loss
    "beta": Key("float", "weight of the KL term (after warm-up)", _nonneg, ">= 0", group=_LOSS),
    "kl_warmup_steps": Key("int", "linear schedule: steps over which β ramps from 0 (0 = no ramp)", _nonneg, ">= 0",
                           group=_LOSS),
    "loss_impl": Key("str", "SSE + KL kernels: triton (fused; on a CPU only in the interpreter, "
                            "TRITON_INTERPRET=1), torch (the reference), auto (triton where it runs)",
                     choices=IMPLS, group=_LOSS),
    "kl_schedule": Key("str", "β over training: linear (warm-up over kl_warmup_steps), cyclical (Fu et al. 2019: "
                              "kl_cycles ramps, each rising over kl_ratio of its cycle), constant",
                       choices=("linear", "cyclical", "constant"), group=_LOSS),
    "kl_cycles": Key("int", "cyclical schedule: number of cycles over the run", _pos, "> 0", group=_LOSS),
    "kl_ratio": Key("float", "cyclical schedule: share of each cycle over which β rises", lambda v: 0 < v <= 1,
                    "in (0, 1]", group=_LOSS),
    "free_bits": Key("float", "per-dimension KL floor λ in nats (Kingma et al. 2016; 0 = off)", _nonneg, ">= 0",
                     group=_LOSS),
    "recon": Key("str", "reconstruction term: sse (the seed's), gaussian_learned_sigma (σ-VAE, one learned σ), "
                        "gaussian_optimal_sigma (σ² = the batch's MSE)",
                 choices=("sse", "gaussian_learned_sigma", "gaussian_optimal_sigma"), group=_LOSS),
    "perceptual_weight": Key("float", "weight of the VGG feature-matching loss (0 = off)", _nonneg, ">= 0",
                             group=_LOSS),
    "perceptual_network": Key("str", "network of the perceptual loss", choices=("vgg16", "vgg19"), group=_LOSS),
    "perceptual_layers": Key("strs", "VGG layers whose features are matched: reluA_B, convA_B or poolA of the network",
                             lambda v: len(v) > 0, "a non-empty list of layer names", group=_LOSS,
                             metavar="LAYER,..."),
    "perceptual_weights": Key("str", "torchvision's VGG weights file (null: look in torch.hub's cache; \"random\": an "
                                     "untrained VGG, for benchmarks only)", nullable=True, group=_LOSS,
                              metavar="FILE"),
    "ssim_weight": Key("float", "weight of the (MS-)SSIM loss, 1 − SSIM per image (0 = off)", _nonneg, ">= 0",
                       group=_LOSS),
    "ssim_scales": Key("int", "1 = SSIM, more = MS-SSIM over that many scales (Wang et al. 2003 weights); every "
                              "scale must hold the 11×11 window: 64×64 allows 3, 128×128 4, 176×176 and up 5",
                       lambda v: 1 <= v <= 5, "in 1..5", group=_LOSS),
    # optimisation
    "epochs": Key("int", "passes over the training split (with train_seconds set: only when given explicitly)",
                  _pos, "> 0", group=_OPTIMISATION),
    "steps": Key("int", "optimisation steps in all, the last epoch cut short where they end (null: epochs × "
                        "steps per epoch); a train_seconds run records the steps it resolved here", _pos, "> 0",
                 nullable=True, group=_OPTIMISATION),
    "train_seconds": Key("float", "time budget for training, validation and the closing test: the run's step, "
                                  "timed on its device before training, turns it into steps (null: epochs as "
                                  "given; an explicit --epochs or --steps wins)", lambda v: 0 < v <= 31_536_000,
                         "> 0 and at most a year (31,536,000)", nullable=True,
                         group=_OPTIMISATION, metavar="S"),
    "batch_size": Key("int", "training batch per process (global batch = this × world size)", _pos, "> 0",
                      group=_OPTIMISATION),
    "eval_batch_size": Key("int", "batch for validation, test and the closing evaluation", _pos, "> 0",
                           group=_OPTIMISATION),
    "lr": Key("float", "peak AdamW learning rate (for the global batch)", _pos, "> 0", group=_OPTIMISATION),
    "weight_decay": Key("float", "AdamW weight decay", _nonneg, ">= 0", group=_OPTIMISATION),
    "adam_betas": Key("floats", "AdamW betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v),
                      "two numbers in [0, 1)", group=_OPTIMISATION, metavar="B1,B2"),
    "grad_clip": Key("float", "max gradient norm (0 = no clipping)", _nonneg, ">= 0", group=_OPTIMISATION),
    "lr_schedule": Key("str", "learning rate after the linear warm-up: constant, cosine (decay to min_lr_ratio "
                              "over the run), wsd (constant, then a linear decay to min_lr_ratio over the last "
                              "lr_decay_ratio of the run)", choices=("constant", "cosine", "wsd"), group=_OPTIMISATION),
    "lr_decay_ratio": Key("float", "wsd: the share of the steps after the warm-up that the final linear decay takes",
                          lambda v: 0 < v <= 1, "in (0, 1]", group=_OPTIMISATION),
    "warmup_steps": Key("int", "linear learning-rate warm-up steps", _nonneg, ">= 0", group=_OPTIMISATION),
    "min_lr_ratio": Key("float", "where cosine and wsd end, as a fraction of lr", lambda v: 0 <= v <= 1, "in [0, 1]",
                        group=_OPTIMISATION),
    # precision + speed
    "amp": Key("str", "autocast dtype: auto (bf16 on CUDA, fp16 where it lacks bf16; on a CPU as the probe "
                      "finds), bf16, fp16 (CUDA only, with a GradScaler), off (fp32)",
               choices=("auto", "bf16", "fp16", "off"), group=_RUNTIME),
    "channels_last": Key("auto_bool", "NHWC memory format (auto: on CUDA; on a CPU as the probe finds)",
                         group=_RUNTIME),
    "compile": Key("auto_bool", "torch.compile the step (network and loss): auto (on CUDA; on CPU when the run is "
                                "long enough to repay it)", group=_RUNTIME),
    "compile_mode": Key("str", "torch.compile mode of the step: auto (reduce-overhead on CUDA, default on CPU), "
                               "default, reduce-overhead (CUDA graphs), max-autotune, max-autotune-no-cudagraphs",
                        choices=("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                        group=_RUNTIME),
    "sync_batchnorm": Key("bool", "SyncBatchNorm under DDP (CUDA only; per-rank BatchNorm otherwise)", group=_RUNTIME),
    "deterministic": Key("bool", "deterministic algorithms only (torch.use_deterministic_algorithms; on CUDA also "
                                 "CUBLAS_WORKSPACE_CONFIG=:4096:8 and no cudnn_benchmark): bit-exact resumes, slower",
                         group=_RUNTIME),
    "cudnn_benchmark": Key("bool", "CUDA: let cuDNN time its convolution algorithms on the first step and keep the "
                                   "fastest (the batch shape is fixed); off gives deterministic algorithms a chance",
                           group=_RUNTIME),
    # loader
    "backend": Key("str", "loader: auto (DALI where it imports, else webdataset + PIL), dali (GPU decode on CUDA), "
                          "dali-gpu, dali-cpu, webdataset", choices=BACKENDS, group=_DATA),
    "num_threads": Key("int", "loader threads (DALI) or worker processes (webdataset); null: the loader's default",
                       _pos, "> 0", nullable=True, group=_DATA),
    "hw_decoder_load": Key("float", "DALI-GPU: share of JPEGs for the hardware decoder (null = DALI's 0.65)",
                           lambda v: 0 <= v <= 1, "in [0, 1]", nullable=True, group=_DATA),
    "hybrid_huffman_threshold": Key("int", "DALI-GPU: images above this many pixels get their Huffman stage on the "
                                           "GPU (null = DALI's 1,000,000, above every CelebA image)",
                                    _nonneg, ">= 0", nullable=True, group=_DATA),
    "cache": Key("str", "decoded-image cache after the first epoch: auto (GPU memory on CUDA, else RAM, when it "
                        "fits), host, device, none", choices=CACHES, group=_DATA),
    "crop": Key("int", "centre square cropped before resizing (148: CelebA's aligned 178×218; null = the whole "
                       "image, resized without keeping its aspect ratio)", _pos, "> 0", nullable=True, group=_DATA),
    "flip": Key("bool", "random horizontal flips for training", group=_DATA),
    # logging + checkpoints
    "log_every_s": Key("float", "seconds between metric logs, never closer than 10 steps (each log reads the device "
                                "once; the logged values are means over every step since the last log)", _pos, "> 0",
                       group=_LOGGING),
    "log_interval": Key("int", "steps between metric logs instead of log_every_s (null = by time)", _pos, "> 0",
                        nullable=True, group=_LOGGING),
    "checkpoint_every_s": Key("float", "seconds between checkpoints, written in the background (0 = only at the "
                                       "end and on a stop)", _nonneg, ">= 0", group=_LOGGING),
    "checkpoint_interval": Key("int", "steps between checkpoints, besides checkpoint_every_s (0 = none by steps)",
                               _nonneg, ">= 0", group=_LOGGING),
    "stop_at_step": Key("int", "end the run early at this global step (the schedules still span all the steps)",
                        _pos, "> 0", nullable=True, group=_LOGGING),
    "tensorboard": Key("bool", "also write TensorBoard events to RUN/tensorboard/ (needs the tensorboard package)",
                       group=_LOGGING),
    # artifacts
    "n_reconstructions": Key("int", "test images in reconstructions.png", _pos, "> 0", group=_ARTIFACTS),
    "n_samples": Key("int", "images in samples.png", _pos, "> 0", group=_ARTIFACTS),
    "n_interpolation": Key("int", "steps in interpolation.png", lambda v: v >= 2, ">= 2", group=_ARTIFACTS),
    "n_failures": Key("int", "worst test reconstructions in failures.png (and per mode in failure_modes.png)",
                      _pos, "> 0", group=_ARTIFACTS),
    # the evaluation every run ends with (python -m model evaluate has the full one)
    "eval_iwae_k": Key("int", "importance samples per image for the test IWAE bound", _pos, "> 0",
                       group=_ARTIFACTS),
    "eval_iwae_images": Key("int", "test images the IWAE bound is estimated on (0 = none)", _nonneg, ">= 0",
                            group=_ARTIFACTS),
    "eval_samples": Key("int", "prior samples (and test images) for the diversity ratio (0 = none)",
                        lambda v: v == 0 or v >= 2, "0 (none) or >= 2 (the ratio compares pairs)", group=_ARTIFACTS),
}

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(key: str, value: Any) -> Any:
    """Turn a JSON or command-line value into the key's kind, or raise ConfigError."""
    spec = SCHEMA[key]
    # "none" is null, except where it is one of the key's own choices (cache "none")
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none") and value not in spec.choices):
        if spec.nullable:
            return None
        raise ConfigError(f"config key {key!r} may not be null ({spec.help})")
    bad = ConfigError(f"config key {key!r}: {value!r} is not a valid {spec.kind.replace('_', ' ')} ({spec.help})")
    kind = spec.kind
    try:
        if kind in ("bool", "auto_bool"):
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if kind == "auto_bool" and text == _AUTO:
                return _AUTO
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise bad
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise bad
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise bad
            return _finite(key, float(value))
        if kind == "str":
            if not isinstance(value, str):
                raise bad
            return value
        if kind == "strs":
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in items):
                raise bad
            return [v.strip() for v in items]
        if kind in ("ints", "floats"):
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise bad
            if kind == "ints":
                return [int(str(v).strip()) for v in items]
            return [_finite(key, float(str(v).strip())) for v in items]
    except (TypeError, ValueError):
        raise bad from None
    raise AssertionError(f"unknown kind {kind}")


def _finite(key: str, value: float) -> float:
    # Every float key is a weight, a rate, a ratio or a floor: inf and nan mean nothing for any of them
    # (0 is how a term or a clip is switched off), and would only surface later as a NaN loss.
    if not math.isfinite(value):
        raise ConfigError(f"config key {key!r} must be a finite number, got {value!r} ({SCHEMA[key].help})")
    return value


def _not_a_choice(key: str, value: str, choices: Sequence[str]) -> ConfigError:
    return ConfigError(f"config key {key!r}: {value!r} is not one of {', '.join(choices)}{_closest(value, choices)}")


def _unknown(key: str) -> ConfigError:
    return ConfigError(f"unknown config key {key!r}{_closest(key, SCHEMA)}")


def _closest(name: str, known: Sequence[str]) -> str:
    """" (did you mean 'X'?)" for the closest of ``known``, or "" when none is close."""
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Coerce and check every key; return a new dict in schema order. Raises ConfigError."""
    for key in cfg:
        if key not in SCHEMA:
            raise _unknown(key)
    missing = [k for k in SCHEMA if k not in cfg]
    if missing:
        raise ConfigError(f"config is missing key(s) {', '.join(missing)}")
    out: dict[str, Any] = {}
    for key, spec in SCHEMA.items():
        value = _coerce(key, cfg[key])
        if value is not None and value != _AUTO:
            if spec.choices and value not in spec.choices:
                raise _not_a_choice(key, value, spec.choices)
            if spec.check and not spec.check(value):
                raise ConfigError(f"config key {key!r} must be {spec.must}, got {value!r}")
        out[key] = value
    # Checked whatever the weights: a layer typo or too many scales is refused when written, not when the
    # term is first switched on (the messages are the losses' own).
    from model.losses.perceptual import check_layers
    from model.losses.structural import check_scales

    check_layers(out["perceptual_network"], out["perceptual_layers"])
    if out["ssim_weight"] or out["ssim_scales"] > 1:
        check_scales(out["ssim_scales"], out["image_size"])
    from model.vae import VAEConfig

    try:
        VAEConfig.from_dict(out).validate()
    except ValueError as err:
        raise ConfigError(f"config: {err}") from None
    return out


def read_config_file(path: str | Path | None = None) -> dict[str, Any]:
    """The raw config dict: the project's config.json, with the keys of ``path`` layered over it.

    ``path`` may hold any subset of the keys (e.g. ``configs/celeba128.json`` holds only what differs
    from the defaults); the keys it lacks keep config.json's values; keys starting with "#" are comments. A key the schema does not know is
    refused here, naming the file and the closest key. No ``path`` (or config.json itself): the defaults.
    """

    a_config = "a config is a JSON object of config keys, such as configs/celeba128.json"
    max_bytes = 1_000_000  # far above any config (config.json is about 5 kB), far below what takes long to read

    def read(file: Path) -> dict[str, Any]:
        # Every way a file can fail to be a config gets its own line: what the file is, and what a config is.
        if not file.exists():
            raise ConfigError(f"config file {file} does not exist")
        if file.is_dir():
            raise ConfigError(f"config file {file} is a directory")
        if not file.is_file():  # a pipe or a device (/dev/zero, /dev/stdin) would be read forever
            raise ConfigError(f"config file {file} is not a regular file; {a_config}")
        if file.stat().st_size > max_bytes:
            raise ConfigError(f"config file {file} has {file.stat().st_size:,} bytes, more than a config's "
                              f"{max_bytes:,}: is it the right file? {a_config}")
        raw = file.read_bytes()
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise ConfigError(f"config file {file} is UTF-16 text; save it as UTF-8 ({a_config})")
        if raw.startswith(b"PK\x03\x04"):
            raise ConfigError(f"config file {file} is a zip archive (a checkpoint?), not JSON; {a_config}")
        if b"\x00" in raw:  # JSON text never holds a NUL byte; UTF-16 without its mark and binary files do
            raise ConfigError(f"config file {file} holds NUL bytes: a binary file, or UTF-16 text (save it as "
                              f"UTF-8); {a_config}")
        try:
            text = raw.decode("utf-8-sig")  # a byte-order mark, as some Windows editors write, is fine
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file {file} is not UTF-8 text (byte {err.start} is {raw[err.start]:#04x}): "
                              f"is it the right file? {a_config}") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"config file {file} is not valid JSON: {err}") from None
        except RecursionError:
            raise ConfigError(f"config file {file} is nested too deeply to be a config; {a_config}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"config file {file} must hold a JSON object")
        return doc

    defaults = read(DEFAULT_CONFIG)
    if not path or Path(path).resolve() == DEFAULT_CONFIG:
        return defaults
    layer = read(Path(path))
    # Keys starting with "#" are comments: JSON has none, and a preset says why it holds its values.
    layer = {k: v for k, v in layer.items() if not k.startswith("#")}
    for key in layer:
        if key not in SCHEMA:
            raise ConfigError(f"config file {path}: {_unknown(key)}")
    return {**defaults, **layer}


def layered_keys(cfg: dict[str, Any]) -> set[str]:
    """The keys whose value in ``cfg`` (read by :func:`read_config_file`) differs from config.json's: what a
    --config file set. A full copy of config.json sets nothing."""
    defaults = read_config_file(None)
    return {k for k, v in cfg.items() if v != defaults.get(k)}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ConfigErrors (one line, exit 2 through cli_entry)."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(message)


_METAVARS = {"int": "N", "float": "X", "bool": "{true,false}", "auto_bool": "{auto,true,false}",
             "ints": "N,N,...", "floats": "X,X,...", "strs": "NAME,...", "str": "TEXT"}


def _shown(value: Any) -> str:
    """A config value as it is typed on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(_shown(v) for v in value)
    return str(value)


def _key_help(key: str, default: Any) -> tuple[str, str]:
    """(placeholder, help line) of ``--key`` in ``train.py -h``: what it does, the limit the code enforces,
    what null means where it is allowed, and its default in config.json."""
    spec = SCHEMA[key]
    metavar = spec.metavar or ("{" + ",".join(spec.choices) + "}" if spec.choices else _METAVARS[spec.kind])
    if spec.nullable:
        metavar += "|null"
    limit = f"; {spec.must}" if spec.must else ""
    return metavar, f"{spec.help}{limit} (config.json: {_shown(default)})".replace("%", "%%")


def build_parser(prog: str | None = None, description: str | None = None,
                 parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The CLI: run options plus one ``--key value`` option per config key, grouped as :data:`GROUPS` says,
    each shown with config.json's value. ``--some-key`` is accepted for ``--some_key`` (not listed twice)."""
    p = parser or _Parser(prog=prog, description=description)
    if not isinstance(p, _Parser):
        p.error = _Parser.error.__get__(p)  # type: ignore[method-assign]
    p.usage = p.usage or "%(prog)s [-h] [--config FILE] [--KEY VALUE ...] [options]"  # not 60 keys in a row
    p.add_argument("--config", metavar="FILE",
                   help="config JSON layered over the project's config.json (keys it lacks keep their defaults), "
                        "e.g. configs/gpu.json or configs/celeba128.json")
    defaults = read_config_file()
    sections = {g: p.add_argument_group(title) for g, title in GROUPS.items()}
    sections[_DATA].description = "config keys override config.json: --KEY VALUE (or --KEY=VALUE); lists as " \
                                  "32,64,128,256; null for none; --some-key works as --some_key"
    for key, spec in SCHEMA.items():
        metavar, text = _key_help(key, defaults[key])
        sections[spec.group].add_argument(f"--{key}", dest=key, default=argparse.SUPPRESS, metavar=metavar,
                                          help=text)
        if "_" in key:
            p.add_argument(f"--{key.replace('_', '-')}", dest=key, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def parse_overrides(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[argparse.Namespace, dict]:
    """Parse argv; return (namespace, {config key: raw value} for keys given on the command line)."""
    ns, rest = parser.parse_known_args(argv)
    if rest:
        first = rest[0]
        if first.startswith("--"):
            raise _unknown(first[2:].split("=")[0].replace("-", "_"))
        raise ConfigError(f"unexpected argument {first!r}")
    overrides = {k: v for k, v in vars(ns).items() if k in SCHEMA}
    return ns, overrides


def load_config(argv: Sequence[str] | None = None, *, parser: argparse.ArgumentParser | None = None) -> dict[str, Any]:
    """config file (``--config`` or the default) + command-line overrides, validated."""
    parser = build_parser(parser=parser)
    ns, overrides = parse_overrides(parser, argv)
    return validate({**read_config_file(ns.config), **overrides})


def model_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Model keys whose values differ between a checkpoint's config and the current one."""
    from model.vae import MODEL_KEYS

    return [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
            for k in MODEL_KEYS if saved.get(k) != current.get(k)]


# ----------------------------------------------------------------------------------------------- bounds
# Upper bounds of train.py's count keys (SCHEMA gives their lower ones). A count without an upper bound is
# a run that goes until killed: ``n_samples 100000`` draws a grid of a hundred thousand faces at the end of
# training, ``eval_iwae_k 1000000`` decodes a million times per test image. Each bound sits far above any
# sensible setting and says why it is where it is; the refusal is one line naming the key, the bound and
# the value (pipeline/limits.py for the CLIs' own options).
#: key → (highest value, why): the counts that size work, memory or a picture.
BOUNDS: dict[str, tuple[int, str]] = {
    "synthetic_images": (999_999, "CelebA file names have six digits"),
    "seed": (2 ** 63 - 1, "torch's seed range"),
    "epochs": (100_000, "passes over the training split"),
    "steps": (1_000_000_000, "optimisation steps"),
    "batch_size": (65_536, "images per step on one process"),
    "eval_batch_size": (65_536, "images per evaluation batch"),
    "image_size": (1024, "pixels per side"),
    "latent_dim": (65_536, "latent units"),
    "res_blocks": (64, "residual blocks per stage"),
    "num_threads": (256, "loader threads"),
    "n_reconstructions": (256, "faces in reconstructions.png"),
    "n_samples": (1024, "faces in samples.png"),
    "n_interpolation": (256, "frames in interpolation.png"),
    "n_failures": (64, "faces in failures.png"),
    "eval_iwae_k": (10_000, "importance samples per test image"),
    "eval_iwae_images": (100_000_000, "test images"),
    "eval_samples": (100_000_000, "prior samples"),
}
#: Per-item bounds of list keys.
LIST_BOUNDS: dict[str, tuple[int, int, str]] = {"channels": (12, 4096, "stages, and widths per stage")}


def check_bounds(cfg: dict[str, Any]) -> None:
    """ConfigError for the first count key of the validated ``cfg`` above its bound."""
    if isinstance(cfg.get("synthetic_images"), int) and cfg["synthetic_images"] < 3:
        raise ConfigError(f"config key 'synthetic_images' must be at least 3 (one image per split), "
                          f"got {cfg['synthetic_images']}")
    for key, (high, why) in BOUNDS.items():
        value = cfg.get(key)
        if isinstance(value, int) and value > high:
            raise ConfigError(f"config key {key!r} must be at most {high:,} ({why}), got {value:,}")
    for key, (most, widest, why) in LIST_BOUNDS.items():
        value = cfg.get(key)
        if isinstance(value, list) and (len(value) > most or any(isinstance(v, int) and v > widest for v in value)):
            raise ConfigError(f"config key {key!r} takes at most {most} items of at most {widest:,} ({why}), "
                              f"got {value}")
