"""fewlabel labels add: a Label Studio export of the suggestion tasks becomes VOC annotations
that prepare reads back, and the ids join the labelled list."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from fewlabel.active.label_import import add_labels
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
    assert done.written == ["holiday_01"] and done.unchanged == [existing] and done.skipped == ["holiday_02"]
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
