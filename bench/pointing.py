"""Where the class maps point, on devdata's boxes: the pointing game, energy and mask IoU per method.

    python bench/pointing.py --photos 1500 --half selection    # Lite0 at 448: the half the knobs are chosen on
    python bench/pointing.py --photos 1500                     # the report half (the maps are cached: minutes)
    python bench/pointing.py --photos 1500 --backbone <lite2.keras> --json bench/results/pointing_lite2.json
    python bench/pointing.py --photos 600 --extra-size 576     # maps at 576 too (+576 rows)

Protocol (bench/quality.py's): per draw d (0..k-1), 750 training images by the subset stage's
stratified draw (seed d) from devdata's ``train.txt`` (2,334 photos); the product's model
(params.yaml's ``svm``) fitted on their pooled features (``--size``, mirror averaged in, Keras,
through the per-image feature cache); the other 1,584 are its evaluation photos.

Photos: ``--photos`` photos drawn once at random (seed 0) from the pool; their feature maps
(every view: ``--size`` and ``--extra-size``, each with the mirror) are computed once and kept
in ``--maps`` (float16 .npz; reused when it holds these photos and views), so a rerun only
re-scores. The photos are split once (seed 1) into a SELECTION half, on which the method and
its knobs were chosen, and a REPORT half, on which the table is reported (``--half``); each
draw scores the photos of the half it did not train on (about 2/3 of them).

Scores, per photo and class present (label 1) with boxes: pointing game (the map's maximum
within 15 px of a box of the class, Zhang et al. 2016; mean over classes); the centre
baseline points at the photo's centre. "difficult": photos with a box under a quarter of the
photo and another class present. Energy: the map's mass above its minimum inside the class's
boxes (a uniform map scores the boxes' share, row "uniform"). IoU: the map above halfway
between its minimum and maximum against the union of the boxes. All as % (mean ± sd over draws).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import DEVDATA_VOC, LITE0, REPO_ROOT, draw_split, load_pool  # noqa: E402

import numpy as np  # noqa: E402

SAMPLE_SEED, HALF_SEED = 0, 1
HALVES = ("selection", "report")
CENTROID_SHARE = 0.02  # the "top 2%" point: the centre of mass of the map's highest 2% of pixels


def variants(size: int, extra: int | None) -> dict[str, tuple[tuple[int, ...], bool, float, str]]:
    """Row name -> (map sizes, mirror, smoothing sigma in cells, point rule); every row scores
    fewlabel.heatmaps' ``norm`` locations (the other methods pointed worse: docs/heatmaps.md)."""
    one = (size,)
    table = {"norm (naive baseline)": (one, False, 0.0, "peak"),
             "norm + mirror": (one, True, 0.0, "peak"),
             "norm, smoothed 0.5": (one, False, 0.5, "peak"),
             "norm, smoothed 1 (the default)": (one, False, 1.0, "peak"),
             "norm, smoothed 2": (one, False, 2.0, "peak"),
             "norm + mirror, smoothed 1 (the default, flip_tta)": (one, True, 1.0, "peak"),
             "norm, point: centre of mass of the top 2%": (one, False, 0.0, "centroid")}
    if extra:
        table.update({f"norm + mirror + {extra}": ((size, extra), True, 0.0, "peak"),
                      f"norm + mirror + {extra}, smoothed 1": ((size, extra), True, 1.0, "peak")})
    return table


def centroid(heat: np.ndarray, share: float = CENTROID_SHARE) -> tuple[float, float]:
    """(x, y): the centre of mass of the map above its (1 - share) quantile, weighted by the excess."""
    threshold = np.quantile(heat, 1 - share)
    ys, xs = np.nonzero(heat >= threshold)
    weights = heat[ys, xs] - threshold + 1e-12
    return float(xs @ weights / weights.sum()), float(ys @ weights / weights.sum())


def sample_maps(path: Path, backbone: str, sizes: tuple[int, ...], paths: list[str], rows: np.ndarray,
                batch_size: int) -> dict[str, np.ndarray]:
    """View label -> the feature maps (photos x h x w x c, float16; mirrored views as the backbone
    saw them) of ``paths[rows]``, read from ``path`` when it holds these rows and views, else
    computed (one CNN pass per photo and view) and written there (a temporary file, renamed)."""
    from fewlabel.features.recipes import Recipe
    from fewlabel.heatmaps import FeatureMaps
    from fewlabel.io import atomic_path

    recipe = Recipe(backbone, sizes, flip=True)
    labels = [view.label for view in recipe.views()]
    if path.is_file():
        with np.load(path) as stored:
            if np.array_equal(stored["rows"], rows) and all(label in stored.files for label in labels):
                print(f"feature maps of {len(rows)} photos read from {path}", file=sys.stderr)
                return {label: stored[label] for label in labels}
    started, maps = time.perf_counter(), {label: [] for label in labels}
    for _, view_maps in FeatureMaps([recipe], None, batch_size).batches([paths[i] for i in rows]):
        for view, block in view_maps[0].items():
            maps[view.label].append(block.astype(np.float16))
    maps = {label: np.concatenate(blocks) for label, blocks in maps.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        np.savez(tmp, rows=rows, **maps)
    print(f"feature maps of {len(rows)} photos: {time.perf_counter() - started:.0f} s, "
          f"{path.stat().st_size / 2 ** 20:.0f} MiB in {path}", file=sys.stderr)
    return maps


def score_draw(draw: int, params, pool, features, sample, half_rows, maps, table, boxes_of, backbone) -> dict:
    """One draw's model, and every row's records on the photos of ``half_rows`` it did not train on."""
    from fewlabel import pointing
    from fewlabel.artifacts import training_targets
    from fewlabel.features.recipes import Recipe
    from fewlabel.features.views import View
    from fewlabel.heatmaps import combine_grids, image_size, smooth, upsample, view_grids
    from fewlabel.model.svm import build_model, for_training_set

    ids, labels, paths = pool
    classes = params.data.classes
    train_rows, eval_rows = draw_split(labels, params, draw)
    model = build_model(for_training_set(params.svm, len(train_rows))).fit(
        features[train_rows], training_targets(labels[train_rows]))
    reference_norm = float(np.linalg.norm(features[train_rows], axis=1).mean())
    scored = np.flatnonzero(np.isin(sample, eval_rows) & np.isin(sample, half_rows))
    records = defaultdict(lambda: defaultdict(list))  # row -> metric -> [(class, value)]
    pairs = difficult_pairs = 0
    views = {View(int(label.split("-")[0]), "bilinear", label.endswith("-mirror")): label for label in maps}
    sizes = tuple(sorted({view.size for view in views}))
    for start in range(0, len(scored), 16):  # a few photos' maps at a time: memory stays small
        chunk = scored[start:start + 16]
        rows = sample[chunk]
        block_maps = {view: maps[label][chunk].astype(np.float32) for view, label in views.items()}
        per_view = {view: grid for (_, view), grid in view_grids(
            model, [Recipe(backbone, sizes, flip=True)], features[rows], [block_maps], "norm",
            reference_norm=reference_norm).items()}
        grids = {name: smooth(combine_grids([per_view[View(s, "bilinear", m)] for s in map_sizes
                                             for m in ((False, True) if mirror else (False,))]), sigma)
                 for name, (map_sizes, mirror, sigma, _) in table.items()}
        for j, row in enumerate(rows):
            height, width = image_size(paths[row])
            image_boxes = boxes_of[ids[row]]
            difficult = pointing.is_difficult(image_boxes, height, width)
            for c, name in enumerate(classes):
                if labels[row, c] != 1 or not image_boxes.get(name):
                    continue
                pairs, difficult_pairs = pairs + 1, difficult_pairs + difficult
                mask = pointing.box_mask(image_boxes[name], height, width)
                outcome = {"centre": {"point": pointing.hit(((width - 1) / 2, (height - 1) / 2), image_boxes[name])},
                           "uniform": {"energy": float(mask.mean())}}
                for variant, grid in grids.items():
                    heat = upsample(grid[j, c:c + 1], height, width)[0]
                    rule = table[variant][3]
                    point = pointing.peak(heat) if rule == "peak" else centroid(heat)
                    outcome[variant] = {"point": pointing.hit(point, image_boxes[name])}
                    if rule == "peak":  # the map itself is the same as another row's for other rules
                        outcome[variant].update(energy=pointing.energy(heat, mask), iou=pointing.mask_iou(heat, mask))
                for variant, values in outcome.items():
                    for key, value in values.items():
                        records[variant][key].append((name, float(value)))
                    if difficult and "point" in values:
                        records[variant]["point_difficult"].append((name, float(values["point"])))
    return {"draw": draw, "n_photos": len(scored), "n_pairs": pairs, "n_difficult_pairs": difficult_pairs,
            "scores": {variant: {key: pointing.class_mean(values) for key, values in metrics.items()}
                       for variant, metrics in records.items()}}


def markdown(runs: list[dict], baseline: str = "norm (naive baseline)") -> str:
    """The table: mean ± sd over draws; the last two columns are paired per draw (same photos),
    pointing minus the naive baseline's and minus the centre's."""
    keys = (("point", "pointing"), ("point_difficult", "pointing, difficult"), ("energy", "energy"),
            ("iou", "mask IoU"))
    lines = ["| method | " + " | ".join(label for _, label in keys) + f" | pointing − {baseline.split()[0]} | "
             "pointing − centre |", "|---" * (len(keys) + 3) + "|"]

    def cell(values) -> str:
        values = [v for v in values if v is not None]
        return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}" if values else ""

    for name in runs[0]["scores"]:
        cells = [cell([run["scores"][name].get(key) for run in runs]) for key, _ in keys]
        for reference in (baseline, "centre"):
            paired = [run["scores"][name].get("point") is not None and run["scores"][name]["point"]
                      - run["scores"][reference]["point"] for run in runs]
            cells.append(cell([v if v is not False else None for v in paired]) if name != reference else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voc", default=str(DEVDATA_VOC))
    parser.add_argument("--backbone", default=str(LITE0))
    parser.add_argument("--size", type=int, default=448, help="the model's view (and the maps' first size)")
    parser.add_argument("--extra-size", type=int, default=None, help="a second map size (its own rows)")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--photos", type=int, default=1500, help="photos drawn once (seed 0) from the pool")
    parser.add_argument("--half", choices=HALVES, default="report",
                        help="score the selection half (choosing) or the report half (the table)")
    parser.add_argument("--maps", help="the feature maps' .npz (default: /tmp/fewlabel-pointing-<backbone>-"
                                       "<sizes>-<photos>.npz)")
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

    sample = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(pool[2]), min(args.photos, len(pool[2])),
                                                               replace=False))
    halves = np.array_split(np.random.default_rng(HALF_SEED).permutation(len(sample)), 2)
    half_rows = sample[np.sort(halves[HALVES.index(args.half)])]
    sizes = tuple(dict.fromkeys((args.size,) + ((args.extra_size,) if args.extra_size else ())))
    maps_path = Path(args.maps or f"/tmp/fewlabel-pointing-{Path(args.backbone).stem}-"
                                  f"{'-'.join(map(str, sizes))}-{len(sample)}.npz")
    maps = sample_maps(maps_path, args.backbone, sizes, pool[2], sample, params.features.batch_size)

    table = variants(args.size, args.extra_size)
    started, runs = time.perf_counter(), []
    for draw in range(args.draws):
        runs.append(score_draw(draw, params, pool, features, sample, half_rows, maps, table, boxes_of, args.backbone))
        run = runs[-1]
        print(f"draw {draw}: {run['n_photos']} photos, {run['n_pairs']} photo-class pairs "
              f"({run['n_difficult_pairs']} difficult), {time.perf_counter() - started:.0f} s", flush=True)
    print(f"\n{Path(args.backbone).stem} at {args.size}" + (f" (+{args.extra_size})" if args.extra_size else "")
          + f", {args.draws} draws, the {args.half} half of {len(sample)} photos\n\n{markdown(runs)}\n")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
