"""Scores of pooled-feature configurations over draws (issue 22 phase 1; see bench/pooling.py).

    python bench/pooling.py evaluate --configs 'lite0@352:avg' 'lite0@352:gem3+lite2@384:gem3|kmean' --draws 5
    python bench/pooling.py evaluate --draws 5 --configs '# Poolings' lite0@352:avg lite0@352:max ...

A config is blocks joined by '+', each ``backbone@size:pooling`` (poolings: bench/pooling.py;
``backbone@size&size:pooling``: the mean of the sizes' vectors, as the product's ``combine: mean``),
then optionally ``|method`` for several blocks: ``concat`` (default: plain concatenation, then
the product's model), ``l2cat`` (each block signed-sqrt then L2-normalised, concatenated, then
the product's model with ``svm.scaler: none`` so the square root is not taken twice) or
``kmean`` (the mean of the per-block kernels: each block through the product's scaler and
KernelMap with its own median gamma, then the product's per-class SVC(kernel='precomputed')).
A suffix ``;C=10`` (after the method) changes svm.C (a side study; the default is params.yaml's).
Per (config, draw) results are kept in bench/results/pooling_runs.json, so reruns only
compute what is new. An argument '# title' starts a table of its own. ``--json`` writes the summary of the configs asked for.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

import numpy as np

from pooling import CACHE, POOLINGS, RESULTS, default_params, load_devdata_pool, load_job, pooled

RUNS = RESULTS / "pooling_runs.json"
SPEED = RESULTS / "pooling_speed.json"
N_TRAIN = 750


class Data:
    """The pool, its draws and the cached pooled features (loaded once per job)."""

    def __init__(self, draws: int):
        from quality import draw_split
        from fewlabel.artifacts import training_targets
        self.params = default_params()
        self.ids, self.labels, _ = load_devdata_pool()
        self.targets = training_targets(self.labels)
        self.splits = [draw_split(self.labels, replace(self.params, subset=replace(self.params.subset, seed=d)), d)
                       for d in range(draws)]
        self.jobs: dict[str, tuple[dict, dict]] = {}

    def job(self, job: str) -> tuple[dict, dict]:
        if job not in self.jobs:
            self.jobs[job] = load_job(job, self.ids)
        return self.jobs[job]

    def block(self, spec: str) -> np.ndarray:
        """``lite2@384:avg``; ``lite2@260&384:avg``: the mean of the sizes' vectors (the product's
        multi-size ``combine: mean``)."""
        jobs, pooling = spec.split(":")
        blocks = [pooled(self.job(job)[0], pooling).astype(np.float64) for job in expand(jobs)]
        return np.ascontiguousarray(np.mean(blocks, axis=0), dtype=np.float32)


def expand(jobs: str) -> list[str]:
    """'lite2@260&384' -> ['lite2@260', 'lite2@384']."""
    backbone, _, sizes = jobs.partition("@")
    return [f"{backbone}@{size}" for size in sizes.split("&")]


def parse(config: str) -> tuple[list[str], str]:
    blocks, _, method = config.partition("|")
    method = method.split(";")[0]
    blocks = blocks.split("+")
    for spec in blocks:
        job, _, pooling = spec.partition(":")
        if pooling not in POOLINGS or "@" not in job:
            raise SystemExit(f"{config}: block '{spec}' is not backbone@size:pooling ({', '.join(POOLINGS)})")
    method = method or "concat"
    if method not in ("concat", "l2cat", "kmean"):
        raise SystemExit(f"{config}: method '{method}' is not concat, l2cat or kmean")
    return blocks, method


def svm_overrides(config: str) -> dict:
    """'...|kmean;C=10' -> {'C': 10.0}: svm.* settings other than params.yaml's (a side study)."""
    _, _, method = config.partition("|")
    out = {}
    for item in method.split(";")[1:]:
        key, _, value = item.partition("=")
        out[key] = float(value) if key == "C" else value
    return out


def l2_blocks(blocks: list[np.ndarray]) -> np.ndarray:
    from fewlabel.model.svm import signed_sqrt
    out = []
    for block in blocks:
        rooted = signed_sqrt(block.astype(np.float64))
        out.append(rooted / np.maximum(np.linalg.norm(rooted, axis=1, keepdims=True), 1e-12))
    return np.concatenate(out, axis=1)


def probabilities(blocks: list[np.ndarray], method: str, train: np.ndarray, test: np.ndarray,
                  targets: np.ndarray, svm) -> np.ndarray:
    """(len(test), C) positive-class probabilities of the model trained on ``train`` rows."""
    from fewlabel.model.svm import build_model, positive_probabilities
    if method == "kmean":
        train_kernel, test_kernel = 0.0, 0.0
        for block in blocks:
            prefix = build_model(svm)[:2]  # the product's scaler + KernelMap (median gamma of this block)
            train_kernel = train_kernel + prefix.fit_transform(block[train]) / len(blocks)
            test_kernel = test_kernel + prefix.transform(block[test]) / len(blocks)
        classifier = build_model(svm)[-1]  # MultiOutputClassifier(SVC(kernel='precomputed', probability=True))
        classifier.fit(train_kernel, targets[train])
        return np.column_stack([p[:, 1] for p in classifier.predict_proba(test_kernel)])
    if method == "l2cat" and len(blocks) > 1:
        features, svm = l2_blocks(blocks), replace(svm, scaler="none")
    else:
        features = np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]
    model = build_model(svm)
    model.fit(features[train], targets[train])
    return positive_probabilities(model, features[test])


def score(data: Data, config: str, draw: int) -> dict:
    from fewlabel.metrics import mean_ap, precision_at_k
    from fewlabel.model.svm import for_training_set
    blocks, method = parse(config)
    features = [data.block(spec) for spec in blocks]
    train, test = data.splits[draw]
    svm = for_training_set(replace(data.params.svm, **svm_overrides(config)), len(train))
    started = time.perf_counter()
    probs = probabilities(features, method, train, test, data.targets, svm)
    labels = data.labels[test]
    return {"map": mean_ap(labels, probs), "map_voc07": mean_ap(labels, probs, voc07=True),
            "p_at_1": precision_at_k(labels, probs, (1,))[1], "train_seconds": time.perf_counter() - started,
            "dims": int(sum(f.shape[1] for f in features))}


def check_kmean(data: Data, spec: str, draw: int = 0) -> float:
    """Max abs difference of the probabilities of the kernel-mean path on one block and the
    product's model (build_model on the features) for draw ``draw``."""
    from fewlabel.model.svm import for_training_set
    block = data.block(spec)
    train, test = data.splits[draw]
    svm = for_training_set(data.params.svm, len(train))
    product = probabilities([block], "concat", train, test, data.targets, svm)
    kernel_mean = probabilities([block], "kmean", train, test, data.targets, svm)
    diff = float(np.abs(product - kernel_mean).max())
    print(f"kmean check on {spec}, draw {draw}: max |p(kmean, one block) - p(build_model)| = {diff:.2e}")
    return diff


def images_per_second(data: Data, config: str) -> float:
    """Extraction speed of the config's (backbone, size) jobs, run one after the other: 1 / sum(1/rate),
    each job's rate that of its full extraction (2,334 photos, image + mirror, on a shared CPU: the
    load differed between jobs; ``bench/pooling.py speed`` times some back to back)."""
    jobs = dict.fromkeys(job for spec in parse(config)[0] for job in expand(spec.split(":")[0]))
    return 1.0 / sum(1.0 / data.job(job)[1]["steady_images_per_second"] for job in jobs)


def summarise(data: Data, config: str, runs: list[dict]) -> dict:
    out = {"config": config, "draws": len(runs), "dims": runs[0]["dims"],
           "images_per_second": images_per_second(data, config)}
    for key in ("map", "map_voc07", "p_at_1", "train_seconds"):
        values = [run[key] for run in runs]
        out[key] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                    "per_draw": values}
    return out


def cell(summary: dict, key: str) -> str:
    return f"{summary[key]['mean'] * 100:.1f} ± {summary[key]['sd'] * 100:.1f}"


def paired(summary: dict, reference: dict | None) -> str:
    """mAP minus the reference's, per draw (same draws): mean ± sd of the differences."""
    if reference is None:
        return "–"
    deltas = np.subtract(summary["map"]["per_draw"], reference["map"]["per_draw"]) * 100
    return f"{deltas.mean():+.2f} ± {deltas.std(ddof=1):.2f}"


def markdown(summaries: list[dict], reference: dict | None = None) -> str:
    lines = ["| config | dims | mAP | Δ mAP (paired, vs 1st row) | VOC07 mAP | P@1 | extraction img/s | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        config = s["config"].replace("|", "\\|")
        lines.append(f"| `{config}` | {s['dims']} | {cell(s, 'map')} | {paired(s, reference)} | "
                     f"{cell(s, 'map_voc07')} | {cell(s, 'p_at_1')} | {s['images_per_second']:.1f} | "
                     f"{s['train_seconds']['mean']:.1f} |")
    return "\n".join(lines)


def save_run(config: str, draw: int, result: dict) -> None:
    """Merge one (config, draw) result into RUNS (another evaluate may have written meanwhile)."""
    runs = json.loads(RUNS.read_text()) if RUNS.exists() else {}
    runs.setdefault(config, {})[str(draw)] = result
    tmp = RUNS.with_suffix(".tmp")
    tmp.write_text(json.dumps(runs, indent=1))
    tmp.replace(RUNS)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="*", default=[])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--check-kmean", metavar="SPEC", help="compare the kernel-mean path with the product's "
                        "model on one block, e.g. lite0@352:avg, then exit")
    parser.add_argument("--reference", default="first", help="the config Δ mAP is paired against; 'first': "
                        "the first row of each table")
    parser.add_argument("--json", help="write the summaries and the markdown table here")
    args = parser.parse_args(argv)
    data = Data(args.draws)
    if args.check_kmean:
        check_kmean(data, args.check_kmean)
        return
    runs = json.loads(RUNS.read_text()) if RUNS.exists() else {}
    summaries, sections = [], []
    for config in args.configs:
        if config.startswith("#"):  # '# title': the following configs form a table of their own
            sections.append((config.lstrip("# ").strip(), len(summaries)))
            continue
        missing = [job for spec in parse(config)[0] for job in expand(spec.split(":")[0])
                   if not (CACHE / f"{job}.npz").exists()]
        if missing:
            print(f"{config}: skipped, not extracted yet: {', '.join(missing)}", file=sys.stderr)
            continue
        per_draw = runs.setdefault(config, {})
        for draw in range(args.draws):
            if str(draw) not in per_draw:
                per_draw[str(draw)] = score(data, config, draw)
                save_run(config, draw, per_draw[str(draw)])
        summary = summarise(data, config, [per_draw[str(d)] for d in range(args.draws)])
        summaries.append(summary)
        print(f"{config}: mAP {cell(summary, 'map')}, VOC07 {cell(summary, 'map_voc07')}, "
              f"P@1 {cell(summary, 'p_at_1')}", file=sys.stderr, flush=True)
    reference = [s for s in summaries if s["config"] == args.reference]
    reference = reference[0] if reference else None
    sections = sections or [("", 0)]
    if sections[0][1] > 0:
        sections.insert(0, ("", 0))
    bounds = [start for _, start in sections] + [len(summaries)]
    table = "\n\n".join((f"**{title}**\n\n" if title else "")
                         + markdown(summaries[a:b], summaries[a] if args.reference == "first" else reference)
                         for (title, _), a, b in zip(sections, bounds, bounds[1:]) if b > a)
    print(table)
    if args.json:
        from pathlib import Path
        Path(args.json).write_text(json.dumps({"draws": args.draws, "n_train": N_TRAIN, "reference": args.reference,
                                               "speed": json.loads(SPEED.read_text()) if SPEED.exists() else {},
                                               "extraction": {job: info for job, (_, info) in data.jobs.items()},
                                               "summaries": summaries,
                                               "markdown": table}, indent=1))
