"""pool: make ``--out`` (``data/pool``) what DVC tracks of ``data.pool_images``.

A link to the folder (or list file) of images to rank for labelling, or an empty folder when
``data.pool_images`` is null. featurize_pool depends on ``data/pool``, so an image added to
the folder, or a list edited, reruns it (and ``dvc status`` says so); see dvc.yaml for why
this is a stage and not a templated dependency.
"""
from __future__ import annotations

import argparse

from fewlabel.data.pool import link_pool
from fewlabel.errors import run_main
from fewlabel.params import load_params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="path of the link to create (data/pool)")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    link_pool(load_params(args.params).data.pool_images, args.out)


if __name__ == "__main__":
    run_main(main)
