"""The DALI graph: webdataset reader → JPEG decode (GPU or CPU) → crop → resize → flip → float.

One ``@pipeline_def`` for both devices: ``decode_device="mixed"`` decodes with nvJPEG on
the GPU (hardware decoder where present) and keeps every later op on the GPU;
``decode_device="cpu"`` decodes with libjpeg-turbo on ``num_threads`` CPU threads and the
pipeline is built with ``device_id=None``.

The crop window is known before decoding, so only it is decoded (``decoders.image_crop``, a
region-of-interest decode), which beats a full decode followed by a crop; ``use_fast_idct`` did
not help, and DALI has no DCT-domain downscale (bench/RESULTS.md, the loader table).
"""
from __future__ import annotations

from collections import abc
from typing import Sequence

from nvidia.dali import fn, pipeline_def, types
import nvidia.dali.math as dmath

READER_NAME = "Reader"
# Room for the "<tar path>:<offset>:<key>.jpg" source-info string of every sample; see keys().
_KEY_OUTPUT = "keys"


@pipeline_def(enable_conditionals=False)
def celeba_pipeline(
    paths: Sequence[str],
    index_paths: Sequence[str],
    *,
    decode_device: str = "cpu",
    shard_id: int = 0,
    num_shards: int = 1,
    shuffle: bool = False,
    initial_fill: int = 1024,
    crop: int | None = 148,
    size: int = 64,
    flip: bool = False,
    out_dtype: str = "float",
    channels_last: bool = False,
    with_keys: bool = False,
    roi_decode: bool = True,
    hw_decoder_load: float | None = None,
    hybrid_huffman_threshold: int | None = None,
    decoder_cache_mb: int | None = None,
):
    """Images (and optionally source-info bytes) for one rank's part of one split.

    The reader pads its part by repeating the last sample (``pad_last_batch``) and sticks to
    it (``stick_to_shard``), so every epoch of this pipeline covers exactly the same samples;
    the loader reshuffles across epochs by building a new pipeline (new seed, new tar order).
    """
    jpegs = fn.readers.webdataset(
        paths=list(paths),
        index_paths=list(index_paths),
        ext=["jpg"],
        missing_component_behavior="error",
        random_shuffle=shuffle,
        initial_fill=initial_fill,
        shard_id=shard_id,
        num_shards=num_shards,
        stick_to_shard=True,
        pad_last_batch=True,
        name=READER_NAME,
    )
    # Share of the JPEGs sent to the GPU's hardware JPEG engines (A100/H100) rather than nvJPEG's
    # CUDA + host-Huffman path; DALI's default is 0.65 and the best value is found by measuring.
    # hybrid_huffman_threshold: images above this many pixels get their Huffman stage on the GPU; DALI's
    # default (1,000,000) keeps it on CPU threads for every 178×218 (38,804-pixel) CelebA image.
    gpu_opts = {}
    if decode_device == "mixed":
        if hw_decoder_load is not None:
            gpu_opts["hw_decoder_load"] = hw_decoder_load
        if hybrid_huffman_threshold is not None:
            gpu_opts["hybrid_huffman_threshold"] = hybrid_huffman_threshold
    if decoder_cache_mb is not None and decode_device == "mixed":
        # DALI's own decoded-image cache (full decode only; kept per pipeline, so only an unshuffled,
        # reused pipeline gains): the benchmark compares it with pipeline.cache on the GPU.
        gpu_opts.update(cache_size=decoder_cache_mb, cache_type="threshold", cache_threshold=0)
        roi_decode = False
    if crop is None:
        images = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB, **gpu_opts)
    elif not roi_decode:  # the slower way, kept for the benchmark's ablation (and DALI's decoder cache)
        images = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB, **gpu_opts)
        images = fn.crop(images, crop=(crop, crop), crop_pos_x=0.5, crop_pos_y=0.5, out_of_bounds_policy="trim_to_shape")
    else:
        # Clamp the window to the image so other image sizes still work; the crop is
        # decoded directly (ROI decode), never the full frame.
        shape = fn.peek_image_shape(jpegs)
        side = fn.cast(dmath.min(dmath.min(shape[0], shape[1]), crop), dtype=types.FLOAT)
        images = fn.decoders.image_crop(
            jpegs, device=decode_device, output_type=types.RGB,
            crop_h=side, crop_w=side, crop_pos_x=0.5, crop_pos_y=0.5, **gpu_opts,
        )
    images = fn.resize(images, size=(size, size), antialias=True, interp_type=types.INTERP_LINEAR)
    mirror = fn.random.coin_flip(probability=0.5) if flip else 0
    # uint8 out (the decoded-image cache's input) is the resized image itself: float out is exactly it / 255.
    images = fn.crop_mirror_normalize(
        images,
        dtype={"float": types.FLOAT, "half": types.FLOAT16, "uint8": types.UINT8}[out_dtype],
        output_layout="HWC" if channels_last else "CHW",
        mean=[0.0],
        std=[1.0 if out_dtype == "uint8" else 255.0],
        mirror=mirror,
    )
    if not with_keys:
        return images
    # Source info is "<tar>:<offset>:<member name>" as bytes; padding to the longest in the
    # batch makes it one dense uint8 tensor that DALIGenericIterator can hand over.
    keys = fn.pad(fn.get_property(jpegs, key="source_info"), fill_value=0)
    return images, keys


def output_names(with_keys: bool) -> list[str]:
    """The DALIGenericIterator ``output_map`` matching :func:`celeba_pipeline`'s outputs."""
    return ["images", _KEY_OUTPUT] if with_keys else ["images"]


class SourceKeys(abc.Sequence):
    """One batch's keys, decoded from its source-info rows only when read: a loader that fills a cache
    needs them once, at the end of the pass, not on the per-batch path. Slices stay lazy."""

    def __init__(self, rows):
        self._rows = rows  # uint8 CPU tensor, one padded source-info row per sample
        self._keys: list[str] | None = None

    def __len__(self) -> int:
        return int(self._rows.shape[0])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return SourceKeys(self._rows[i])
        return self.keys()[i]

    def keys(self) -> list[str]:
        if self._keys is None:
            self._keys = keys_from_source_info(self._rows)
        return self._keys


def keys_from_source_info(rows) -> list[str]:
    """CelebA keys ("000001") from the padded uint8 source-info rows of one batch."""
    out = []
    for row in rows.cpu().numpy():
        info = row[row != 0].tobytes().decode("utf-8", "replace")
        member = info.rsplit(":", 1)[-1]
        out.append(member.split(".", 1)[0])
    return out
