"""JPEG decode rate without DALI: ``torchvision.io.decode_jpeg`` on the GPU (nvJPEG), batched.

Reads up to ``--max-images`` JPEGs of the train split into memory once (untimed; 178×218 for
CelebA and the synthetic set), then times whole passes over them: decode alone at several batch
sizes, and decode + the loader's centre crop + antialiased resize to 64×64 floats (what a
training batch needs). One CPU core decoding the same bytes (torchvision on the CPU, and PIL with
its DCT-domain ``draft``, as the webdataset loader does) is the per-core reference: the loader's
CPU rate is about that times its worker count. On a machine without CUDA only the CPU rows run,
and without torchvision (a CPU build of torch has no matching wheel on PyPI) only PIL's.

    python -m bench.gpu_decode --shards DIR [--max-images 8192] [--batch-sizes 64 256 1024] [--json OUT]
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any, Callable

import torch

from bench.common import print_table, save_json
from bench.loader import time_interleaved
from pipeline.errors import UserError, cli_entry
from pipeline.loader import resolve_device

#: The loader's contract: a centred 148-pixel square, resized to 64 (config keys crop and image_size).
CROP, SIZE = 148, 64
#: Images the per-core CPU rows decode: enough for a stable rate, few enough to stay a second or two.
CPU_IMAGES = 512


def read_jpegs(shards: str | Path, max_images: int) -> list[bytes]:
    """The first ``max_images`` JPEGs of the train split, as bytes (through the shards' index files)."""
    from pipeline.shards import part_samples, read_split

    split = read_split(shards, "train")
    samples = part_samples(split.shards, 0, min(split.count, max_images))
    handles = {s.tar: open(s.tar, "rb") for s in split.shards}
    try:
        out = []
        for s in samples:
            fh = handles[s.shard.tar]
            fh.seek(s.offset)
            out.append(fh.read(s.size))
        return out
    finally:
        for fh in handles.values():
            fh.close()


def torchvision_error() -> str | None:
    """None when torchvision's decode_jpeg works here, else why not (a CUDA torchvision on CPU torch fails)."""
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception as err:  # ImportError, or a torchvision built for another torch (its ops fail to load)
        return f"torchvision unusable ({type(err).__name__}: {str(err).splitlines()[0][:100] if str(err) else ''})"
    return None


def _crop_resize(images: list[torch.Tensor]) -> torch.Tensor:
    import torch.nn.functional as F

    from pipeline.transforms import crop_box

    crops = []
    for img in images:
        left, top, right, bottom = crop_box(img.shape[2], img.shape[1], CROP)
        crops.append(img[:, top:bottom, left:right])
    batch = torch.stack(crops).float().div_(255)
    return F.interpolate(batch, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)


def _torchvision_pass(data: list[torch.Tensor], batch: int, device: str, crop_resize: bool) -> Callable[[], int]:
    from torchvision.io import decode_jpeg

    def run() -> int:
        n = 0
        for i in range(0, len(data), batch):
            decoded = decode_jpeg(data[i:i + batch], device=device)
            if crop_resize:
                decoded = _crop_resize(decoded)
            n += len(decoded)
        return n

    return run


def _pil_pass(jpegs: list[bytes]) -> Callable[[], int]:
    from PIL import Image

    def run() -> int:
        for b in jpegs:
            with Image.open(io.BytesIO(b)) as im:
                im.draft("RGB", (CROP // 2, CROP // 2))  # the webdataset loader's DCT-domain shortcut
                im.load()
        return len(jpegs)

    return run


def run(shards: str | Path, *, max_images: int = 8192, batch_sizes: tuple[int, ...] = (64, 256, 1024),
        repeats: int = 3, device: str | None = None, json_path: str | Path | None = None,
        print_results: bool = True) -> dict[str, Any]:
    dev = resolve_device(device)
    jpegs = read_jpegs(shards, max_images)
    sizes = None
    passes: dict[str, Callable[[], int]] = {}
    meta: dict[str, dict[str, Any]] = {}
    tv_error = torchvision_error()
    skipped = []
    if tv_error is None:
        from torchvision.io import decode_jpeg

        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]
        first = decode_jpeg(data[0])
        sizes = list(first.shape[1:])
        if dev.type == "cuda":
            for b in batch_sizes:
                passes[f"torchvision cuda, batch {b}"] = _torchvision_pass(data, b, "cuda", False)
                meta[f"torchvision cuda, batch {b}"] = {"path": "torchvision", "device": "cuda", "batch": b,
                                                         "crop_resize": False}
            b = 256 if 256 in batch_sizes else batch_sizes[0]
            name = f"torchvision cuda + crop/resize, batch {b}"
            passes[name] = _torchvision_pass(data, b, "cuda", True)
            meta[name] = {"path": "torchvision", "device": "cuda", "batch": b, "crop_resize": True}
        else:
            skipped.append({"path": "torchvision cuda", "reason": "no CUDA device"})
        for crop_resize in (False, True) if dev.type == "cpu" else (False,):
            name = "torchvision cpu" + (" + crop/resize" if crop_resize else "") + ", 1 thread"
            passes[name] = _torchvision_pass(data[:CPU_IMAGES], 64, "cpu", crop_resize)
            meta[name] = {"path": "torchvision", "device": "cpu", "batch": 64, "crop_resize": crop_resize,
                          "threads": 1}
    else:
        skipped.append({"path": "torchvision", "reason": tv_error})
    passes["PIL + draft, 1 thread"] = _pil_pass(jpegs[:CPU_IMAGES])
    meta["PIL + draft, 1 thread"] = {"path": "PIL", "device": "cpu", "batch": 1, "crop_resize": False, "threads": 1}

    # One CPU thread, like one loader worker (and nvJPEG's host side needs no pool).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        timed = time_interleaved(passes, repeats, dev)
    finally:
        torch.set_num_threads(threads)
    rows = [{"name": name, **meta[name], **timed[name]} for name in passes]
    best_gpu = max((r for r in rows if r["device"] == "cuda" and not r["crop_resize"]),
                   key=lambda r: r["images_per_s"], default=None)
    results = {"rows": rows, "skipped": skipped, "images": len(jpegs),
               "mean_jpeg_bytes": sum(map(len, jpegs)) / len(jpegs), "image_hw": sizes,
               "best_gpu_images_per_s": best_gpu and best_gpu["images_per_s"]}
    settings = {"shards": str(shards), "max_images": max_images, "batch_sizes": list(batch_sizes),
                "repeats": repeats, "device": str(dev), "cpu_images": CPU_IMAGES, "crop": CROP, "size": SIZE}
    if print_results:
        print_table(f"JPEG decode without DALI ({len(jpegs):,} images, {results['mean_jpeg_bytes'] / 1e3:.1f} KB mean"
                    + (f", {sizes[1]}×{sizes[0]}" if sizes else "") + ")",
                    ["path", "images", "images/s", "range"],
                    [(r["name"], r["images"], r["images_per_s"],
                      f"{r['images_per_s_range'][0]:,.0f}–{r['images_per_s_range'][1]:,.0f}") for r in rows],
                    caption="; ".join(f"skipped {s['path']}: {s['reason']}" for s in skipped) or None)
    return save_json(json_path, "gpu_decode", results, settings)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_decode", description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True, help="preshard's output folder")
    p.add_argument("--max-images", type=int, default=8192)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--repeats", type=int, default=3, help="timed passes per path (median)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.max_images < 1 or a.repeats < 1 or min(a.batch_sizes) < 1:
        raise UserError("--max-images, --repeats and --batch-sizes must be ≥ 1")
    run(a.shards, max_images=a.max_images, batch_sizes=tuple(a.batch_sizes), repeats=a.repeats, device=a.device,
        json_path=a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
