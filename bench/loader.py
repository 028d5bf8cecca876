"""Loader throughput: images/s per decode path, on preshard's shards.

``python -m bench.loader --shards DIR [--json OUT] [--epochs N] [--quick] [--max-images N]``

Every configuration reads the whole train split (or ``--max-images`` of it) into training-ready
batches (float 3×64×64 in [0, 1] on the device), one untimed warm-up epoch first, then the median of
``--epochs`` timed epochs, taken in interleaved rounds (one epoch of each configuration
per round) so that load from other processes is shared fairly. Paths: DALI-GPU (nvJPEG, if
CUDA; also with the hardware decoder's share swept), DALI-CPU with 1, 2 and N threads,
torchvision ``decode_jpeg(device="cuda")`` batch decode (if torchvision and CUDA), webdataset+PIL
with 0, 1, 2 and N DataLoader workers; plus two ablations of the CPU tricks (DALI ROI decode vs
full decode, PIL DCT-domain draft vs full decode).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from bench.common import median, print_table, save_json, sync
from pipeline.errors import ConfigError
from pipeline.limits import check_count
from pipeline.parallel import usable_cores


#: Hardware-JPEG-decoder shares tried on CUDA beside DALI's default of 0.65 (config key hw_decoder_load).
HW_DECODER_LOADS = (0.0, 0.9, 1.0)
#: Pixel counts above which nvJPEG's Huffman stage runs on the GPU, tried on CUDA beside DALI's default
#: of 1,000,000 (config key hybrid_huffman_threshold): 0 = every image, 20,000 = every 178×218 CelebA image.
HUFFMAN_THRESHOLDS = (0, 20_000)


def _counts(n: int) -> list[int]:
    """1, 2, N without repeats (N = available cores)."""
    return sorted({1, 2, n})


def time_interleaved(epoch_fns: dict[str, Callable[[], int]], epochs: int, device: torch.device,
                     progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """One untimed warm-up epoch each, then ``epochs`` rounds timing one epoch of every
    configuration in turn: load from other processes drifts over minutes, and interleaving
    spreads it over all rows instead of penalising whichever ran at the busy moment."""
    for name, fn in epoch_fns.items():
        if progress:
            progress(f"warm-up: {name}")
        fn()
        sync(device)
    seconds: dict[str, list[float]] = {name: [] for name in epoch_fns}
    images: dict[str, int] = {}
    for r in range(epochs):
        for name, fn in epoch_fns.items():
            if progress:
                progress(f"round {r + 1}/{epochs}: {name}")
            t0 = time.perf_counter()
            images[name] = fn()
            sync(device)
            seconds[name].append(time.perf_counter() - t0)
    out = {}
    for name, secs in seconds.items():
        med = median(secs)
        out[name] = {"images": images[name], "epoch_s": med, "images_per_s": images[name] / med,
                     "images_per_s_range": [images[name] / max(secs), images[name] / min(secs)]}
    return out


def _loader_epoch(loader, max_images: int | None = None) -> Callable[[], int]:
    def run() -> int:
        n = 0
        for images in loader:
            n += images.shape[0]
            if max_images is not None and n >= max_images:
                break  # the next epoch rebuilds the pipeline, as every shuffled epoch does anyway
        return n

    return run


def _dali_pipeline_epoch(shards: Path, batch_size: int, threads: int, roi_decode: bool,
                         max_images: int | None = None, device: torch.device | None = None,
                         decoder_cache_mb: int | None = None) -> Callable[[], int]:
    """The raw DALI graph (no PyTorch hand-over, one pipeline for every epoch): on CPU with or without
    ROI decode (the ablation), on a CUDA ``device`` with DALI's own decoder cache of ``decoder_cache_mb``."""
    from pipeline.dali_pipeline import celeba_pipeline
    from pipeline.shards import read_split

    split = read_split(shards, "train")
    gpu = device is not None and device.type == "cuda"
    pipe = celeba_pipeline([str(s.tar) for s in split.shards], [str(s.index) for s in split.shards],
                           roi_decode=roi_decode, batch_size=batch_size, num_threads=threads,
                           device_id=device.index if gpu else None, decode_device="mixed" if gpu else "cpu",
                           decoder_cache_mb=decoder_cache_mb, prefetch_queue_depth=2, seed=0)
    pipe.build()
    batches = _capped_batches(split.count, batch_size, max_images)

    def run() -> int:
        for _ in range(batches):
            pipe.run()
        return batches * batch_size

    return run


def _torchvision_epoch(shards: Path, batch_size: int, crop: int, size: int,
                       max_images: int | None = None) -> Callable[[], int]:
    """torchvision's batched nvJPEG decode on the GPU, then crop + antialiased resize in torch."""
    import torch.nn.functional as F
    from torchvision.io import decode_jpeg

    from pipeline.shards import part_samples, read_split
    from pipeline.transforms import crop_box

    split = read_split(shards, "train")
    samples = part_samples(split.shards, 0, split.count)[:_capped_batches(split.count, batch_size, max_images) * batch_size]
    handles = {s.tar: open(s.tar, "rb") for s in split.shards}

    def read(s) -> torch.Tensor:
        fh = handles[s.shard.tar]
        fh.seek(s.offset)
        return torch.frombuffer(bytearray(fh.read(s.size)), dtype=torch.uint8)

    def run() -> int:
        n = 0
        for i in range(0, len(samples) - batch_size + 1, batch_size):
            decoded = decode_jpeg([read(s) for s in samples[i:i + batch_size]], device="cuda")
            crops = []
            for img in decoded:
                left, top, right, bottom = crop_box(img.shape[2], img.shape[1], crop)
                crops.append(img[:, top:bottom, left:right])
            batch = torch.stack(crops).float().div_(255)
            batch = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            n += batch.shape[0]
        return n

    return run


def _capped_batches(count: int, batch_size: int, max_images: int | None) -> int:
    """Full batches per timed epoch: all of them, or up to the first that reaches ``max_images``
    (where the make_loader rows stop too)."""
    full = count // batch_size
    return full if max_images is None else min(full, -(-max_images // batch_size))


def configurations(shards: Path, device: torch.device, batch_size: int, cores: int,
                   quick: bool, max_images: int | None = None) -> Iterable[tuple[str, str, int | None, Callable[[], Callable[[], int]] | None, str]]:
    """(name, path, threads/workers, factory of an epoch function or None, note)."""
    from pipeline import make_loader
    from pipeline.loader import dali_import_error

    def loader(backend: str, threads: int | None, **kw):
        return lambda: _loader_epoch(make_loader(shards, "train", batch_size, device=device, backend=backend,
                                                 num_threads=threads, **kw), max_images)

    def cached(backend: str, where: str):
        def factory():
            ld = make_loader(shards, "train", batch_size, device=device, backend=backend, cache=where)
            for _ in ld:  # a whole first epoch fills the cache (untimed), even where --max-images cuts the others
                pass
            return _loader_epoch(ld, max_images)
        return factory

    dali = dali_import_error() is None
    cuda = device.type == "cuda"
    yield ("default (auto)", "auto", None, loader("auto", None), "make_loader's defaults")
    if cuda and dali:
        yield ("DALI-GPU", "dali-gpu", None, loader("dali-gpu", None), "nvJPEG, mixed decode")
        # DALI: "the optimal workload ... should be found empirically" -- so it is, per machine.
        for load in HW_DECODER_LOADS:
            yield (f"DALI-GPU hw_decoder_load {load:g}", "dali-gpu", None,
                   loader("dali-gpu", None, hw_decoder_load=load), "share of JPEGs on the HW decoder (default 0.65)")
        for pixels in HUFFMAN_THRESHOLDS:
            yield (f"DALI-GPU hybrid_huffman_threshold {pixels:,}", "dali-gpu", None,
                   loader("dali-gpu", None, hybrid_huffman_threshold=pixels),
                   "Huffman on the GPU above this many pixels (default 1,000,000)")
        for t in _counts(cores):
            yield (f"DALI-GPU {t} thr", "dali-gpu", t, loader("dali-gpu", t), "CPU threads of the mixed decoder")
        yield ("DALI-GPU + cache device", "dali-gpu", None, cached("dali-gpu", "device"),
               "pipeline.cache: epochs after the first read GPU memory")
        yield ("DALI-GPU decoder cache", "dali-gpu", None,
               lambda: _dali_pipeline_epoch(shards, batch_size, cores, False, max_images, device, 4096),
               "DALI's cache_size (full decode, one unshuffled pipeline)")
    else:
        yield ("DALI-GPU", "dali-gpu", None, None, "skipped: " + ("no CUDA" if not cuda else "DALI not importable"))
    for t in _counts(cores):
        yield (f"DALI-CPU {t} thr", "dali-cpu", t, loader("dali-cpu", t) if dali else None,
               "" if dali else "skipped: DALI not importable")
    yield ("default + cache host", "auto", None, cached("auto", "host"),
           "pipeline.cache: epochs after the first read RAM")
    tv_note = ""
    try:
        import torchvision  # noqa: F401
    except Exception:
        tv_note = "skipped: torchvision not installed"
    if not tv_note and not cuda:
        tv_note = "skipped: needs CUDA"
    yield ("torchvision GPU decode", "torchvision", None,
           None if tv_note else (lambda: _torchvision_epoch(shards, batch_size, 148, 64, max_images)), tv_note or "decode_jpeg(cuda)")
    for w in sorted({0, 1, 2, cores}):
        yield (f"webdataset+PIL {w} wkr", "webdataset", w, loader("webdataset", w), "PIL draft (DCT-domain) on")
    if not quick:
        best = min(2, cores)
        yield (f"ablation: webdataset+PIL {best} wkr, no draft", "webdataset", best,
               loader("webdataset", best, draft=False), "full-size decode")
        if dali:
            yield (f"ablation: DALI-CPU graph {best} thr, ROI decode", "dali-cpu", best,
                   lambda: _dali_pipeline_epoch(shards, batch_size, best, True, max_images), "pipe.run(), no torch hand-over")
            yield (f"ablation: DALI-CPU graph {best} thr, full decode", "dali-cpu", best,
                   lambda: _dali_pipeline_epoch(shards, batch_size, best, False, max_images), "pipe.run(), no torch hand-over")


def run(shards: str | os.PathLike, quick: bool = False, json_path: str | os.PathLike | None = None, *,
        epochs: int | None = None, batch_size: int = 256, device: str | None = None,
        only: Sequence[str] | None = None, max_images: int | None = None) -> dict[str, Any]:
    """Measure every configuration; print a table; return (and optionally save) the JSON document."""
    from rich.console import Console

    from pipeline.loader import resolve_device
    from pipeline.shards import read_split

    console = Console()
    shards = Path(shards)
    dev = resolve_device(device)
    epochs = epochs or (1 if quick else 3)
    count = read_split(shards, "train").count
    batch_size = min(batch_size, count)
    cores = usable_cores()
    rows: list[dict[str, Any]] = []
    epoch_fns: dict[str, Callable[[], int]] = {}
    load_before = os.getloadavg()
    if max_images is not None and max_images < batch_size:
        raise ConfigError(f"max_images ({max_images}) must be at least the batch size ({batch_size})")
    for name, path, threads, factory, note in configurations(shards, dev, batch_size, cores, quick, max_images):
        if only and not any(o in name for o in only):
            continue
        rows.append({"name": name, "path": path, "threads": threads, "note": note, "images_per_s": None})
        if factory is not None:
            epoch_fns[name] = factory()
    with console.status("measuring") as status:
        timings = time_interleaved(epoch_fns, epochs, dev, progress=lambda msg: status.update(f"measuring {msg}"))
    for row in rows:
        row.update(timings.get(row["name"], {}))
    load_after = os.getloadavg()

    measured = {r["name"]: r["images_per_s"] for r in rows if r.get("images_per_s")}
    best_wds = max((v for k, v in measured.items() if k.startswith("webdataset")), default=None)
    cpu_loaders = [v for k, v in measured.items() if k.startswith(("webdataset", "DALI-CPU"))]
    results = {
        "rows": rows,
        "train_images": count,
        "default_images_per_s": measured.get("default (auto)"),
        "best_webdataset_images_per_s": best_wds,
        "default_vs_best_webdataset": (measured["default (auto)"] / best_wds
                                       if best_wds and "default (auto)" in measured else None),
        "dali_gpu_vs_best_cpu_loader": (measured["DALI-GPU"] / max(cpu_loaders)
                                        if "DALI-GPU" in measured and cpu_loaders else None),
        "load_average_before_after": [load_before[0], load_after[0]],
    }
    default = measured.get("default (auto)")
    print_table(
        f"Loader throughput, train split ({count:,} images"
        + (f", first {max_images:,} per epoch" if max_images is not None and max_images < count else "")
        + f", batch {batch_size}, device {dev}, {cores} cores)",
        ["path", "threads/workers", "images/s", "epoch s", "vs default", "note"],
        [(r["name"], r["threads"], r.get("images_per_s"), r.get("epoch_s"),
          (r["images_per_s"] / default) if r.get("images_per_s") and default else None, r["note"]) for r in rows],
        caption=f"median of {epochs} interleaved epoch(s) after a warm-up epoch each; 1-min load average "
                f"{load_before[0]:.2f} → {load_after[0]:.2f}",
    )
    settings = {"shards": str(shards), "quick": quick, "epochs": epochs, "batch_size": batch_size,
                "device": str(dev), "cores": cores, "max_images_per_epoch": max_images}
    return save_json(json_path, "loader", results, settings)


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.errors import cli_entry

    parser = argparse.ArgumentParser(prog="python -m bench.loader", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", required=True, help="preshard's output folder")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--epochs", type=int, default=None, help="timed epochs per configuration (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="one timed epoch, no ablations")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    parser.add_argument("--only", nargs="*", default=None, help="run only configurations whose name contains one of these")
    parser.add_argument("--max-images", type=int, default=None,
                        help="stop each timed epoch after this many images (for a CelebA-sized split, where the "
                             "1-thread CPU paths would take minutes per epoch)")
    args = parser.parse_args(argv)

    @cli_entry
    def _run() -> int:
        for option, value, high in (("--epochs", args.epochs, 1000), ("--batch-size", args.batch_size, 65_536),
                                    ("--max-images", args.max_images, 100_000_000)):
            if value is not None:
                check_count(option, value, 1, high)
        run(args.shards, args.quick, args.json, epochs=args.epochs, batch_size=args.batch_size, device=args.device,
            only=args.only, max_images=args.max_images)
        return 0

    return _run()


if __name__ == "__main__":
    raise SystemExit(main())
