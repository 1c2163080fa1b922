"""Time to trace featurize's step (one ViewRunner) for EfficientNetB0 (random weights) at 64 px with
the mirror view: what every featurize and predict process pays once before its first batch.

    python bench/trace_views.py            # prints the seconds of each of --repeats builds
"""
from __future__ import annotations

import argparse
import time


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    from fewlabel.features.keras_models import build_extractor
    from fewlabel.features.views import View, ViewRunner

    model, _ = build_extractor("EfficientNetB0", None, args.size)
    views = [View(args.size), View(args.size, mirrored=True)]
    for _ in range(args.repeats):
        started = time.perf_counter()
        ViewRunner({args.size: model}, views, 16)
        print(f"traced {len(views)} views at {args.size} px: {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
