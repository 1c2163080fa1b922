"""prepare: the label table ``data/labels.csv`` from a VOC folder's annotations.

Every ``Annotations/*.xml`` is parsed (not only the images the split lists name), giving one
row per image: ``image_id, split, <class>...`` with the VOC codes per class: ``1`` at least
one non-difficult object, ``0`` only difficult objects, ``-1`` absent. ``split`` is the name
of the ImageSets/Main list (``data.train_split`` or ``data.eval_split``) that holds the
image, or ``unused`` when neither does. ``image_file`` is the image's file name in
``JPEGImages`` (``<filename>`` of the XML, else ``<id>.<any image extension>``), so exports of
labelling tools (CVAT, Label Studio) with PNG or ``.JPG`` files work as they are.

Class names match ``data.classes`` after stripping spaces and case-folding (a warning lists
the names that needed it). Every bad annotation is reported in one error, not one per run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fewlabel.data.voc import (
    UNUSED,
    build_label_table,
    class_matcher,
    normalised_names,
    read_voc,
    unknown_classes,
    warn_empty_classes,
    warn_no_objects,
    warn_normalised,
    warn_unknown,
)
from fewlabel.errors import run_main
from fewlabel.io import write_csv
from fewlabel.params import load_params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voc", required=True, help="the VOC<year> folder (data/raw/voc)")
    parser.add_argument("--out", required=True, help="the label table to write (data/labels.csv)")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    data = load_params(args.params).data
    class_matcher(data.classes)  # classes that differ only in case fail before any reading
    voc = read_voc(Path(args.voc), data.train_split, data.eval_split, data.skip_no_objects)
    warn_no_objects(voc.no_objects, data.skip_no_objects)
    warn_normalised(normalised_names(voc.annotations, data.classes))
    warn_unknown(unknown_classes(voc.annotations, data.classes), data.classes)
    warn_empty_classes(voc.annotations, data.classes)
    table = build_label_table(voc.annotations, voc.splits, data.classes, voc.image_files)
    write_csv(args.out, table)
    counts = table["split"].value_counts()
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in (data.train_split, data.eval_split, UNUSED)
                        if counts.get(s, 0) or s != UNUSED)
    print(f"{args.out}: {len(table)} images ({summary}), {len(data.classes)} classes", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
