"""Packs an ImageNet-style image folder into ArrayRecord shards, without TensorFlow.

    python -m bigvar.data.write_array_record --src=/data/imagenet/train \\
        --out=/data/imagenet_ar/train --shards=256

writes /data/imagenet_ar/train-00000-of-00256.array_record … and train.classes.json. Read them
back with `ArrayRecordSource("/data/imagenet_ar/train-*.array_record")` (or data_config
source="array_record", path=that glob). Records are "BVR1" records (see `sources.py`): label,
relative path and the original file bytes, not re-encoded. Files are taken in the folder
source's deterministic order (sorted classes, sorted files) and split into contiguous shards,
so record i of the sorted shards is image i of `ImageFolderSource(src)`.
"""
from __future__ import annotations

import argparse
import json
import os

from bigvar.data import sources

# group_size:1 makes every record its own chunk (what random access needs); the payload is
# already compressed, so riegeli compression would only cost time.
WRITER_OPTIONS = "group_size:1,uncompressed"


def write_array_record(src: str, out: str, shards: int, *, progress: bool = True) -> list[str]:
    """Writes the shards and PREFIX.classes.json; returns the shard paths."""
    from array_record.python import array_record_module
    from tqdm.auto import tqdm

    if shards < 1:
        raise ValueError(f"--shards={shards} must be ≥ 1")
    class_names, files = sources.list_image_folder(src)
    if shards > len(files):
        raise ValueError(f"--shards={shards} is more than the {len(files)} images in {src!r}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    root = os.path.abspath(src)
    paths = []
    with tqdm(total=len(files), unit="img", disable=not progress, desc="array_record") as bar:
        for k in range(shards):
            lo, hi = k * len(files) // shards, (k + 1) * len(files) // shards
            path = sources.shard_name(out, k, shards)
            writer = array_record_module.ArrayRecordWriter(path, WRITER_OPTIONS)
            try:
                for rel, label in files[lo:hi]:
                    with open(os.path.join(root, rel), "rb") as f:
                        writer.write(sources.encode_record(label, f.read(), rel))
                    bar.update(1)
            finally:
                writer.close()
            paths.append(path)
    with open(out + ".classes.json", "w") as f:
        json.dump(class_names, f, indent=0)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="image folder root (root/<class>/<files>)")
    parser.add_argument("--out", required=True, help="output prefix, e.g. /data/ar/train")
    parser.add_argument("--shards", type=int, default=1, help="number of shards")
    args = parser.parse_args(argv)
    paths = write_array_record(args.src, args.out, args.shards, progress=True)
    print(f"wrote {len(paths)} shards: {paths[0]} … ; class names in {args.out}.classes.json")


if __name__ == "__main__":
    main()
