"""Names every part of the pipeline agrees on: the splits, the manifest, the re-shard hint.

Written once here so that the CelebA reader, preshard (which writes shards) and the loader
(which reads them) cannot drift apart.
"""
from __future__ import annotations

#: CelebA's partitions, in list_eval_partition.txt's order (0 train, 1 val, 2 test).
SPLITS = ("train", "val", "test")
#: ``format`` of manifest.json; a loader refuses any other.
MANIFEST_FORMAT = "celeba-wds/1"
MANIFEST = "manifest.json"
#: What to do about shards that are missing, damaged or inconsistent with their index: the one hint every
#: such error ends with. A fresh --out, because preshard refuses to touch a folder whose shards changed.
PRESHARD_HINT = "re-run preshard into a fresh --out (it validates every image and writes tars and index files together)"
