"""The ``fewlabel`` command.

    fewlabel predict photos/ more/*.jpg one.png [--out predictions.csv|.parquet] [--top-k 3]
    fewlabel predict --list files.txt --out labels.parquet --engine ray
    fewlabel predict photos/ --heatmaps heatmaps/ [--heatmaps-raw]
    fewlabel explain photo.jpg [--run .] [--out photo.heatmap.png]
    fewlabel cache verify [--drop] [LOCATION]
    fewlabel labels add export.json [--voc data/raw/voc] [--list suggestions/labelled.txt]
    fewlabel labels push | pull [--url URL] [--token KEY] [--project TITLE]

``python -m stages.predict`` takes the same options. Exit codes: 0 every input labelled;
1 an error (its message says what to fix), or some inputs skipped (each named on stderr,
the others labelled and written); 2 a usage error; 130 interrupted (nothing half-written).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from fewlabel import tf_logs
from fewlabel.errors import PipelineError, UsageError, run_main
from fewlabel.features.engine import resolve_engine
from fewlabel.heatmaps import DEFAULT_METHOD, METHODS
from fewlabel.params import ENGINES, load_params
from fewlabel.data.images import expand_inputs, read_file_list
from fewlabel.overlays import check_output_folder
from fewlabel.predict import CHUNK_IMAGES, label_lines
from fewlabel.tables import TableWriter
from fewlabel.progress import ProgressBar

PREDICT_HELP = "label new photos with the trained model and its calibrated decision rule"


def add_predict_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``fewlabel predict`` (and ``python -m stages.predict``)."""
    parser.add_argument("inputs", nargs="*", help="image files, folders or glob patterns")
    parser.add_argument("--list", action="append", default=[], metavar="FILE",
                        help="a text file of image paths, one per line (repeatable)")
    parser.add_argument("--out", help="write the table to this CSV or Parquet file too (by its suffix); its "
                                      "folder must exist and be writable (checked before any work)")
    parser.add_argument("--top-k", type=int, default=3, help="how many top classes to list (default 3)")
    parser.add_argument("--engine", choices=ENGINES,
                        help="where the images are labelled (default: features.engine in params.yaml)")
    parser.add_argument("--workers", type=int, help="ray: workers in the pool (default: features.workers)")
    parser.add_argument("--chunk-size", type=int, default=CHUNK_IMAGES,
                        help=f"images per chunk of work and of output (default {CHUNK_IMAGES})")
    parser.add_argument("--quiet", action="store_true",
                        help="do not print a line per image (the progress bar and the summary stay)")
    parser.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    parser.add_argument("--heatmaps", metavar="DIR",
                        help="also write, per image, DIR/<name>.png: where in the photo each predicted class is "
                             "(one CNN pass gives labels and maps; runs in this process; docs/heatmaps.md)")
    parser.add_argument("--heatmaps-raw", action="store_true",
                        help="with --heatmaps: also DIR/<name>.npz, every class's map at the photo's size")
    parser.add_argument("--heatmap-method", choices=METHODS, default=DEFAULT_METHOD,
                        help=f"how the map's locations are scored (default {DEFAULT_METHOD}: it points best, "
                             f"docs/heatmaps.md)")
    parser.add_argument("--model", default="models/model.joblib")
    parser.add_argument("--thresholds", default="models/thresholds.json")
    parser.add_argument("--meta", default="data/features/meta.json",
                        help="the features the pipeline uses; the model must match them")
    parser.add_argument("--params", default="params.yaml")
    return parser


def predict(args: argparse.Namespace) -> None:
    """Label the inputs of ``args`` (see :func:`add_predict_arguments`); exit 1 if any was skipped."""
    from fewlabel.api import load

    params = load_params(args.params)
    classes = params.data.classes
    if not 1 <= args.top_k <= len(classes):
        raise UsageError(f"--top-k must be between 1 and {len(classes)} (the classes of data.classes), got "
                         f"{args.top_k}")
    if args.chunk_size < 1 or (args.workers is not None and args.workers < 1):
        raise UsageError("--chunk-size and --workers must be at least 1")
    if not args.inputs and not args.list:
        raise UsageError("no input: give image files, folders or glob patterns, or --list FILE")
    if args.heatmaps_raw and not args.heatmaps:
        raise UsageError("--heatmaps-raw writes beside the heatmap images: give --heatmaps DIR too")
    if args.heatmaps and args.engine == "ray":
        raise UsageError("--heatmaps runs in this process: drop --engine ray (or label with ray first, without "
                            "--heatmaps)")
    writer = TableWriter(args.out)  # a bad --out fails here, before any work
    folder = check_output_folder(args.heatmaps, "--heatmaps") if args.heatmaps else None
    engine = resolve_engine(args.engine or params.features.engine, args.workers or params.features.workers,
                            setting="--engine" if args.engine else "features.engine")
    classifier = load(".", model=args.model, thresholds=args.thresholds, meta=args.meta, params=args.params)

    paths, problems = expand_inputs(args.inputs + [p for listed in args.list for p in read_file_list(listed)])
    for item, problem in problems:
        print(f"error: {item}: {problem}", file=sys.stderr)
    if not paths:
        raise PipelineError("no image among the inputs; give JPEG/PNG files, folders or globs")

    labelled = cached = done = 0
    within_chunk = 0.0  # images of the current chunk extracted so far (moves the bar per batch)

    def advance(n: float) -> None:
        nonlocal within_chunk
        within_chunk += n
        bar.to(done + int(within_chunk))

    with writer, ProgressBar(len(paths), f"predict ({engine.label})", not args.no_progress) as bar:
        chunks = (_heatmap_chunks(classifier, paths, args, folder) if folder is not None else
                  classifier.labelled_chunks(paths, args.top_k, args.chunk_size, engine, advance))
        for table, bad, hits in chunks:
            for path, problem in bad:
                bar.write(f"error: {path}: {problem}", file=sys.stderr)
            problems += bad
            if not args.quiet:
                for line in label_lines(table, classes, args.top_k):
                    bar.write(line)
            writer.write(table)
            labelled, cached, done = labelled + len(table), cached + hits, done + len(table) + len(bad)
            within_chunk = 0.0
            bar.to(done)
        if not labelled:  # raised inside the block: no output file is left behind
            raise PipelineError("no readable image among the inputs; give JPEG/PNG files, folders or globs")
    counts = f"{labelled} images labelled, {len(problems)} skipped; {cached} served from the feature cache"
    print(f"wrote {args.out} ({counts})" if args.out else f"predict: {counts}")
    if problems:
        sys.exit(1)


def _heatmap_chunks(classifier, paths: list[str], args: argparse.Namespace, folder):
    """:meth:`Classifier.labelled_chunks`'s triples, from the heatmap pass (nothing served from the
    cache: the maps need the CNN), writing each image's overlay (and raw maps) into ``folder``."""
    from fewlabel.model.rules import apply_rule
    from fewlabel.overlays import output_names, shown_classes, write_overlay, write_raw
    from fewlabel.predict import label_images

    taken: set[str] = set()
    for heatmaps, bad in classifier.heatmap_chunks(paths, args.heatmap_method, args.chunk_size):
        probabilities = np.array([h.probabilities for h in heatmaps]).reshape(len(heatmaps), len(classifier.classes))
        table = label_images(probabilities, classifier.rule, classifier.classes, args.top_k)
        table.insert(0, "path", [h.path for h in heatmaps])
        predicted = apply_rule(probabilities, classifier.rule)
        for heatmap, labels, name in zip(heatmaps, predicted, output_names([h.path for h in heatmaps], taken)):
            write_overlay(folder / f"{name}.png", heatmap, shown_classes(labels, heatmap.probabilities),
                          classifier.classes)
            if args.heatmaps_raw:
                write_raw(folder / f"{name}.npz", heatmap, classifier.classes)
        yield table, [(path, problem) for path, problem in bad], 0


EXPLAIN_HELP = "show where in a photo the model sees each predicted class (a heatmap overlay PNG)"


def add_explain_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``fewlabel explain``."""
    parser.add_argument("image", help="a photo (JPEG, PNG, ...)")
    parser.add_argument("--run", default=".", help="the trained run's folder (where dvc repro ran; default .)")
    parser.add_argument("--out", help="the PNG to write (default: <image name>.heatmap.png in the current folder)")
    parser.add_argument("--classes", nargs="+", metavar="CLASS",
                        help="the classes to show (default: the predicted ones, else the most probable)")
    parser.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                        help=f"how the map's locations are scored (default {DEFAULT_METHOD}; docs/heatmaps.md)")
    return parser


def explain(args: argparse.Namespace) -> None:
    """``fewlabel explain``: one photo's overlay PNG and its labels."""
    from pathlib import Path

    from fewlabel.api import load
    from fewlabel.model.rules import apply_rule
    from fewlabel.overlays import shown_classes, write_overlay
    from fewlabel.predict import readable_images

    out = Path(args.out or f"{Path(args.image).stem}.heatmap.png")
    if out.suffix.lower() != ".png":
        raise PipelineError(f"--out {out}: must end in .png")
    if not out.parent.is_dir():
        raise PipelineError(f"--out {out}: the folder {out.parent} does not exist; create it first "
                            f"(mkdir -p {out.parent})")
    if not Path(args.image).is_file():
        raise PipelineError(f"{args.image}: no such file; give the path to a photo")
    _, _, bad = readable_images([args.image])
    if bad:
        raise PipelineError(f"{args.image}: {bad[0][1].removesuffix('; skipped')}")
    classifier = load(args.run)
    unknown = sorted(set(args.classes or ()) - set(classifier.classes))
    if unknown:
        raise PipelineError(f"--classes: {', '.join(unknown)} not among the model's classes "
                            f"({', '.join(classifier.classes)})")
    heatmap = next(iter(classifier.heatmaps([args.image], args.method)))
    predicted = apply_rule(heatmap.probabilities[None], classifier.rule)[0]
    shown = ([classifier.classes.index(name) for name in args.classes] if args.classes
             else shown_classes(predicted, heatmap.probabilities))
    write_overlay(out, heatmap, shown, classifier.classes)
    labels = " ".join(name for name, on in zip(classifier.classes, predicted) if on) or "(no label)"
    print(f"{args.image}: {labels}; wrote {out} ("
          + ", ".join(f"{classifier.classes[c]} {heatmap.probabilities[c]:.2f}" for c in shown) + ")")


def add_cache_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``fewlabel cache``."""
    from fewlabel.features.cache import FEATURE_CACHE_ENV

    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = actions.add_parser("verify", help="check every entry's checksum and vector; list what is not sound")
    verify.add_argument("location", nargs="?", default=None,
                        help=f"a cache root or one cache folder, a folder or URL (default: ${FEATURE_CACHE_ENV}, "
                             f"else <user cache>/features); the folder above a cache root finds it below")
    verify.add_argument("--drop", action="store_true",
                        help="remove the entries that are not sound (they are extracted again when next needed); "
                             "what is not the cache's is never removed")
    verify.add_argument("--limit", type=int, default=50, help="problems listed one by one (default 50)")
    return parser


def cache(args: argparse.Namespace) -> None:
    """``fewlabel cache verify``: exit 1 when something is not sound and ``--drop`` was not given."""
    from fewlabel.features.cache_verify import verify_cache

    report = verify_cache(args.location, drop=args.drop)
    for found in (report.problems, report.left_alone):
        for path, problem in found[:args.limit]:
            print(f"{path}: {problem}" + (" (dropped)" if args.drop and found is report.problems else ""))
        if len(found) > args.limit:
            print(f"... and {len(found) - args.limit} more")
    print(report.summary())
    if report.problems and not args.drop:
        sys.exit(1)


def add_labels_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``fewlabel labels``."""
    from fewlabel.active.label_studio import DEFAULT_TITLE, TOKEN_ENV, URL_ENV

    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def server(command):
        command.add_argument("--url", help=f"the Label Studio server (default: ${URL_ENV})")
        command.add_argument("--token", help=f"your Label Studio access token (default: ${TOKEN_ENV})")
        command.add_argument("--project", default=DEFAULT_TITLE, help=f"the project's title (default: {DEFAULT_TITLE})")

    def adding(command):
        command.add_argument("--voc", default="data/raw/voc", help="the data set's VOC folder (default: data/raw/voc)")
        command.add_argument("--list", default="suggestions/labelled.txt",
                             help="the list of labelled ids the subset stage adds (default: suggestions/labelled.txt)")
        command.add_argument("--overwrite", action="store_true",
                             help="change annotations that say other classes (a backup is kept beside each)")
        command.add_argument("--params", default="params.yaml")

    add = actions.add_parser("add", help="write a Label Studio export of the suggestions into the data set")
    add.add_argument("export", help="the Label Studio project exported as JSON (or JSON-MIN)")
    add.add_argument("--control", default="labels",
                     help="the name of the <Choices> control of your labelling config (default: labels)")
    adding(add)
    push = actions.add_parser("push", help="create or update the Label Studio project of the suggestions")
    push.add_argument("--tasks", default="suggestions/label_studio.json")
    push.add_argument("--config", default="suggestions/label_studio_config.xml")
    server(push)
    pull = actions.add_parser("pull", help="export the Label Studio project and add its labels (as `labels add`)")
    pull.add_argument("--out", default="suggestions/label_studio_export.json",
                      help="where the export is saved (default: suggestions/label_studio_export.json)")
    server(pull)
    adding(pull)
    return parser


def labels(args: argparse.Namespace) -> None:
    """``fewlabel labels add|push|pull``: annotations written, ids listed; then `dvc exp run` trains on them."""
    from fewlabel.active import label_studio
    from fewlabel.active.label_import import add_labels

    if args.action == "push":
        client = label_studio.Client.connect(args.url, args.token)
        done = label_studio.push(client, args.tasks, args.config, args.project)
        storages = "".join(f"; Local Storage added: {folder}" for folder in done.storages)
        print(f"project '{args.project}' ({'created' if done.created else 'updated'}): {client.url}/projects/"
              f"{done.project_id}; {done.imported} task(s) imported, {done.already} already there{storages}")
        return
    export, control = args.export if args.action == "add" else None, getattr(args, "control", "labels")
    if args.action == "pull":
        export, found = label_studio.pull(label_studio.Client.connect(args.url, args.token), args.out, args.project)
        control = found or control
        print(f"{export}: the project '{args.project}' exported")
    done = add_labels(export, args.voc, args.list, load_params(args.params).data.classes, args.overwrite, control)
    print(f"{len(done.written)} annotation(s) written to {args.voc}/Annotations, {len(done.unchanged)} already "
          f"there; {len(done.skipped)} task(s) skipped, {len(done.open)} not labelled yet; ids listed in "
          f"{args.list}." + "".join(f" Backup: {path}." for path in done.backups) +
          f" Next: git add {args.list} && git commit, then dvc exp run")


def parser() -> argparse.ArgumentParser:
    """``fewlabel`` and its subcommands."""
    command = argparse.ArgumentParser(prog="fewlabel", description="Few-label multilabel image classification.")
    commands = command.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_predict_arguments(commands.add_parser("predict", help=PREDICT_HELP, description=PREDICT_HELP + "."))
    add_explain_arguments(commands.add_parser("explain", help=EXPLAIN_HELP, description=EXPLAIN_HELP + "."))
    add_cache_arguments(commands.add_parser("cache", help="maintain the per-image feature cache",
                                            description="Maintain the per-image feature cache."))
    add_labels_arguments(commands.add_parser("labels", help="fold labelled suggestions into the data set",
                                             description="Fold labelled suggestions into the data set."))
    return command


def main(argv: list[str] | None = None) -> None:
    """The console script ``fewlabel`` (and ``python -m fewlabel``)."""
    tf_logs.install()  # before anything imports TensorFlow
    args = parser().parse_args(argv)
    handlers = {"predict": predict, "explain": explain, "cache": cache, "labels": labels}
    run_main(lambda: handlers[args.command](args))


if __name__ == "__main__":
    main()
