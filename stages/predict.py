"""predict: label new photos with the trained model and its calibrated decision rule.

    python -m stages.predict photos/ more/*.jpg one.png [--out predictions.csv|.parquet] [--top-k 3]
    python -m stages.predict --list files.txt --out labels.parquet --engine ray

The same command as ``fewlabel predict`` (see :mod:`fewlabel.cli` for the options and exit
codes). Features come from the same backbones, input sizes and weights the model was trained
on, through the featurize stage's per-image cache; images are labelled in chunks, each
chunk's rows appended to the output as soon as it is done, so memory stays flat.
"""
from __future__ import annotations

import argparse

from fewlabel.cli import add_predict_arguments, predict
from fewlabel.errors import run_main


def main(argv: list[str] | None = None) -> None:
    parser = add_predict_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    predict(parser.parse_args(argv))


if __name__ == "__main__":
    run_main(main)
