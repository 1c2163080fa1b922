"""prepare: the label table ``data/labels.csv`` from a VOC folder's annotations.

Every ``Annotations/*.xml`` is parsed (not only the images the split lists name), giving one
row per image: ``image_id, split, <class>...`` with the VOC codes per class: ``1`` at least
one non-difficult object, ``0`` only difficult objects, ``-1`` absent. ``split`` is the name
of the ImageSets/Main list (``data.train_split`` or ``data.eval_split``) that holds the
image, or ``unused`` when neither does.
"""
from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Iterable

import pandas as pd

from stages.common import PipelineError, run_main, write_csv
from stages.params import load_params

UNUSED = "unused"
PRESENT, DIFFICULT_ONLY, ABSENT = 1, 0, -1

#: One object of an annotation: (class name, difficult).
Object = tuple[str, bool]


def parse_annotation(xml_text: str | bytes, source_name: str) -> tuple[str, list[Object]]:
    """Parse one VOC annotation; return ``(image_id, [(class name, difficult), ...])``.

    The image id is the annotation's file stem (``Annotations/000005.xml`` -> ``000005``),
    which is what ImageSets lists and JPEGImages names. ``source_name`` (the file's path) is
    only used for the id and in error messages.
    """
    image_id = Path(source_name).stem
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as error:
        raise PipelineError(f"{source_name}: is not valid XML ({error}); fix or re-extract this "
                            f"annotation (or delete it together with its image)") from error
    if root.tag != "annotation":
        raise PipelineError(f"{source_name}: the root element is <{root.tag}>, not <annotation>; "
                            f"is this a VOC annotation?")
    objects = []
    for number, node in enumerate(root.findall("object"), start=1):
        name = (node.findtext("name") or "").strip()
        if not name:
            raise PipelineError(f"{source_name}: object #{number} has no <name>; add the class name")
        flag = (node.findtext("difficult") or "0").strip()
        if flag not in ("0", "1"):
            raise PipelineError(f"{source_name}: object #{number} ({name}) has <difficult>{flag}"
                                f"</difficult>; expected 0 or 1")
        objects.append((name, flag == "1"))
    return image_id, objects


def parse_split_list(text: str) -> list[str]:
    """Image ids of an ImageSets/Main list: the first field of each non-empty line."""
    ids = []
    for line in text.splitlines():
        fields = line.split()
        if fields:
            ids.append(fields[0])
    return ids


def assign_splits(split_lists: dict[str, list[str]], sources: dict[str, str] | None = None) -> dict[str, str]:
    """``{image id: split name}`` from ``{split name: ids}``; an id in two splits is an error."""
    sources = sources or {}
    assigned: dict[str, str] = {}
    for split, ids in split_lists.items():
        for image_id in ids:
            other = assigned.get(image_id)
            if other is not None and other != split:
                both = [sources.get(s, s) for s in (other, split)]
                raise PipelineError(
                    f"image {image_id} is listed in both {both[0]} and {both[1]}; the train and "
                    f"eval splits must not overlap (check data.train_split and data.eval_split)")
            assigned[image_id] = split
    return assigned


def unknown_classes(annotations: dict[str, list[Object]], classes: Iterable[str]) -> Counter:
    """Objects per class name that is not in ``classes`` (these are left out of the table)."""
    known = set(classes)
    return Counter(name for objects in annotations.values() for name, _ in objects if name not in known)


def build_label_table(annotations: dict[str, list[Object]], splits: dict[str, str],
                      classes: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """The label table: one row per annotated image, sorted by id.

    ``annotations``: ``{image id: [(class name, difficult), ...]}``; ``splits``: ``{image id:
    split name}`` (images not in it get ``unused``). Objects of classes not in ``classes``
    are ignored here (see :func:`unknown_classes`).
    """
    classes = list(classes)
    column = {name: k for k, name in enumerate(classes)}
    ids = sorted(annotations)
    rows = []
    for image_id in ids:
        codes = [ABSENT] * len(classes)
        for name, difficult in annotations[image_id]:
            k = column.get(name)
            if k is None:
                continue
            code = DIFFICULT_ONLY if difficult else PRESENT
            codes[k] = max(codes[k], code)
        rows.append(codes)
    table = pd.DataFrame(rows, columns=classes, dtype="int8") if rows else \
        pd.DataFrame({c: pd.Series(dtype="int8") for c in classes})
    table.insert(0, "split", [splits.get(i, UNUSED) for i in ids])
    table.insert(0, "image_id", pd.Series(ids, dtype=str))
    return table


def read_voc(voc_dir: Path, train_split: str, eval_split: str
             ) -> tuple[dict[str, list[Object]], dict[str, str]]:
    """Read every annotation and the two split lists of a VOC folder, checking they agree.

    Returns ``(annotations, splits)`` as :func:`build_label_table` takes them.
    """
    if UNUSED in (train_split, eval_split):
        raise PipelineError(f"params.yaml: '{UNUSED}' cannot be a split name (data.train_split / "
                            f"data.eval_split): it marks images in neither split")
    annotations_dir = voc_dir / "Annotations"
    if not annotations_dir.is_dir():
        raise PipelineError(f"{annotations_dir}: not found; run the download stage first "
                            f"(dvc repro download) or check data.source")
    files = sorted(annotations_dir.glob("*.xml"))
    if not files:
        raise PipelineError(f"{annotations_dir}: holds no .xml annotation; check data.source")

    split_lists, sources = {}, {}
    for key, split in (("data.train_split", train_split), ("data.eval_split", eval_split)):
        path = voc_dir / "ImageSets" / "Main" / f"{split}.txt"
        if not path.is_file():
            found = sorted(p.stem for p in path.parent.glob("*.txt") if "_" not in p.stem)
            raise PipelineError(f"{path}: not found, so params.yaml {key}='{split}' names no split "
                                f"list; lists present: {', '.join(found) or 'none'}")
        split_lists[split] = parse_split_list(path.read_text())
        sources[split] = str(path)
    splits = assign_splits(split_lists, sources)

    annotations = {}
    images_dir = voc_dir / "JPEGImages"
    try:
        from tqdm import tqdm
        files = tqdm(files, desc="annotations", unit="file", file=sys.stderr, mininterval=1.0,
                     disable=len(files) < 2000)
    except ImportError:  # pragma: no cover - tqdm ships with dvc
        pass
    for path in files:
        image_id, objects = parse_annotation(path.read_bytes(), str(path))
        image = images_dir / f"{image_id}.jpg"
        if not image.is_file():
            raise PipelineError(f"{image}: not found, but {path} annotates it; restore the image "
                                f"or delete the annotation")
        annotations[image_id] = objects

    for split, ids in split_lists.items():
        missing = [i for i in ids if i not in annotations]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise PipelineError(f"{sources[split]}: lists {len(missing)} image(s) without an annotation "
                                f"in {annotations_dir}: {shown}; restore them or remove them from the list")
    return annotations, splits


def warn_unknown(unknown: Counter, classes: Iterable[str]) -> None:
    """Say (on stderr) which object names were left out because data.classes lacks them."""
    if not unknown:
        return
    listed = ", ".join(f"{name!r} ({count})" for name, count in unknown.most_common())
    print(f"WARNING: {sum(unknown.values())} object(s) have a class not in data.classes and were "
          f"left out: {listed}. Add these names to data.classes in params.yaml to use them "
          f"(or fix the annotations if they are typos).", file=sys.stderr)


def warn_empty_classes(annotations: dict[str, list[Object]], classes: Iterable[str]) -> None:
    """Say (on stderr) which classes of data.classes no annotation has (a typo, often)."""
    seen = {name for objects in annotations.values() for name, _ in objects}
    empty = [name for name in classes if name not in seen]
    if empty:
        print(f"WARNING: no annotation has an object of class {', '.join(repr(c) for c in empty)} "
              f"named in data.classes; its column is all -1 (check the spelling in params.yaml)",
              file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voc", required=True, help="the VOC<year> folder (data/raw/voc)")
    parser.add_argument("--out", required=True, help="the label table to write (data/labels.csv)")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    data = load_params(args.params).data
    annotations, splits = read_voc(Path(args.voc), data.train_split, data.eval_split)
    warn_unknown(unknown_classes(annotations, data.classes), data.classes)
    warn_empty_classes(annotations, data.classes)
    table = build_label_table(annotations, splits, data.classes)
    write_csv(args.out, table)
    counts = table["split"].value_counts()
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in (data.train_split, data.eval_split, UNUSED)
                        if counts.get(s, 0) or s != UNUSED)
    print(f"{args.out}: {len(table)} images ({summary}), {len(data.classes)} classes", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
