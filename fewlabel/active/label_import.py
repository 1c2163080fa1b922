"""Folding labelled suggestions back in: a Label Studio export of the suggestion tasks becomes
VOC annotations in the data set, and the ids join ``suggestions/labelled.txt``.

    fewlabel labels add export.json --voc data/raw/voc --list suggestions/labelled.txt

What is read: the export (Label Studio's 'JSON' or 'JSON_MIN'), the class choices of the
control named ``control`` (``labels``, as in ``suggestions/label_studio_config.xml``), and, for
an image that already has one, ``Annotations/<image_id>.xml``. What is written, only after every
task was checked (one error lists every problem; nothing is written then):

- a new ``Annotations/<image_id>.xml`` with one ``<object>`` per chosen class (image-level: no box);
- an existing annotation whose classes differ (only with ``overwrite``): first copied to
  ``<image_id>.xml.bak-<UTC time>`` beside it; then its objects of classes still chosen are kept
  as they are (boxes, pose, truncated, difficult), objects of classes no longer chosen are removed,
  new classes are added as image-level objects; names outside ``data.classes`` are kept;
- ``JPEGImages/<image_id>.<ext>``: a copy of the task's image when JPEGImages has none;
- the ids appended to the list file.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse
from xml.sax.saxutils import escape

from fewlabel.active.report import LS_CHOICES, LS_IMAGE
from fewlabel.data.voc import class_matcher, list_images, match_class, parse_annotation, resolve_image_file
from fewlabel.errors import PipelineError
from fewlabel.io import read_lines

#: Label Studio's export formats that ``labels add`` reads (Export > JSON or JSON-MIN).
FORMATS = "'JSON' (or 'JSON-MIN')"


@dataclass
class Task:
    """One task of an export: its number (1-based), image id, local image path, and the chosen
    classes (None when not labelled: ``state`` says 'open' or 'skipped')."""
    number: int
    image_id: str
    path: str
    chosen: list[str] | None
    state: str = "labelled"


@dataclass
class Imported:
    """What :func:`add_labels` did: ids written, ids already annotated the same, tasks skipped
    (cancelled in Label Studio) and tasks not labelled yet, and the backups made."""
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    open: list[str] = field(default_factory=list)
    backups: list[str] = field(default_factory=list)


def labelled_tasks(export: str | Path, classes, control: str = LS_CHOICES) -> list[Task]:
    """Every task of a Label Studio export (JSON or JSON_MIN), checked: one error lists all problems."""
    try:
        tasks = json.loads(Path(export).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PipelineError(f"{export}: cannot be read as a Label Studio JSON export ({error}); in Label Studio, "
                            f"Export the project as {FORMATS}") from error
    if not isinstance(tasks, list) or not all(isinstance(task, dict) for task in tasks):
        raise PipelineError(f"{export}: not a Label Studio export (a list of task objects); in Label Studio, "
                            f"Export the project as {FORMATS}")
    matcher = class_matcher(classes)
    parsed, problems = [], []
    for number, task in enumerate(tasks, start=1):
        try:
            parsed.append(_task(number, task, matcher, control))
        except ValueError as problem:
            problems.append(f"task #{number} {problem}")
    if problems:
        raise PipelineError(f"{export}: " + "; ".join(problems[:10]) +
                            (f"; and {len(problems) - 10} more" if len(problems) > 10 else "") + "; nothing was written")
    return parsed


def _task(number: int, task: dict, matcher: dict, control: str) -> Task:
    minimal = "data" not in task  # JSON_MIN: the data fields and the controls' values at the top level
    data = task if minimal else task.get("data")
    if not isinstance(data, dict) or not data.get("image_id") or not data.get(LS_IMAGE):
        raise ValueError(f"has no data.image_id or data.{LS_IMAGE}: import suggestions/label_studio.json (or "
                         f"`fewlabel labels push`), label, and export that project")
    image_id, path = str(data["image_id"]), local_path(str(data[LS_IMAGE]))
    if minimal:
        if control not in task:
            other = sorted(k for k, v in task.items()  # a control's choices: a list, or {"choices": [...]}
                           if not isinstance(v, str) and _choices_value(v) is not None)
            if other:
                raise ValueError(f"({image_id}) has choices from the control {', '.join(other)}, not '{control}'; "
                                 f"pass --control {other[0]}")
            # JSON_MIN writes no key for an empty annotation and none for an unlabelled task
            return Task(number, image_id, path, [] if "annotation_id" in task else None,
                        "labelled" if "annotation_id" in task else "open")
        return Task(number, image_id, path, _classes(image_id, _choices_value(task[control]), matcher))
    annotations = task.get("annotations") or []
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        raise ValueError(f"({image_id}) 'annotations' is not a list of objects; export as {FORMATS}")
    done = [a for a in annotations if not a.get("was_cancelled")]
    if not done:
        return Task(number, image_id, path, None, "skipped" if annotations else "open")
    latest = max(done, key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""))
    results = [r for r in latest.get("result") or [] if isinstance(r, dict) and r.get("type") == "choices"]
    others = sorted({str(r.get("from_name")) for r in results} - {control})
    if others:
        raise ValueError(f"({image_id}) has choices from the control {', '.join(others)}, not '{control}'; pass "
                         f"--control {others[0]} (the <Choices name=...> of your labelling config)")
    chosen = [c for r in results for c in _choices_value(r.get("value")) or []]
    return Task(number, image_id, path, _classes(image_id, chosen, matcher))


def _choices_value(value) -> list[str] | None:
    """The choices a result value (or a JSON_MIN field) holds, or None if it holds none."""
    if isinstance(value, dict):
        value = value.get("choices")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _classes(image_id: str, chosen, matcher: dict) -> list[str]:
    names = []
    for choice in chosen or []:
        name = match_class(choice, matcher)
        if name is None:
            raise ValueError(f"({image_id}) has the label '{choice}', which is not in data.classes; fix the "
                             f"labelling config or data.classes")
        names.append(name)
    return list(dict.fromkeys(names))


def local_path(image: str) -> str:
    """The file behind a Label Studio local-files URL (``/data/local-files/?d=<path>``), or ``image``."""
    parsed = urlparse(image)
    if parsed.path.endswith("/data/local-files/"):
        return "/" + unquote(parse_qs(parsed.query).get("d", [""])[0]).lstrip("/")
    return image


def annotation_xml(image_id: str, filename: str, classes: list[str]) -> str:
    """A VOC annotation with image-level labels: one ``<object>`` per class, no boxes."""
    objects = "".join(_object_xml(name) for name in classes)
    return (f"<annotation>\n  <filename>{escape(filename)}</filename>\n"
            f"  <source><annotation>fewlabel labels add ({escape(image_id)})</annotation></source>\n"
            f"{objects}</annotation>\n")


def _object_xml(name: str) -> str:
    return f"  <object>\n    <name>{escape(name)}</name>\n    <difficult>0</difficult>\n  </object>\n"


def updated_xml(xml_bytes: bytes, chosen: list[str], matcher: dict) -> bytes:
    """An existing annotation with its classes set to ``chosen``: objects of classes still chosen
    kept whole, other classes' objects removed, new classes added as image-level objects."""
    root = ET.fromstring(xml_bytes)
    present = set()
    for element in list(root.findall("object")):
        name = match_class(element.findtext("name") or "", matcher)
        if name is None:
            continue  # a name outside data.classes: the user's, left alone
        if name in chosen:
            present.add(name)
        else:
            root.remove(element)
    for name in chosen:
        if name not in present:
            element = ET.fromstring(_object_xml(name))
            element.tail = "\n"
            root.append(element)  # the rest of the file keeps its own layout
    return ET.tostring(root, encoding="utf-8") + b"\n"


def _merge_duplicates(tasks: list[Task]) -> tuple[list[Task], list[str]]:
    """One task per image id: the labelled one; two that disagree are a problem."""
    by_id: dict[str, Task] = {}
    problems = []
    for task in tasks:
        seen = by_id.get(task.image_id)
        if seen is None or seen.chosen is None:
            by_id[task.image_id] = task if seen is None or task.chosen is not None else seen
        elif task.chosen is not None and sorted(task.chosen) != sorted(seen.chosen):
            problems.append(f"tasks #{seen.number} and #{task.number} both label {task.image_id}, as "
                            f"{', '.join(seen.chosen) or 'no class'} and {', '.join(task.chosen) or 'no class'}; "
                            f"delete one of them in Label Studio and export again")
    return list(by_id.values()), problems


def add_labels(export: str | Path, voc_dir: str | Path, list_file: str | Path, classes,
               overwrite: bool = False, control: str = LS_CHOICES) -> Imported:
    """Write the labelled tasks of ``export`` into ``voc_dir`` and append their ids to ``list_file``:
    every task is checked first, then all is written or nothing (see the module docstring)."""
    voc_dir = Path(voc_dir)
    annotations_dir, images_dir = voc_dir / "Annotations", voc_dir / "JPEGImages"
    if not annotations_dir.is_dir() or not images_dir.is_dir():
        raise PipelineError(f"{voc_dir}: not a VOC folder (Annotations/ and JPEGImages/); give --voc the data "
                            f"set's folder (data/raw/voc links to it)")
    matcher = class_matcher(classes)
    images = list_images(images_dir)
    tasks, problems = _merge_duplicates(labelled_tasks(export, classes, control))
    done = Imported()
    plan: list[tuple[Path, bytes | Path]] = []  # (target, new content or the file to copy)
    for task in tasks:
        if task.chosen is None:
            (done.skipped if task.state == "skipped" else done.open).append(task.image_id)
            continue
        xml_path = annotations_dir / f"{task.image_id}.xml"
        name = resolve_image_file(task.image_id, "", images)
        if name is None:
            if urlparse(task.path).path.startswith("/data/upload/") or not os.path.isfile(task.path):
                what = "a Label Studio upload" if "/data/upload/" in task.path else "not found"
                problems.append(f"task #{task.number}: the image of {task.image_id} ({task.path}) is {what}, and "
                                f"JPEGImages has none; copy the photo into {images_dir} as {task.image_id}.jpg "
                                f"(named by the task's image_id)")
                continue
            name = f"{task.image_id}{Path(task.path).suffix.lower() or '.jpg'}"
            plan.append((images_dir / name, Path(task.path)))
        if xml_path.exists():
            old_bytes = xml_path.read_bytes()
            old = parse_annotation(old_bytes, str(xml_path))
            had = sorted({match_class(n, matcher) for n, _ in old.objects} - {None})
            if had == sorted(task.chosen):
                done.unchanged.append(task.image_id)
                continue
            if not overwrite:
                problems.append(f"{xml_path}: already annotated with {', '.join(had) or 'no class'}, task "
                                f"#{task.number} says {', '.join(task.chosen) or 'no class'}; pass --overwrite to "
                                f"change it (a backup is kept beside it; boxes of classes kept stay)")
                continue
            plan.append((xml_path, updated_xml(old_bytes, task.chosen, matcher)))
        else:
            plan.append((xml_path, annotation_xml(task.image_id, name, task.chosen).encode()))
        done.written.append(task.image_id)
    if problems:
        raise PipelineError(f"{export}: " + "; ".join(problems) + "; nothing was written")
    listed = read_lines(list_file) if Path(list_file).exists() else []
    new = [i for i in dict.fromkeys(done.written + done.unchanged) if i not in set(listed)]
    if new:
        text = Path(list_file).read_text(encoding="utf-8") if Path(list_file).exists() else ""
        text += ("" if not text or text.endswith("\n") else "\n") + "".join(f"{i}\n" for i in new)
        plan.append((Path(list_file), text.encode()))
    done.backups = _write_all(plan)
    return done


def _write_all(plan: list[tuple[Path, bytes | Path]]) -> list[str]:
    """Write every file of ``plan`` to a temporary file beside its target, then rename them all
    (an existing target is first copied to ``<name>.bak-<UTC time>``); on any error nothing changes."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    staged: list[tuple[Path, Path]] = []
    try:
        for target, content in plan:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.fewlabel-tmp")
            if isinstance(content, Path):
                shutil.copyfile(content, tmp)
            else:
                tmp.write_bytes(content)
            staged.append((tmp, target))
        backups = []
        for tmp, target in staged:
            if target.exists() and target.suffix == ".xml":
                backup = target.with_name(f"{target.name}.bak-{stamp}")
                shutil.copy2(target, backup)
                backups.append(str(backup))
    except OSError as error:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise PipelineError(f"{error.filename}: cannot be written ({error.strerror}); nothing was changed") from error
    for tmp, target in staged:
        os.replace(tmp, target)
    return backups
