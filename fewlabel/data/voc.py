"""Reading a VOC-format dataset: annotations (XML), split lists, class names, and the label
table ``image_id, split, <class>...`` (1 present, 0 difficult only, -1 absent).
"""
from __future__ import annotations

import difflib
import os
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Iterable, NamedTuple

import pandas as pd

from fewlabel.errors import PipelineError, capped_list

UNUSED = "unused"
PRESENT, DIFFICULT_ONLY, ABSENT = 1, 0, -1

#: Image files the feature extractor decodes (tf.io.decode_image), in order of preference
#: when several files share an annotation's id.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
#: One object of an annotation: (class name as written, difficult).
Object = tuple[str, bool]


class Annotation(NamedTuple):
    """One parsed annotation: the image id, its objects, and its ``<filename>`` ('' if none)."""
    image_id: str
    objects: list[Object]
    filename: str


def parse_annotation(xml_text: str | bytes, source_name: str) -> Annotation:
    """Parse one VOC annotation; return ``(image_id, [(class name, difficult), ...], filename)``.

    The image id is the annotation's file stem (``Annotations/000005.xml`` -> ``000005``),
    which is what ImageSets lists. Class names are kept as written (see :func:`match_class`).
    ``source_name`` (the file's path) is only used for the id and in error messages.
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
        name = node.findtext("name") or ""
        if not name.strip():
            raise PipelineError(f"{source_name}: object #{number} has no <name>; add the class name")
        flag = (node.findtext("difficult") or "0").strip()
        if flag not in ("0", "1"):
            raise PipelineError(f"{source_name}: object #{number} ({name.strip()}) has <difficult>{flag}"
                                f"</difficult>; expected 0 or 1")
        objects.append((name, flag == "1"))
    return Annotation(image_id, objects, (root.findtext("filename") or "").strip())


def class_matcher(classes: Iterable[str]) -> dict[str, str]:
    """``{normalised name: class}`` for :func:`match_class`; two classes that differ only in
    case or spaces are an error (a name in the XML could not tell them apart)."""
    matcher: dict[str, str] = {}
    for name in classes:
        key = name.strip().casefold()
        if key in matcher:
            raise PipelineError(f"params.yaml: data.classes has both '{matcher[key]}' and '{name}', which "
                                f"differ only in case or spaces; keep one of them")
        matcher[key] = name
    return matcher


def match_class(name: str, matcher: dict[str, str]) -> str | None:
    """The class of data.classes that an XML ``<name>`` means, ignoring case and surrounding
    spaces (``' Dog '`` -> ``dog``), or None for a name not in data.classes."""
    return matcher.get(name.strip().casefold())


def resolve_image_file(image_id: str, filename: str, images: dict[str, str]) -> str | None:
    """The file in JPEGImages that an annotation describes, or None.

    ``images`` maps each JPEGImages file name, lower-cased, to its real name. The XML's
    ``<filename>`` wins (CVAT and Label Studio write ``.png``, ``.jpeg`` or ``.JPG`` there;
    only its last path part counts); else ``<id>`` with any image extension, in any case.
    """
    if filename:
        base = filename.replace("\\", "/").rsplit("/", 1)[-1]
        if os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS and base.lower() in images:
            return images[base.lower()]
    for extension in IMAGE_EXTENSIONS:
        found = images.get(f"{image_id}{extension}".lower())
        if found is not None:
            return found
    return None


def list_images(images_dir: Path) -> dict[str, str]:
    """``{lower-cased file name: file name}`` of the image files in ``images_dir``."""
    return {entry.name.lower(): entry.name for entry in os.scandir(images_dir)
            if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file()}


def parse_split_list(text: str) -> list[str]:
    """Image ids of an ImageSets/Main list: the first field of each non-empty line."""
    ids = []
    for line in text.splitlines():
        fields = line.split()
        if fields:
            ids.append(fields[0])
    return ids


def read_split_list(path: str | Path) -> list[str]:
    """Image ids of the ImageSets/Main list file ``path``: UTF-8, with or without a byte order
    mark (Windows editors add one), any line endings."""
    try:
        return parse_split_list(Path(path).read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as error:
        raise PipelineError(f"{path}: not a UTF-8 text file ({error.reason} at byte {error.start}); "
                            f"save the list as UTF-8, one image id per line") from error


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
    """Objects per class name (stripped) that no class of ``classes`` matches; these are left
    out of the table."""
    matcher = class_matcher(classes)
    return Counter(name.strip() for objects in annotations.values() for name, _ in objects
                   if match_class(name, matcher) is None)


def normalised_names(annotations: dict[str, list[Object]], classes: Iterable[str]) -> Counter:
    """Objects per ``(name as written, class)`` where the two differ (case or spaces)."""
    matcher = class_matcher(classes)
    return Counter((name, match_class(name, matcher)) for objects in annotations.values()
                   for name, _ in objects if match_class(name, matcher) not in (None, name))


def build_label_table(annotations: dict[str, list[Object]], splits: dict[str, str],
                      classes: tuple[str, ...] | list[str],
                      image_files: dict[str, str] | None = None) -> pd.DataFrame:
    """The label table: one row per annotated image, sorted by id.

    ``annotations``: ``{image id: [(class name, difficult), ...]}``; ``splits``: ``{image id:
    split name}`` (images not in it get ``unused``); ``image_files``: ``{image id: file name
    in JPEGImages}``, written as the ``image_file`` column when given. Names match classes
    as :func:`match_class` says; objects of other classes are ignored here (see
    :func:`unknown_classes`).
    """
    classes = list(classes)
    matcher = class_matcher(classes)
    column = {name: k for k, name in enumerate(classes)}
    ids = sorted(annotations)
    rows = []
    for image_id in ids:
        codes = [ABSENT] * len(classes)
        for name, difficult in annotations[image_id]:
            k = column.get(match_class(name, matcher))
            if k is None:
                continue
            code = DIFFICULT_ONLY if difficult else PRESENT
            codes[k] = max(codes[k], code)
        rows.append(codes)
    table = pd.DataFrame(rows, columns=classes, dtype="int8") if rows else \
        pd.DataFrame({c: pd.Series(dtype="int8") for c in classes})
    if image_files is not None:
        table.insert(0, "image_file", [image_files[i] for i in ids])
    table.insert(0, "split", [splits.get(i, UNUSED) for i in ids])
    table.insert(0, "image_id", pd.Series(ids, dtype=str))
    return table


class VocLabels(NamedTuple):
    """What :func:`read_voc` reads: ``annotations`` and ``image_files`` by image id, the
    ``splits`` of the listed images, and the annotation files with no ``<object>``."""
    annotations: dict[str, list[Object]]
    splits: dict[str, str]
    image_files: dict[str, str]
    no_objects: list[Path]


def read_voc(voc_dir: Path, train_split: str, eval_split: str, skip_no_objects: bool = False) -> VocLabels:
    """Read every annotation and the two split lists of a VOC folder, checking they agree.

    Every unreadable annotation and every annotation without its image is collected, and
    one error lists them all (up to :data:`MAX_REPORTED`). ``skip_no_objects``: leave out
    the images whose annotation has no ``<object>`` (else they are rows with every class
    absent).
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
    images_dir = voc_dir / "JPEGImages"
    if not images_dir.is_dir():
        raise PipelineError(f"{images_dir}: not found; a VOC folder keeps its images there (rename "
                            f"the export's image folder to JPEGImages)")

    split_lists, sources = {}, {}
    for key, split in (("data.train_split", train_split), ("data.eval_split", eval_split)):
        path = voc_dir / "ImageSets" / "Main" / f"{split}.txt"
        if not path.is_file():
            found = sorted(p.stem for p in path.parent.glob("*.txt") if "_" not in p.stem)
            raise PipelineError(f"{path}: not found, so params.yaml {key}='{split}' names no split "
                                f"list; lists present: {', '.join(found) or 'none'}")
        split_lists[split] = read_split_list(path)
        sources[split] = str(path)
    splits = assign_splits(split_lists, sources)

    images = list_images(images_dir)
    annotations, image_files, no_objects, problems = {}, {}, [], []
    try:
        from tqdm import tqdm
        files = tqdm(files, desc="annotations", unit="file", file=sys.stderr, mininterval=1.0,
                     disable=len(files) < 2000)
    except ImportError:  # pragma: no cover - tqdm ships with dvc
        pass
    for path in files:
        try:
            image_id, objects, filename = parse_annotation(path.read_bytes(), str(path))
        except PipelineError as error:
            problems.append(str(error))
            continue
        image_file = resolve_image_file(image_id, filename, images)
        if image_file is None:
            expected = images_dir / (filename.replace("\\", "/").rsplit("/", 1)[-1] or f"{image_id}.jpg")
            problems.append(f"{expected}: not found, but {path} annotates it (looked for its <filename> "
                            f"and for {image_id}{'/'.join(IMAGE_EXTENSIONS)} in any case); restore the "
                            f"image or delete the annotation")
            continue
        if not objects:
            no_objects.append(path)
        annotations[image_id], image_files[image_id] = objects, image_file
    if problems:
        raise PipelineError(f"{len(problems)} annotation problem(s) in {voc_dir}; fix them all and rerun:"
                            f"{capped_list(problems)}")

    for split, ids in split_lists.items():
        missing = [i for i in ids if i not in annotations]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise PipelineError(f"{sources[split]}: lists {len(missing)} image(s) without an annotation "
                                f"in {annotations_dir}: {shown}; restore them or remove them from the list")
    if skip_no_objects:
        for path in no_objects:
            image_id = path.stem
            del annotations[image_id], image_files[image_id]
            splits.pop(image_id, None)
    return VocLabels(annotations, splits, image_files, no_objects)


def warn_no_objects(no_objects: list[Path], skipped: bool) -> None:
    """Say (on stderr) how many annotations have no ``<object>`` and what became of them."""
    if not no_objects:
        return
    names = ", ".join(p.name for p in no_objects[:5]) + (f" and {len(no_objects) - 5} more"
                                                         if len(no_objects) > 5 else "")
    if skipped:
        print(f"note: {len(no_objects)} annotation(s) have no <object> and their images were left out "
              f"(data.skip_no_objects: true): {names}", file=sys.stderr)
    else:
        print(f"WARNING: {len(no_objects)} annotation(s) have no <object>, so their images count as "
              f"showing none of the classes (every class -1): {names}. If they are unlabelled rather "
              f"than empty scenes, set data.skip_no_objects: true in params.yaml to leave them out.",
              file=sys.stderr)


def warn_unknown(unknown: Counter, classes: Iterable[str]) -> None:
    """Say (on stderr) which object names were left out because data.classes lacks them,
    with the nearest class name as a hint."""
    if not unknown:
        return
    classes = list(classes)

    def hint(name: str) -> str:
        close = difflib.get_close_matches(name.casefold(), [c.casefold() for c in classes], n=1)
        return f", did you mean '{classes[[c.casefold() for c in classes].index(close[0])]}'?" if close else ""

    listed = ", ".join(f"{name!r} ({count}{hint(name)})" for name, count in unknown.most_common())
    print(f"WARNING: {sum(unknown.values())} object(s) have a class not in data.classes and were "
          f"left out: {listed}. Add these names to data.classes in params.yaml to use them "
          f"(or fix the annotations if they are typos).", file=sys.stderr)


def warn_normalised(normalised: Counter) -> None:
    """Say (on stderr) which XML names matched a class only after case-folding or stripping."""
    if not normalised:
        return
    listed = ", ".join(f"{raw!r} -> '{name}' ({count})" for (raw, name), count in normalised.most_common())
    print(f"WARNING: {sum(normalised.values())} object name(s) differ from data.classes in case or "
          f"spaces and were matched to it: {listed}. Fix the annotations to silence this.",
          file=sys.stderr)


def warn_empty_classes(annotations: dict[str, list[Object]], classes: Iterable[str]) -> None:
    """Say (on stderr) which classes of data.classes no annotation has (a typo, often)."""
    matcher = class_matcher(classes)
    seen = {match_class(name, matcher) for objects in annotations.values() for name, _ in objects}
    empty = [name for name in classes if name not in seen]
    if empty:
        print(f"WARNING: no annotation has an object of class {', '.join(repr(c) for c in empty)} "
              f"named in data.classes; its column is all -1 (check the spelling in params.yaml)",
              file=sys.stderr)
