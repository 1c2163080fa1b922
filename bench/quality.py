"""The quality harness: the product's own stage cores on real photos, over repeated draws.

    python bench/quality.py                                   # bench/quality.yaml on devdata, 5 draws
    python bench/quality.py --configs my.yaml --draws 3 --json out.json
    python bench/quality.py --config 'flip: features.flip_tta=true' --config 'seed: features.image_size=224'

Protocol. The pool is the images of ``--split`` (default ``train``: devdata's 2,334 VOC2007
train photos). Each draw ``d`` (0..k-1) takes ``subset.n_images`` (750) training images from
the pool with the subset stage's own stratified draw (``subset.seed = d``), and the rest of
the pool is the evaluation set. Per config and draw, the product's cores run in order:
featurize (``featurize_subsets``: view selection on the training images when
``image_size: auto``, then the per-image feature cache), train, calibrate and evaluate.
Features are extracted once per (backbone, view) and image, ever: later configs, draws and
runs read the cache. Models are shared between configs that differ only in ``calibrate.*``.

Output per config, mean ± sd over draws: mAP, VOC07 mAP, P@1, then per decision rule
micro-F1, macro-F1, Dice, Jaccard and exact match; and the cost: featurize images/s of the
views the config extracts for training images (all candidates under ``auto``) and for eval
images, measured on ``--speed-images`` photos with an empty cache, and train seconds. A
markdown table is printed and, with ``--json``, everything is written as JSON.

A config file is YAML: ``base`` (overrides for every config) and ``configs`` (name ->
overrides), overrides being ``{dotted.key: value}`` applied to ``params.yaml``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

# $FEWLABEL_DEVDATA overrides where devdata is (a worktree's parent has no shared/)
DEVDATA = Path(os.environ.get("FEWLABEL_DEVDATA") or REPO_ROOT.parent / "shared" / "devdata")
DEVDATA_VOC = DEVDATA / "VOCdevkit" / "VOC2007"
LITE0 = DEVDATA / "weights" / "efficientnet_lite0_imagenet.keras"


# --------------------------------------------------------------------------- configs

def parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SystemExit(f"override '{text}': expected key=value, e.g. svm.C=10")
    return key.strip(), yaml.safe_load(value)


def apply_overrides(raw: dict, overrides: dict) -> dict:
    """A deep copy of the params mapping ``raw`` with ``{dotted.key: value}`` set."""
    raw = json.loads(json.dumps(raw))
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return raw


def load_configs(args) -> dict[str, dict]:
    """name -> overrides, from --configs and/or --config, with ``base`` merged into each."""
    base, configs = {}, {}
    if args.configs:
        spec = yaml.safe_load(Path(args.configs).read_text()) or {}
        base = dict(spec.get("base") or {})
        configs = {str(name): dict(overrides or {}) for name, overrides in (spec.get("configs") or {}).items()}
    for item in args.config or []:
        name, _, rest = item.partition(":")
        configs[name.strip()] = dict(parse_override(part) for part in rest.split() if part)
    if args.only:
        configs = {name: o for name, o in configs.items() if name in set(args.only)}
    if not configs:
        raise SystemExit("no config to run: give --configs FILE or --config 'name: key=value ...'")
    for name in configs:
        configs[name] = {**base, **configs[name]}
        for key, value in list(configs[name].items()):
            if value in ("<lite0>", "<lite1>", "<lite2>"):  # devdata's EfficientNet-Lite files
                model = str(LITE0).replace("lite0", value[1:-1])
                configs[name][key] = [model] if key == "features.backbones" else model
    return configs


# --------------------------------------------------------------------------- data

def load_pool(voc: Path, split: str, classes) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(ids, VOC-coded labels, image paths) of the images listed in ``ImageSets/Main/<split>.txt``,
    parsed by the prepare stage's own code."""
    from fewlabel.data.voc import build_label_table, parse_annotation, read_split_list
    ids = read_split_list(voc / "ImageSets" / "Main" / f"{split}.txt")
    annotations = {}
    for image_id in ids:
        path = voc / "Annotations" / f"{image_id}.xml"
        _, objects = parse_annotation(path.read_bytes(), str(path))[:2]
        annotations[image_id] = objects
    table = build_label_table(annotations, {i: "pool" for i in ids}, classes)
    paths = [str(voc / "JPEGImages" / f"{i}.jpg") for i in table["image_id"]]
    return table["image_id"].to_numpy(str), table[list(classes)].to_numpy(np.int8), paths


def draw_split(labels: np.ndarray, params, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, eval rows): the subset stage's stratified draw of ``subset.n_images`` with
    ``seed``; the rest of the pool is the eval set."""
    from fewlabel.artifacts import training_targets
    from fewlabel.data.stratify import stratified_subset
    classes = params.data.classes
    quotas = {classes.index(name): target for name, target in params.subset.class_quota.items()}
    train_rows = stratified_subset(training_targets(labels), params.subset.n_images, params.subset.min_per_class,
                                   quotas, seed, class_names=classes)
    eval_rows = np.setdiff1d(np.arange(len(labels)), train_rows)
    return np.asarray(train_rows), eval_rows


# --------------------------------------------------------------------------- one config, one draw

def run_config(params, pool, train_rows, eval_rows, model_cache: dict, model_key: str) -> dict:
    """Featurize (cached), fit (the model shared across calibrate-only variants), evaluate:
    :func:`fewlabel.fit.fit`, the pipeline's train, calibrate and evaluate in memory."""
    from fewlabel.featurize import featurize_subsets
    from fewlabel.fit import fit
    ids, labels, paths = pool
    classes = params.data.classes
    if model_key not in model_cache:
        started = time.perf_counter()
        featurized = featurize_subsets([paths[i] for i in train_rows], labels[train_rows],
                                       [paths[i] for i in eval_rows], params.features, classes, progress=False)
        featurize_seconds = time.perf_counter() - started
        started = time.perf_counter()
        fitted = fit(featurized.train, labels[train_rows], params)
        train_seconds = time.perf_counter() - started
        model_cache[model_key] = {"fitted": fitted, "eval_features": featurized.eval,
                                  "views": " | ".join(r.label for r in featurized.recipes),
                                  "featurize_seconds": featurize_seconds, "train_seconds": train_seconds}
    cached = model_cache[model_key]
    fitted = fit(None, labels[train_rows], params, trained=cached["fitted"].trained)  # this variant's rule
    metrics, _ = fitted.evaluate(cached["eval_features"], labels[eval_rows], params)
    return {"metrics": metrics, "views": cached["views"], "train_seconds": cached["train_seconds"],
            "featurize_seconds": cached["featurize_seconds"], "rule": _describe(fitted.calibration)}


def _describe(calibration) -> str:
    """'per_class (min 1 label)': the strategy a draw's calibration chose, and its label counts."""
    rule = calibration.rule
    limits = f"min {rule.min_labels}" + (f", max {rule.max_labels}" if rule.max_labels is not None else "")
    return f"{calibration.strategy} ({limits} labels, global {calibration.global_threshold:.2f})"


# --------------------------------------------------------------------------- speed

def views_images_per_second(backbone_views: dict, features, paths: list[str]) -> float | None:
    """Images/s of extracting these views (decode included) on ``paths`` with an empty cache;
    the first 8 photos warm up (graph tracing) and are not timed."""
    from fewlabel.io import CACHE_ENV
    from fewlabel.features.extract import extract_views, resolve_runtime
    from fewlabel.features.int8 import calibrate
    # INT8: calibrated on the 8 warm-up photos (only speed is measured here; quality's own
    # features are calibrated on each draw's training images)
    runtime = calibrate(resolve_runtime(features), paths[:8])
    previous = os.environ.get(CACHE_ENV)
    with tempfile.TemporaryDirectory() as empty_cache:
        os.environ[CACHE_ENV] = empty_cache
        try:
            extract_views(paths[:8], backbone_views, features.weights, features.batch_size, False, runtime)
            _, stats = extract_views(paths[8:], backbone_views, features.weights, features.batch_size, False,
                                     runtime)
        finally:
            if previous is None:
                os.environ.pop(CACHE_ENV, None)
            else:
                os.environ[CACHE_ENV] = previous
    return stats["images_per_second"]


def config_speed(params, chosen_labels: set[str], paths: list[str], cache: dict) -> dict:
    """``train_images_per_second``: every view the config extracts for training images (under
    ``auto``: all candidates'); ``eval_images_per_second``: the views chosen for eval images
    (the slowest, when draws chose differently). Each distinct set of views is timed once."""
    from fewlabel.features.recipes import candidate_recipes, fixed_recipes
    features = params.features
    candidates = candidate_recipes(features) if features.image_size == "auto" else [fixed_recipes(features)]

    def timed(recipes_list) -> float | None:
        views: dict[str, set] = {}
        for recipes in recipes_list:
            for recipe in recipes:
                views.setdefault(recipe.backbone, set()).update(recipe.views())
        key = json.dumps({"views": {b: sorted(v.label for v in vs) for b, vs in views.items()},
                          "runtime": [features.runtime, features.precision]}, sort_keys=True)
        if key not in cache:
            cache[key] = views_images_per_second({b: sorted(v) for b, v in views.items()}, features, paths)
        return cache[key]

    chosen = [c for c in candidates if " | ".join(r.label for r in c) in chosen_labels]
    eval_speeds = [s for s in (timed([c]) for c in chosen) if s]
    return {"train_images_per_second": timed(candidates),
            "eval_images_per_second": min(eval_speeds) if eval_speeds else None}


# --------------------------------------------------------------------------- report

RULE_COLUMNS = (("f1_micro", "micro-F1"), ("f1_macro", "macro-F1"), ("dice", "Dice"), ("jaccard", "Jaccard"),
                ("subset_accuracy", "exact"), ("empty_rate", "no label"))


def summarise(runs: list[dict]) -> dict:
    """mean and sd over draws of every numeric metric (nested keys joined by '.')."""
    flat = [dict(_flatten(run["metrics"])) for run in runs]
    keys = [k for k in flat[0] if all(isinstance(f.get(k), (int, float)) for f in flat)]
    summary = {k: {"mean": float(np.mean([f[k] for f in flat])), "sd": float(np.std([f[k] for f in flat], ddof=1))
                   if len(flat) > 1 else 0.0} for k in keys}
    for key in ("train_seconds", "featurize_seconds"):
        values = [run[key] for run in runs]
        summary[key] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
    return summary


def _flatten(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def _cell(summary: dict, key: str, scale: float = 100.0, digits: int = 1) -> str:
    if key not in summary:
        return "–"
    return f"{summary[key]['mean'] * scale:.{digits}f} ± {summary[key]['sd'] * scale:.{digits}f}"


def markdown(results: dict, rules: list[str]) -> str:
    lines = ["| config | mAP | VOC07 mAP | P@1 | views (eval) | train img/s | eval img/s | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        s = result["summary"]
        views = "; ".join(sorted(set(result["views"])))
        lines.append(f"| {name} | {_cell(s, 'map')} | {_cell(s, 'map_voc07')} | "
                     f"{_cell(s, rules[0] + '.precision_at_1')} | {views} | "
                     f"{_fmt(result['speed'].get('train_images_per_second'))} | "
                     f"{_fmt(result['speed'].get('eval_images_per_second'))} | {_cell(s, 'train_seconds', 1, 1)} |")
    for rule in rules:
        lines += ["", f"Decision rule `{rule}`:", "",
                  "| config | " + " | ".join(label for _, label in RULE_COLUMNS) + " |",
                  "|---|" + "---|" * len(RULE_COLUMNS)]
        for name, result in results.items():
            s = result["summary"]
            lines.append(f"| {name} | " + " | ".join(_cell(s, f"{rule}.{key}") for key, _ in RULE_COLUMNS) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.1f}"


# --------------------------------------------------------------------------- main

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voc", default=str(DEVDATA_VOC), help="VOC-format folder (default: devdata's VOC2007)")
    parser.add_argument("--split", default="train", help="the pool: ImageSets/Main/<split>.txt")
    parser.add_argument("--configs", default=str(REPO_ROOT / "bench" / "quality.yaml"), help="YAML config file")
    parser.add_argument("--config", action="append", help="'name: key=value key=value' (repeatable)")
    parser.add_argument("--only", nargs="*", help="run only these config names")
    parser.add_argument("--draws", type=int, default=5, help="repeated draws (seeds 0..k-1); at least 3")
    parser.add_argument("--params", default=str(REPO_ROOT / "params.yaml"))
    parser.add_argument("--speed-images", type=int, default=56, help="photos timed for images/s (0: skip)")
    parser.add_argument("--json", help="write all results here")
    args = parser.parse_args(argv)
    if args.draws < 3:
        parser.error("--draws must be at least 3")
    voc = Path(args.voc)
    if not (voc / "ImageSets" / "Main" / f"{args.split}.txt").is_file():
        parser.error(f"{voc}: no ImageSets/Main/{args.split}.txt; pass --voc <VOC folder> --split <name>")

    from fewlabel.params import parse_params, read_params_file
    base_raw = read_params_file(args.params)  # as DVC reads it
    configs = load_configs(args)
    first = parse_params(apply_overrides(base_raw, next(iter(configs.values()))))
    pool = load_pool(voc, args.split, first.data.classes)
    print(f"pool: {len(pool[0])} images of {voc}/ImageSets/Main/{args.split}.txt; {args.draws} draws; "
          f"{len(configs)} configs", file=sys.stderr)

    results, model_cache, speed_cache = {}, {}, {}
    for name, overrides in configs.items():
        params = parse_params(apply_overrides(base_raw, overrides))
        started = time.perf_counter()
        runs = []
        for draw in range(args.draws):
            draw_params = parse_params(apply_overrides(base_raw, {**overrides, "subset.seed": draw}))
            train_rows, eval_rows = draw_split(pool[1], draw_params, draw)
            model_key = json.dumps([draw, {k: v for k, v in sorted(overrides.items())
                                           if not k.startswith(("calibrate.", "evaluate."))}], default=str)
            runs.append(run_config(draw_params, pool, train_rows, eval_rows, model_cache, model_key))
        speed = {}
        if args.speed_images:
            speed_paths = [pool[2][i] for i in range(0, len(pool[2]), max(1, len(pool[2]) // args.speed_images))]
            speed_paths = speed_paths[:args.speed_images + 8]
            speed = config_speed(params, {run["views"] for run in runs}, speed_paths, speed_cache)
        results[name] = {"overrides": overrides, "runs": runs, "summary": summarise(runs), "speed": speed,
                         "views": [run["views"] for run in runs], "rules": [run["rule"] for run in runs]}
        s = results[name]["summary"]
        print(f"{name}: mAP {_cell(s, 'map')} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    rules = [k for k in ("calibrated", "default_threshold", "default_threshold_top1")
             if any(key.startswith(k + ".") for key in next(iter(results.values()))["summary"])]
    table = markdown(results, rules)
    print(f"\nQuality on {voc} ({args.split}: {len(pool[0])} images), {args.draws} draws of "
          f"{first.subset.n_images} training images, the rest scored; mean ± sd over draws.\n")
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"voc": str(voc), "split": args.split, "draws": args.draws,
                                               "results": results, "markdown": table}, indent=2, default=str))


if __name__ == "__main__":
    main()
