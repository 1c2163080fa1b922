"""Folding labelled suggestions back in: a Label Studio export of the suggestion tasks becomes
VOC annotations in the data set, and the ids join ``suggestions/labelled.txt``.

    fewlabel labels add export.json --voc data/raw/voc --list suggestions/labelled.txt

Each labelled task (the choices of its latest annotation that was not cancelled) is written as
``Annotations/<image_id>.xml`` with one ``<object>`` per chosen class (image-level labels: no
boxes, which prepare does not need); its image is copied into ``JPEGImages/`` when it is not
there yet. An existing annotation is never changed silently: the same classes are left as they
are, other classes are an error unless ``overwrite``.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse
from xml.sax.saxutils import escape

from fewlabel.active.report import LS_CHOICES, LS_IMAGE
from fewlabel.data.voc import class_matcher, list_images, match_class, parse_annotation, resolve_image_file
from fewlabel.errors import PipelineError
from fewlabel.io import atomic_path, read_lines, write_text


@dataclass
class Imported:
    """What :func:`add_labels` did: ids written, ids already annotated the same, tasks skipped."""
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # no annotation yet, or cancelled


def labelled_tasks(export: str | Path, classes) -> list[tuple[str, str, list[str]]]:
    """(image_id, image path, chosen classes) of each labelled task of a Label Studio JSON export."""
    try:
        tasks = json.loads(Path(export).read_text(encoding="utf-8-sig"))
    except (OSError, json.JSONDecodeError) as error:
        raise PipelineError(f"{export}: cannot be read as a Label Studio JSON export ({error}); export the "
                            f"project as 'JSON'") from error
    if not isinstance(tasks, list):
        raise PipelineError(f"{export}: not a Label Studio JSON export (a list of tasks); export as 'JSON'")
    matcher = class_matcher(classes)
    labelled = []
    for number, task in enumerate(tasks, start=1):
        data = task.get("data") or {}
        image_id, image = data.get("image_id"), data.get(LS_IMAGE)
        if not image_id or not image:
            raise PipelineError(f"{export}: task #{number} has no data.image_id or data.{LS_IMAGE}; import "
                                f"suggestions/label_studio.json, label, and export that project")
        annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not annotations:
            labelled.append((str(image_id), _local_path(image), None))
            continue
        latest = max(annotations, key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""))
        chosen = [choice for result in latest.get("result") or [] if result.get("from_name") == LS_CHOICES
                  for choice in (result.get("value") or {}).get("choices") or []]
        names = []
        for choice in chosen:
            name = match_class(choice, matcher)
            if name is None:
                raise PipelineError(f"{export}: task #{number} ({image_id}) has the label '{choice}', which is not "
                                    f"in data.classes; fix the labelling config or data.classes")
            names.append(name)
        labelled.append((str(image_id), _local_path(image), list(dict.fromkeys(names))))
    return labelled


def _local_path(image: str) -> str:
    """The file behind a Label Studio local-files URL (``/data/local-files/?d=<path>``), or ``image``."""
    parsed = urlparse(image)
    if parsed.path.endswith("/data/local-files/"):
        return "/" + unquote(parse_qs(parsed.query).get("d", [""])[0]).lstrip("/")
    return image


def annotation_xml(image_id: str, filename: str, classes: list[str]) -> str:
    """A VOC annotation with image-level labels: one ``<object>`` per class, no boxes."""
    objects = "".join(f"  <object>\n    <name>{escape(name)}</name>\n    <difficult>0</difficult>\n  </object>\n"
                      for name in classes)
    return (f"<annotation>\n  <filename>{escape(filename)}</filename>\n"
            f"  <source><annotation>fewlabel labels add ({escape(image_id)})</annotation></source>\n"
            f"{objects}</annotation>\n")


def add_labels(export: str | Path, voc_dir: str | Path, list_file: str | Path, classes,
               overwrite: bool = False) -> Imported:
    """Write the labelled tasks of ``export`` into ``voc_dir`` and append their ids to ``list_file``."""
    voc_dir = Path(voc_dir)
    annotations_dir, images_dir = voc_dir / "Annotations", voc_dir / "JPEGImages"
    if not annotations_dir.is_dir() or not images_dir.is_dir():
        raise PipelineError(f"{voc_dir}: not a VOC folder (Annotations/ and JPEGImages/); give --voc the data "
                            f"set's folder (data/raw/voc links to it)")
    matcher = class_matcher(classes)
    images = list_images(images_dir)
    done = Imported()
    for image_id, path, chosen in labelled_tasks(export, classes):
        if chosen is None:
            done.skipped.append(image_id)
            continue
        xml_path = annotations_dir / f"{image_id}.xml"
        name = resolve_image_file(image_id, "", images)
        if xml_path.exists():
            old = parse_annotation(xml_path.read_bytes(), str(xml_path))
            had = sorted({match_class(n, matcher) for n, _ in old.objects} - {None})
            if had == sorted(chosen):
                done.unchanged.append(image_id)
                continue
            if not overwrite:
                raise PipelineError(f"{xml_path}: already annotated with {', '.join(had) or 'no class'}, the "
                                    f"export says {', '.join(chosen) or 'no class'}; pass --overwrite to replace it")
        if name is None:
            if not os.path.isfile(path):
                raise PipelineError(f"{export}: the image of {image_id} ({path}) is not found, and JPEGImages has "
                                    f"none; copy it into {images_dir}")
            name = f"{image_id}{Path(path).suffix.lower() or '.jpg'}"
            with atomic_path(images_dir / name) as tmp:
                shutil.copyfile(path, tmp)
        write_text(xml_path, annotation_xml(image_id, name, chosen))
        done.written.append(image_id)
    listed = read_lines(list_file) if Path(list_file).exists() else []
    new = [i for i in dict.fromkeys(done.written + done.unchanged) if i not in set(listed)]
    if new:
        text = Path(list_file).read_text(encoding="utf-8") if Path(list_file).exists() else ""
        write_text(list_file, text + ("" if not text or text.endswith("\n") else "\n") + "".join(f"{i}\n" for i in new))
    return done
