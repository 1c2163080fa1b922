"""download: make ``--out`` (``data/raw/voc``) a link to a PASCAL VOC<year> folder.

Where the data comes from is ``data.source``:

- ``null``: the official tarballs for ``data.year``, from the VOC host, falling back to a
  mirror; downloads resume after a dropped connection and are checked against known md5s;
- a local folder that is, or contains, ``VOCdevkit/VOC<year>``: linked as it is (no copy);
- a local folder holding the year's tarballs: checked and extracted (no download);
- an ``http(s)://`` or ``file://`` base URL serving the tarballs: downloaded from there.

A relative local path is read from the repository root, also in queued experiments (see
:func:`resolve_source_folder`).

Tarballs are kept in the per-user cache (``user_cache_dir("downloads")``), and extracted once
into ``user_cache_dir("extracted")`` under a name keyed by their md5s, so a rerun (or a
``dvc exp`` in a fresh copy of the repo) neither downloads nor extracts again. ``--out``
becomes a symlink to the ``VOC<year>`` folder, which DVC tracks with ``cache: false``: the
images are never copied into the DVC cache.
"""
from __future__ import annotations

import argparse
import sys

from fewlabel.data.source import link_dataset, obtain_voc
from fewlabel.errors import run_main
from fewlabel.params import load_params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="path of the link to create (data/raw/voc)")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    data = load_params(args.params).data
    voc_dir = obtain_voc(data.year, data.source, data.md5, progress=not args.no_progress)
    link_dataset(voc_dir, args.out)
    n_images = sum(1 for _ in (voc_dir / "JPEGImages").iterdir())
    print(f"{args.out} -> {voc_dir} ({n_images} images)", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
