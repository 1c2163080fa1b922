"""fewlabel labels add: a Label Studio export of the suggestion tasks becomes VOC annotations
that prepare reads back, and the ids join the labelled list."""
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import quote
import subprocess
import sys

import pandas as pd
import pytest

from fewlabel.active.label_import import add_labels, local_path
from fewlabel.active.report import label_studio_tasks
from fewlabel.data.voc import parse_annotation
from fewlabel.errors import PipelineError
from fewlabel.params import VOC_CLASSES
from tests.vocgen import make_voc


def export_of(tasks, choices):
    """What Label Studio exports ('JSON') after the user corrected each task to ``choices``."""
    exported = []
    for task, chosen in zip(tasks, choices):
        annotations = [] if chosen is None else [{
            "was_cancelled": False, "updated_at": "2026-11-30T10:00:00Z",
            "result": [{"from_name": "labels", "to_name": "image", "type": "choices", "value": {"choices": chosen}}]}]
        exported.append({"id": len(exported) + 1, "data": task["data"], "annotations": annotations,
                         "predictions": task["predictions"]})
    return exported


@pytest.fixture
def voc_and_pool(tmp_path):
    voc = make_voc(tmp_path / "voc", n_train=20, n_eval=20) / "VOC2007"
    outside = tmp_path / "new_photos"
    outside.mkdir()
    source = next((voc / "JPEGImages").iterdir())
    (outside / "holiday_01.jpg").write_bytes(source.read_bytes())
    existing = sorted(p.stem for p in (voc / "Annotations").iterdir())[0]
    table = pd.DataFrame({"rank": [1, 2, 3], "image_id": ["holiday_01", existing, "holiday_02"],
                          "path": [str(outside / "holiday_01.jpg"), str(voc / "JPEGImages" / f"{existing}.jpg"),
                                   str(outside / "holiday_02.jpg")],
                          "score": [0.9, 0.8, 0.7], "why": ["dog 0.51", "cat 0.49", "cow 0.5"],
                          "labels": ["dog", "cat", "cow"]})
    return voc, existing, label_studio_tasks(table)


def test_labelled_tasks_become_annotations_and_join_the_list(tmp_path, voc_and_pool):
    voc, existing, tasks = voc_and_pool
    old = parse_annotation((voc / "Annotations" / f"{existing}.xml").read_bytes(), f"{existing}.xml")
    old_classes = sorted({name for name, _ in old.objects})
    export = tmp_path / "export.json"
    export.write_text(json.dumps(export_of(tasks, [["dog", "Person "], old_classes, None])))
    listed = tmp_path / "labelled.txt"
    listed.write_text("# ids you labelled\n")

    done = add_labels(export, voc, listed, VOC_CLASSES)
    assert done.written == ["holiday_01"] and done.unchanged == [existing] and done.open == ["holiday_02"] and done.skipped == []
    annotation = parse_annotation((voc / "Annotations" / "holiday_01.xml").read_bytes(), "holiday_01.xml")
    assert [name for name, _ in annotation.objects] == ["dog", "person"]  # the class names as data.classes spells them
    assert (voc / "JPEGImages" / "holiday_01.jpg").read_bytes() == (tmp_path / "new_photos" / "holiday_01.jpg").read_bytes()
    assert listed.read_text() == f"# ids you labelled\nholiday_01\n{existing}\n"
    add_labels(export, voc, listed, VOC_CLASSES)  # again: nothing new, no id twice
    assert listed.read_text() == f"# ids you labelled\nholiday_01\n{existing}\n"


def test_an_annotation_is_never_changed_silently(tmp_path, voc_and_pool):
    voc, existing, tasks = voc_and_pool
    before = (voc / "Annotations" / f"{existing}.xml").read_text()
    export = tmp_path / "export.json"
    export.write_text(json.dumps(export_of(tasks[1:2], [["sheep"]])))
    with pytest.raises(PipelineError, match=rf"{existing}.xml: already annotated with .*--overwrite"):
        add_labels(export, voc, tmp_path / "labelled.txt", VOC_CLASSES)
    assert (voc / "Annotations" / f"{existing}.xml").read_text() == before
    add_labels(export, voc, tmp_path / "labelled.txt", VOC_CLASSES, overwrite=True)
    annotation = parse_annotation((voc / "Annotations" / f"{existing}.xml").read_bytes(), "x.xml")
    assert [name for name, _ in annotation.objects] == ["sheep"]


def test_a_label_outside_the_classes_is_named(tmp_path, voc_and_pool):
    voc, _, tasks = voc_and_pool
    export = tmp_path / "export.json"
    export.write_text(json.dumps(export_of(tasks[:1], [["dragon"]])))
    with pytest.raises(PipelineError, match=r"task #1 \(holiday_01\) has the label 'dragon', which is not in data.classes"):
        add_labels(export, voc, tmp_path / "labelled.txt", VOC_CLASSES)


@pytest.mark.slow
def test_the_command_line(tmp_path, voc_and_pool):
    voc, _, tasks = voc_and_pool
    export = tmp_path / "export.json"
    export.write_text(json.dumps(export_of(tasks[:1], [["dog"]])))
    result = subprocess.run([sys.executable, "-m", "fewlabel", "labels", "add", str(export), "--voc", str(voc),
                             "--list", str(tmp_path / "labelled.txt")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "1 annotation(s) written" in result.stdout and (tmp_path / "labelled.txt").read_text() == "holiday_01\n"
    bad = subprocess.run([sys.executable, "-m", "fewlabel", "labels", "add", str(tmp_path / "none.json"),
                          "--voc", str(voc)], capture_output=True, text=True)
    assert bad.returncode == 1 and "none.json: cannot be read as a Label Studio JSON export" in bad.stderr


# ------------------------------------------------------------------ issue 28's findings (each failed before)

def test_overwrite_keeps_boxes_and_attributes_of_kept_classes_and_backs_the_file_up(tmp_path, voc_and_pool):
    """Finding 3: --overwrite dropped boxes, pose and truncation, with no backup."""
    voc, existing, tasks = voc_and_pool
    xml_path = voc / "Annotations" / f"{existing}.xml"
    before = xml_path.read_text()
    kept_class = parse_annotation(before.encode(), "x.xml").objects[0][0]
    kept_boxes = [o for o in ET.fromstring(before).findall("object") if o.findtext("name") == kept_class]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(export_of(tasks[1:2], [[kept_class, "sheep" if kept_class != "sheep" else "cow"]])))
    done = add_labels(export, voc, tmp_path / "labelled.txt", VOC_CLASSES, overwrite=True)
    after = ET.fromstring(xml_path.read_text())
    kept = [o for o in after.findall("object") if o.findtext("name") == kept_class]
    assert [ET.tostring(o) for o in kept] == [ET.tostring(o) for o in kept_boxes]  # bndbox, pose, truncated, difficult
    assert kept[0].find("bndbox") is not None
    names = sorted({o.findtext("name") for o in after.findall("object")})
    assert names == sorted({kept_class, "sheep" if kept_class != "sheep" else "cow"})
    added = [o for o in after.findall("object") if o.findtext("name") != kept_class]
    assert len(added) == 1 and added[0].find("bndbox") is None  # a new class: an image-level object
    assert len(done.backups) == 1 and Path(done.backups[0]).read_text() == before
    assert Path(done.backups[0]).parent == xml_path.parent and Path(done.backups[0]).name.startswith(f"{existing}.xml.bak-")


def test_a_conflict_anywhere_writes_nothing(tmp_path, voc_and_pool):
    """Finding 4: a conflict on the 2nd task left the 1st task's XML written and unlisted."""
    voc, existing, tasks = voc_and_pool
    export = tmp_path / "export.json"
    export.write_text(json.dumps(export_of(tasks[:2], [["dog"], ["sheep"]])))
    before = sorted(p.name for p in (voc / "Annotations").iterdir())
    with pytest.raises(PipelineError, match=r"already annotated.*nothing was written"):
        add_labels(export, voc, tmp_path / "labelled.txt", VOC_CLASSES)
    assert sorted(p.name for p in (voc / "Annotations").iterdir()) == before
    assert not (voc / "JPEGImages" / "holiday_01.jpg").exists() and not (tmp_path / "labelled.txt").exists()


def test_json_min_is_read_and_cancelled_tasks_are_skipped(tmp_path, voc_and_pool):
    """Finding 5: JSON_MIN was refused; a skipped (cancelled) task was 'not labelled yet'."""
    voc, _, tasks = voc_and_pool
    minimal = [{**tasks[0]["data"], "id": 1, "annotation_id": 7, "labels": {"choices": ["dog", "cat"]}},
               {**tasks[2]["data"], "id": 3}]
    export = tmp_path / "project-1-at-2026-12-04-10-00-1a2b3c4d.json"
    export.write_text(json.dumps(minimal))
    done = add_labels(export, voc, tmp_path / "labelled.txt", VOC_CLASSES)
    assert done.written == ["holiday_01"] and done.open == ["holiday_02"]
    annotation = parse_annotation((voc / "Annotations" / "holiday_01.xml").read_bytes(), "holiday_01.xml")
    assert [name for name, _ in annotation.objects] == ["dog", "cat"]
    cancelled = export_of(tasks[2:3], [["cow"]])
    cancelled[0]["annotations"][0]["was_cancelled"] = True
    export.write_text(json.dumps(cancelled))
    done = add_labels(export, voc, tmp_path / "labelled.txt", VOC_CLASSES)
    assert done.skipped == ["holiday_02"] and done.open == [] and done.written == []


def test_choices_of_another_control_are_refused_or_read_with_control(tmp_path, voc_and_pool):
    """Finding 6: a Choices control not named 'labels' imported every task as 'no class', exit 0."""
    voc, _, tasks = voc_and_pool
    exported = export_of(tasks[:1], [["dog"]])
    exported[0]["annotations"][0]["result"][0]["from_name"] = "class"
    export = tmp_path / "export.json"
    export.write_text(json.dumps(exported))
    with pytest.raises(PipelineError, match=r"choices from the control class, not 'labels'; pass --control class"):
        add_labels(export, voc, tmp_path / "labelled.txt", VOC_CLASSES)
    assert not (voc / "Annotations" / "holiday_01.xml").exists()
    done = add_labels(export, voc, tmp_path / "labelled.txt", VOC_CLASSES, control="class")
    annotation = parse_annotation((voc / "Annotations" / "holiday_01.xml").read_bytes(), "holiday_01.xml")
    assert done.written == ["holiday_01"] and [name for name, _ in annotation.objects] == ["dog"]


@pytest.mark.parametrize("content", ["[1,2,3]", '{"tasks": []}', '[{"data": "x"}]', '[{"data": {}, "annotations": 5}]'])
def test_junk_is_a_clear_error(tmp_path, voc_and_pool, content):
    """Finding 6: [1,2,3] ended in a raw AttributeError."""
    voc, _, _ = voc_and_pool
    export = tmp_path / "export.json"
    export.write_text(content)
    with pytest.raises(PipelineError, match=r"export.json: .*(Export the project as|export that project)"):
        add_labels(export, voc, tmp_path / "labelled.txt", VOC_CLASSES)


def test_an_upload_names_the_file_to_copy_and_then_imports(tmp_path, voc_and_pool):
    """Finding 6: an uploaded image asked to be copied, but not under which name."""
    voc, _, tasks = voc_and_pool
    task = {**tasks[0], "data": {**tasks[0]["data"], "image": "/data/upload/3/8f2a1c-photo_1.jpg"}}
    export = tmp_path / "export.json"
    export.write_text(json.dumps(export_of([task], [["dog"]])))
    with pytest.raises(PipelineError, match=r"is a Label Studio upload.*copy the photo into .*JPEGImages as holiday_01.jpg"):
        add_labels(export, voc, tmp_path / "labelled.txt", VOC_CLASSES)
    (voc / "JPEGImages" / "holiday_01.jpg").write_bytes((tmp_path / "new_photos" / "holiday_01.jpg").read_bytes())
    assert add_labels(export, voc, tmp_path / "labelled.txt", VOC_CLASSES).written == ["holiday_01"]


def test_the_same_image_twice(tmp_path, voc_and_pool):
    """Finding 6: the same task twice with different labels: the last won silently."""
    voc, _, tasks = voc_and_pool
    export = tmp_path / "export.json"
    export.write_text(json.dumps(export_of([tasks[0], tasks[0]], [["dog"], ["cat"]])))
    with pytest.raises(PipelineError, match=r"tasks #1 and #2 both label holiday_01, as dog and cat; delete one"):
        add_labels(export, voc, tmp_path / "labelled.txt", VOC_CLASSES, overwrite=True)
    assert not (voc / "Annotations" / "holiday_01.xml").exists()
    export.write_text(json.dumps(export_of([tasks[0], tasks[0], tasks[0]], [None, ["dog"], ["dog"]])))
    done = add_labels(export, voc, tmp_path / "labelled.txt", VOC_CLASSES)
    assert done.written == ["holiday_01"] and (tmp_path / "labelled.txt").read_text() == "holiday_01\n"


def test_task_urls_are_absolute_paths_with_links_resolved(tmp_path, monkeypatch):
    """Finding 1: tasks carried repo-relative paths (data/raw/voc/...), a 404 under document root /."""
    real = tmp_path / "my cache" / "JPEGImages"  # a space: percent-encoded in the URL
    real.mkdir(parents=True)
    (real / "000015.jpg").write_bytes(b"jpeg")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "voc").symlink_to(real.parent)
    monkeypatch.chdir(tmp_path)
    table = pd.DataFrame({"rank": [1], "image_id": ["000015"], "path": ["data/voc/JPEGImages/000015.jpg"],
                          "score": [0.5], "why": ["dog 0.5"], "labels": ["dog"]})
    image = label_studio_tasks(table)[0]["data"]["image"]
    assert image == f"/data/local-files/?d={quote(str(real.resolve()).lstrip('/'))}/000015.jpg"
    assert local_path(image) == str(real.resolve() / "000015.jpg")


def test_thumbnail_titles_wrap_and_cut_why_at_a_word():
    """Finding 7: titles ran into each other; why was cut mid-number."""
    from fewlabel.active.report import thumbnail_title
    row = next(pd.DataFrame({"rank": [3], "image_id": ["000015"], "labels": [" ".join(VOC_CLASSES[:12])],
                             "why": ["diningtable 0.512, pottedplant 0.487, tvmonitor 0.455, chair 0.431"]})
               .itertuples(index=False))
    lines = thumbnail_title(row).split("\n")
    assert lines[0] == "#3 000015" and all(len(line) <= 34 for line in lines) and len(lines) <= 5
    assert lines[-1].endswith(" …") and all(part in row.why.split() for part in lines[-1][:-2].split())
