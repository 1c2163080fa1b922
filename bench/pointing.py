"""Where the class maps point, on devdata's boxes: the pointing game, energy and mask IoU per method.

    python bench/pointing.py                                  # Lite0 at 448, 5 draws, 300 photos
    python bench/pointing.py --backbone <lite2.keras> --size 416 --json bench/results/pointing_lite2.json

Protocol (bench/quality.py's): per draw d (0..k-1), 750 training images by the subset stage's
stratified draw (seed d) from devdata's ``train.txt`` (2,334 photos); the product's model
(params.yaml's ``svm``) fitted on their pooled features (``--size``, mirror averaged in, Keras,
through the per-image feature cache); the other 1,584 are its evaluation photos. The maps are
computed once for ``--photos`` photos drawn at random (seed 0) from the pool, and each draw
scores those it did not train on (about 2/3 of them). Per photo and class present (label 1)
with boxes: the map's maximum is the point (pointing game, 15 px tolerance, mean over classes); the centre baseline points at
the photo's centre in the same run. "difficult": photos with a box under a quarter of the photo
and another class present. Energy: the map's mass above its minimum inside the class's boxes
(a uniform map scores the boxes' share, printed as "uniform"). IoU: the map above halfway
between its minimum and maximum against the union of the boxes. All as % (mean ± sd over draws).

Methods (fewlabel.heatmaps): norm (the issue's naive baseline: each location scaled to the mean
norm of the pooled training vectors), raw, mix (step 0.25), linear (the kernel linearised at the
pooled vector); each on the plain view, "+mirror" with the mirrored view's map flipped back
and averaged, "+sizes" with the maps at ``--extra-size`` too (same model). Time: the CNN runs
once per photo and view; each draw's model then scores the photos it evaluates.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import DEVDATA_VOC, LITE0, REPO_ROOT, draw_split, load_pool  # noqa: E402

import numpy as np  # noqa: E402


def variants(size: int, extra: int | None) -> dict[str, tuple[str, tuple[int, ...], bool]]:
    """name -> (method, map sizes, mirror)."""
    table = {"norm": ("norm", (size,), False), "raw": ("raw", (size,), False), "mix": ("mix", (size,), False),
             "linear": ("linear", (size,), False), "norm+mirror": ("norm", (size,), True),
             "linear+mirror": ("linear", (size,), True)}
    if extra:
        table.update({"linear+mirror+sizes": ("linear", (size, extra), True)})
    return table


class Draw:
    """One draw: its model, its evaluation rows, and the records of every variant."""

    def __init__(self, draw, params, labels, features, names):
        from fewlabel.artifacts import training_targets
        from fewlabel.model.svm import build_model, for_training_set

        self.draw = draw
        train_rows, eval_rows = draw_split(labels, params, draw)
        self.eval_rows = set(int(r) for r in eval_rows)
        svm = for_training_set(params.svm, len(train_rows))
        self.model = build_model(svm).fit(features[train_rows], training_targets(labels[train_rows]))
        self.reference_norm = float(np.linalg.norm(features[train_rows], axis=1).mean())
        self.records = {name: {"point": [], "point_difficult": [], "energy": [], "iou": []} for name in names}
        self.records["centre"] = {"point": [], "point_difficult": []}
        self.records["uniform"] = {"energy": []}
        self.photos = 0

    def summary(self) -> dict:
        from fewlabel import pointing
        return {"draw": self.draw, "n_photos": self.photos, "n_pairs": len(self.records["centre"]["point"]),
                "n_difficult_pairs": len(self.records["centre"]["point_difficult"]),
                "scores": {name: {key: pointing.class_mean(values) for key, values in metrics.items()}
                           for name, metrics in self.records.items()}}


def score_batch(draw: Draw, rows, view_maps, pooled, args, table, pool, boxes_of, classes) -> None:
    """Every variant's maps of the batch's photos that ``draw`` evaluates, scored against their boxes."""
    from fewlabel.features.recipes import Recipe
    from fewlabel.features.views import View
    from fewlabel.heatmaps import combine_grids, image_size, upsample, view_grids
    from fewlabel import pointing

    ids, labels, paths = pool
    keep = [j for j, row in enumerate(rows) if int(row) in draw.eval_rows]
    if not keep:
        return
    rows = rows[keep]
    maps = {view: block[keep] for view, block in view_maps.items()}
    sizes = sorted({v.size for v in maps})
    per_method = {}
    for method in sorted({method for method, _, _ in table.values()}):
        recipe = Recipe(args.backbone, tuple(sizes), flip=True)
        per_method[method] = {view: grid for (_, view), grid in view_grids(
            draw.model, [recipe], pooled[keep], [maps], method, reference_norm=draw.reference_norm).items()}
    grids = {name: combine_grids([per_method[method][View(size, "bilinear", mirrored)] for size in map_sizes
                                  for mirrored in ((False, True) if mirror else (False,))])
             for name, (method, map_sizes, mirror) in table.items()}
    draw.photos += len(rows)
    for j, row in enumerate(rows):
        height, width = image_size(paths[row])
        image_boxes = boxes_of[ids[row]]
        difficult = pointing.is_difficult(image_boxes, height, width)
        for c, name in enumerate(classes):
            if labels[row, c] != 1 or not image_boxes.get(name):
                continue
            mask = pointing.box_mask(image_boxes[name], height, width)
            centre = pointing.hit(((width - 1) / 2, (height - 1) / 2), image_boxes[name])
            draw.records["centre"]["point"].append((name, centre))
            draw.records["uniform"]["energy"].append((name, float(mask.mean())))
            if difficult:
                draw.records["centre"]["point_difficult"].append((name, centre))
            for variant, grid in grids.items():
                heat = upsample(grid[j, c:c + 1], height, width)[0]
                hit = pointing.hit(pointing.peak(heat), image_boxes[name])
                out = draw.records[variant]
                out["point"].append((name, hit))
                out["energy"].append((name, pointing.energy(heat, mask)))
                out["iou"].append((name, pointing.mask_iou(heat, mask)))
                if difficult:
                    out["point_difficult"].append((name, hit))


def markdown(runs: list[dict]) -> str:
    keys = (("point", "pointing"), ("point_difficult", "pointing, difficult"), ("energy", "energy"),
            ("iou", "mask IoU"))
    lines = ["| method | " + " | ".join(label for _, label in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in runs[0]["scores"]:
        cells = []
        for key, _ in keys:
            values = [run["scores"][name].get(key) for run in runs]
            values = [v for v in values if v is not None]
            cells.append(f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}" if values else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voc", default=str(DEVDATA_VOC))
    parser.add_argument("--backbone", default=str(LITE0))
    parser.add_argument("--size", type=int, default=448, help="the model's view (and the maps' first size)")
    parser.add_argument("--extra-size", type=int, default=None, help="a second map size (+sizes rows)")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--photos", type=int, default=300,
                        help="photos drawn once (seed 0) from the pool; each draw scores those it did not train on")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    import dataclasses
    from fewlabel.features.extract import extract_features
    from fewlabel.params import load_params
    from fewlabel.pointing import parse_boxes

    params = load_params(REPO_ROOT / "params.yaml")
    voc = Path(args.voc)
    pool = load_pool(voc, "train", params.data.classes)
    boxes_of = {image_id: parse_boxes((voc / "Annotations" / f"{image_id}.xml").read_bytes(), image_id)
                for image_id in pool[0]}
    features_params = dataclasses.replace(params.features, backbones=(args.backbone,), weights=None,
                                          image_size=args.size, flip_tta=True, runtime="keras", native_sizes=None)
    started = time.perf_counter()
    features, _ = extract_features(pool[2], features_params, progress=True)
    print(f"pooled features of {len(features)} photos: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    from fewlabel.features.recipes import Recipe
    from fewlabel.heatmaps import FeatureMaps

    table = variants(args.size, args.extra_size)
    draws = [Draw(d, params, pool[1], features, table) for d in range(args.draws)]
    sample = np.sort(np.random.default_rng(0).choice(len(pool[2]), size=min(args.photos, len(pool[2])),
                                                     replace=False))
    sizes = tuple(dict.fromkeys((args.size,) + ((args.extra_size,) if args.extra_size else ())))
    maps = FeatureMaps([Recipe(args.backbone, sizes, flip=True)], None, params.features.batch_size)
    started, done = time.perf_counter(), 0
    for batch_paths, view_maps in maps.batches([pool[2][i] for i in sample]):
        rows = sample[done:done + len(batch_paths)]
        done += len(batch_paths)
        for draw in draws:
            score_batch(draw, rows, view_maps[0], features[rows], args, table, pool, boxes_of, params.data.classes)
        print(f"{done}/{len(sample)} photos, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    runs = [draw.summary() for draw in draws]
    for run in runs:
        print(f"draw {run['draw']}: {run['n_photos']} photos, {run['n_pairs']} photo-class pairs "
              f"({run['n_difficult_pairs']} difficult)")
    print(f"\n{Path(args.backbone).stem} at {args.size}" + (f" (+{args.extra_size})" if args.extra_size else "")
          + f", {args.draws} draws, scored on the evaluation photos among {args.photos}\n\n{markdown(runs)}\n")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
