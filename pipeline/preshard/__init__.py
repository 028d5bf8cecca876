"""CelebA or any folder of faces → WebDataset shards with DALI index files, every image validated on the way.

``python -m pipeline.preshard --celeba SRC --out DIR`` writes

    DIR/{train,val,test}/celeba-{split}-NNNNNN.tar   KEY.jpg (original bytes), KEY.cls, KEY.json
    DIR/{train,val,test}/celeba-{split}-NNNNNN.idx   DALI wds2idx v1.2 index of that tar
    DIR/manifest.json                                 counts, sha256 per shard, skipped keys

``python -m pipeline.preshard --images DIR --out OUT [--val 0.05 --test 0.05]`` writes the same
layout as ``images-{split}-NNNNNN.tar`` with only ``KEY.jpg`` per sample (JPEG bytes as found, or
PNG for other formats: the loaders decode by content), split by a hash of each relative path (see
:mod:`pipeline.image_folder`); the manifest says ``"attributes": null``.

Properties the rest of the project relies on:

- Deterministic: fixed tar header fields, fixed member order, train order shuffled with the
  seed, no timestamps: the same input and options give byte-identical output.
- Validated: each JPEG gets a header check and a full decode in a process pool (DALI kills the
  whole pipeline on one undecodable image), so no shard holds an image DALI cannot decode.
- Atomic and resumable: each shard and its index are written under temporary names and
  renamed (index first, so a tar never exists without its index); finished shards are logged
  in ``DIR/.preshard-state.jsonl``; ``manifest.json`` is written last. A killed run never
  looks complete, and rerunning the same command resumes after the last finished shard.

Modules, one job each:

    validate.py    check_jpeg, prepare_image, the validated stream (chunks via pipeline.parallel.ordered_map)
    tar_writer.py  tar_header, ShardWriter (tar + index, atomic rename), a sample's tar members
    state.py       the output directory: no-op / resume / refuse, the state file, the final manifest
    run.py         preshard() itself: options, the source (CelebA or a folder), split_plan, writing each split
    cli.py         main(): argparse and the rich summary tables
"""
from __future__ import annotations

from ..layout import MANIFEST, MANIFEST_FORMAT
from .cli import main
from .run import preshard, split_plan
from .state import STATE
from .tar_writer import TAR_BLOCK, TAR_RECORD, ShardWriter, sample_members, tar_header
from .validate import check_jpeg, prepare_image

__all__ = ["preshard", "main", "split_plan", "check_jpeg", "prepare_image", "tar_header", "ShardWriter",
           "sample_members", "STATE", "MANIFEST", "MANIFEST_FORMAT", "TAR_BLOCK", "TAR_RECORD"]
