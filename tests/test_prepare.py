"""stages.prepare: the label table from VOC annotations; plus download + prepare under dvc repro."""
from __future__ import annotations

import re
import stat
from pathlib import Path

import pandas as pd
import pytest

from fewlabel.data import voc as prepare
from stages import prepare as prepare_stage
from fewlabel.errors import MAX_REPORTED, PipelineError
from fewlabel.params import VOC_CLASSES
from tests.exports import as_voc_folder, cvat_file_names, write_cvat_export, write_label_studio_export
from tests.vocgen import label_table, make_tarballs, make_voc, md5s, voc_spec


def run_stage(params_file, voc, out, **data) -> pd.DataFrame:
    """Run prepare's main() on ``voc`` and read back the table it wrote."""
    path = params_file({f"data.{key}": value for key, value in data.items()})
    prepare_stage.main(["--voc", str(voc), "--out", str(out), "--params", str(path)])
    return pd.read_csv(out, dtype={"image_id": str})


@pytest.mark.parametrize("year, splits", [(2007, ("trainval", "test")), (2012, ("train", "val"))])
def test_labels_match_the_generated_annotations(year, splits, tmp_path, params_file):
    voc = make_voc(tmp_path / "src", year) / f"VOC{year}"
    out = tmp_path / "data" / "labels.csv"
    table = run_stage(params_file, voc, out, train_split=splits[0], eval_split=splits[1])

    expected = label_table(voc_spec(year))
    pd.testing.assert_frame_equal(table, expected, check_dtype=False)
    assert table["image_id"].str.len().eq(6 if year == 2007 else 11).all()  # leading zeros kept
    assert (table[list(VOC_CLASSES)] == 0).any(axis=None)  # difficult-only labels are there
    assert set(table["split"]) == set(splits)
    assert [p.name for p in out.parent.iterdir()] == ["labels.csv"]  # no temp file left


def test_parse_annotation_and_build_label_table():
    xml = """<annotation><filename>x.jpg</filename>
      <object><name>dog</name><difficult>1</difficult></object>
      <object><name>cat</name><difficult>1</difficult></object>
      <object><name> cat </name><difficult>0</difficult></object>
      <object><name>zebra</name></object></annotation>"""
    image_id, objects, filename = prepare.parse_annotation(xml, "VOC/Annotations/000042.xml")
    assert image_id == "000042" and filename == "x.jpg"
    assert objects == [("dog", True), ("cat", True), (" cat ", False), ("zebra", False)]  # names as written

    annotations = {"000042": objects, "000007": []}
    table = prepare.build_label_table(annotations, {"000042": "test"}, ["cat", "dog", "bird"],
                                      {"000042": "x.jpg", "000007": "000007.png"})
    assert table.to_dict("records") == [
        {"image_id": "000007", "split": "unused", "image_file": "000007.png", "cat": -1, "dog": -1, "bird": -1},
        {"image_id": "000042", "split": "test", "image_file": "x.jpg", "cat": 1, "dog": 0, "bird": -1}]
    assert prepare.unknown_classes(annotations, ["cat", "dog"]) == {"zebra": 1}
    assert prepare.normalised_names(annotations, ["cat", "dog"]) == {(" cat ", "cat"): 1}

    with pytest.raises(PipelineError, match="listed in both a.txt and b.txt"):
        prepare.assign_splits({"a": ["1", "2"], "b": ["2"]}, {"a": "a.txt", "b": "b.txt"})


def test_corrupt_xml_names_the_file(tmp_path, params_file):
    voc = make_voc(tmp_path, 2007) / "VOC2007"
    bad = sorted((voc / "Annotations").glob("*.xml"))[3]
    bad.write_text(bad.read_text()[:-40])
    with pytest.raises(PipelineError, match=f"{bad}: is not valid XML"):
        run_stage(params_file, voc, tmp_path / "labels.csv")
    assert not (tmp_path / "labels.csv").exists()

    bad.write_text("<annotation><object><name>cat</name><difficult>yes</difficult></object></annotation>")
    with pytest.raises(PipelineError, match=f"{bad}: object #1 .*expected 0 or 1"):
        run_stage(params_file, voc, tmp_path / "labels.csv")


def test_unknown_class_is_a_warning_not_a_silent_drop(tmp_path, params_file, capsys):
    voc = make_voc(tmp_path, 2007) / "VOC2007"
    for path in sorted((voc / "Annotations").glob("*.xml"))[:3]:
        path.write_text(re.sub(r"<name>\w+</name>", "<name>zebra</name>", path.read_text(), count=1))
    table = run_stage(params_file, voc, tmp_path / "labels.csv")
    err = capsys.readouterr().err
    assert "WARNING" in err and "'zebra' (3)" in err and "data.classes" in err
    assert len(table) == 100

    # With the class in data.classes, it gets a column.
    table = run_stage(params_file, voc, tmp_path / "labels.csv", classes=[*VOC_CLASSES, "zebra"])
    assert (table["zebra"] == 1).sum() + (table["zebra"] == 0).sum() == 3
    assert "WARNING" not in capsys.readouterr().err

    # A class of data.classes that no annotation has (a typo?) is pointed out too.
    table = run_stage(params_file, voc, tmp_path / "labels.csv", classes=[*VOC_CLASSES, "zebra", "unicorn"])
    assert (table["unicorn"] == -1).all()
    assert "'unicorn'" in capsys.readouterr().err


def test_missing_jpeg_names_the_image(tmp_path, params_file):
    voc = make_voc(tmp_path, 2007) / "VOC2007"
    image = sorted((voc / "JPEGImages").glob("*.jpg"))[5]
    image.unlink()
    with pytest.raises(PipelineError, match=f"{image}: not found"):
        run_stage(params_file, voc, tmp_path / "labels.csv")


def test_split_list_problems(tmp_path, params_file):
    voc = make_voc(tmp_path, 2007) / "VOC2007"
    main = voc / "ImageSets" / "Main"
    with pytest.raises(PipelineError, match=r"val\.txt: not found.*data\.eval_split='val'"):
        run_stage(params_file, voc, tmp_path / "labels.csv", eval_split="val")

    orphan = (main / "test.txt").read_text().split()[0]
    (voc / "Annotations" / f"{orphan}.xml").unlink()
    with pytest.raises(PipelineError, match=f"test.txt: lists 1 image.* without an annotation.*{orphan}"):
        run_stage(params_file, voc, tmp_path / "labels.csv", eval_split="test")

    (main / "test.txt").write_text((main / "test.txt").read_text().replace(f"{orphan}\n", "")
                                   + (main / "trainval.txt").read_text().split()[0] + "\n")
    with pytest.raises(PipelineError, match="listed in both"):
        run_stage(params_file, voc, tmp_path / "labels.csv")


def test_images_in_no_split_are_kept_as_unused(tmp_path, params_file):
    voc = make_voc(tmp_path, 2007) / "VOC2007"
    main = voc / "ImageSets" / "Main"
    ids = main.joinpath("test.txt").read_text().split()
    main.joinpath("test.txt").write_text("\n".join(ids[:-2]) + "\n")
    table = run_stage(params_file, voc, tmp_path / "labels.csv")
    assert len(table) == 100
    assert sorted(table.loc[table["split"] == "unused", "image_id"]) == sorted(ids[-2:])


# --------------------------------------------------------------------------- end to end with DVC

@pytest.mark.parametrize("year, train_split, eval_split", [(2007, "trainval", "test"), (2012, "train", "val")])
def test_dvc_repro_subset_downloads_once(dvc_project, http_server, year, train_split, eval_split):
    tarballs = make_tarballs(http_server.root, year)
    dvc_project.set_params({"data.source": http_server.url, "data.md5": md5s(tarballs), "data.year": year,
                            "data.train_split": train_split, "data.eval_split": eval_split,
                            "subset.n_images": 30, "subset.min_per_class": 2})

    first = dvc_project.dvc("repro", "subset")
    assert first.returncode == 0, first.stdout + first.stderr
    for stage in ("download", "prepare", "subset"):
        assert f"Running stage '{stage}'" in first.stdout
    assert dvc_project.path("data", "raw", "voc").is_symlink()
    table = pd.read_csv(dvc_project.path("data", "labels.csv"), dtype={"image_id": str})
    expected = label_table(voc_spec(year))
    expected["split"] = expected["split"].where(expected["split"].isin([train_split, eval_split]), "unused")
    pd.testing.assert_frame_equal(table, expected, check_dtype=False)
    train = pd.read_csv(dvc_project.path("data", "subset", "train.csv"), dtype={"image_id": str})
    assert len(train) == 30 and set(train["split"]) == {train_split}
    assert len(http_server.requests) == len(tarballs)
    cached = [p for p in dvc_project.path(".dvc", "cache", "files").rglob("*") if p.is_file()]
    assert len(cached) == 3  # labels.csv and the two subset CSVs: the images are not stored twice

    second = dvc_project.dvc("repro", "subset")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Running stage" not in second.stdout
    assert "Stage 'download' didn't change" in second.stdout
    assert len(http_server.requests) == len(tarballs)

    # A forced rerun relinks from the extraction cache (no request), and undoes DVC's chmod 777
    # of the old link's target (DVC's way of removing a linked output before a rerun).
    forced = dvc_project.dvc("repro", "-f", "download")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert len(http_server.requests) == len(tarballs)
    target = dvc_project.path("data", "raw", "voc").resolve()
    assert stat.S_IMODE(target.stat().st_mode) & 0o002 == 0


def test_dvc_repro_fails_on_corrupt_xml_naming_it(dvc_project, tmp_path):
    voc = make_voc(tmp_path / "mine", 2007) / "VOC2007"
    bad = sorted((voc / "Annotations").glob("*.xml"))[0]
    bad.write_text("<annotation><object>")
    dvc_project.set_params({"data.source": str(tmp_path / "mine")})

    result = dvc_project.dvc("repro", "prepare")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"Annotations/{bad.name}: is not valid XML" in output
    assert not dvc_project.path("data", "labels.csv").exists()
    assert voc.joinpath("Annotations", bad.name).exists()  # the user's data is untouched


# --------------------------------------------------------------------------- issue 12: users' own data

def _repro(project, *targets):
    """``dvc repro <targets>`` in ``project``; (result, stdout + stderr)."""
    result = project.dvc("repro", *targets)
    return result, result.stdout + result.stderr


def test_class_names_match_ignoring_case_and_spaces(dvc_project, tmp_path):
    """Item 2: ``<name> Dog </name>`` keeps the image's dog label, with a warning; a typo'd name
    gets a hint."""
    spec = voc_spec(2007)
    voc = make_voc(tmp_path / "mine", 2007) / "VOC2007"
    image = next(i for i in spec.images if [o.name for o in i.objects if not o.difficult].count("dog") == 1)
    xml = voc / "Annotations" / f"{image.image_id}.xml"
    xml.write_text(xml.read_text().replace("<name>dog</name>", "<name> Dog </name>"))
    other = voc / "Annotations" / f"{spec.images[0].image_id}.xml"
    other.write_text(other.read_text().replace(
        "</annotation>", "<object><name>dgo</name><difficult>0</difficult></object></annotation>"))
    dvc_project.set_params({"data.source": str(tmp_path / "mine")})

    result, output = _repro(dvc_project, "prepare")
    assert result.returncode == 0, output
    table = pd.read_csv(dvc_project.path("data", "labels.csv"), dtype={"image_id": str})
    pd.testing.assert_frame_equal(table, label_table(spec), check_dtype=False)
    assert table.loc[table["image_id"] == image.image_id, "dog"].item() == 1
    assert "' Dog ' -> 'dog' (1)" in output and "Fix the annotations" in output
    assert "'dgo' (1, did you mean 'dog'?)" in output


def _expected_export_table(spec, ids: dict[str, str], files: dict[str, str]) -> pd.DataFrame:
    """label_table(spec) with the export's image ids and files, and train/test split names."""
    expected = label_table(spec)
    expected["image_id"] = expected["image_id"].map(ids)
    expected["image_file"] = expected["image_id"].map({ids[i]: files[i] for i in ids})
    expected["split"] = expected["split"].map({"trainval": "train", "test": "test"})
    return expected.sort_values("image_id").reset_index(drop=True)


@pytest.mark.parametrize("tool", ["cvat", "label_studio"])
def test_labelling_tool_exports_work_as_they_are(tool, dvc_project, tmp_path):
    """Item 6: CVAT and Label Studio exports name .png/.jpeg/.JPG files in <filename>;
    prepare finds each and records it as image_file."""
    spec = voc_spec(2007, n_train=20, n_eval=20)
    if tool == "cvat":
        export = write_cvat_export(spec, tmp_path / "cvat-export")
        ids, files = {i.image_id: i.image_id for i in spec.images}, cvat_file_names(spec)
    else:
        files = write_label_studio_export(spec, tmp_path / "label-studio-export")
        ids = {image_id: Path(name).stem for image_id, name in files.items()}
        export = as_voc_folder(tmp_path / "label-studio-export",
                               {"train": [ids[i] for i in spec.splits["trainval"]],
                                "test": [ids[i] for i in spec.splits["test"]]})
    assert {Path(name).suffix for name in files.values()} - {".jpg"}  # not only .jpg files
    dvc_project.set_params({"data.source": str(export), "data.train_split": "train", "data.eval_split": "test",
                            "subset.n_images": 10, "subset.min_per_class": 1})

    result, output = _repro(dvc_project, "subset")
    assert result.returncode == 0, output
    table = pd.read_csv(dvc_project.path("data", "labels.csv"), dtype={"image_id": str})
    pd.testing.assert_frame_equal(table, _expected_export_table(spec, ids, files), check_dtype=False)
    for name in ("train", "eval"):  # subset keeps the column for featurize
        subset = pd.read_csv(dvc_project.path("data", "subset", f"{name}.csv"), dtype={"image_id": str})
        assert (subset["image_file"] == subset["image_id"].map(table.set_index("image_id")["image_file"])).all()
    assert all((export / "JPEGImages" / name).is_file() for name in table["image_file"])


def test_a_missing_export_image_names_the_annotation(tmp_path, params_file):
    """Item 6: no file for an annotation (neither its <filename> nor <id>.<image extension>)."""
    spec = voc_spec(2007, n_train=20, n_eval=20)
    export = write_cvat_export(spec, tmp_path / "cvat-export")
    image_id, name = next(iter(cvat_file_names(spec).items()))
    (export / "JPEGImages" / name).unlink()
    out = tmp_path / "labels.csv"
    with pytest.raises(PipelineError) as error:
        run_stage(params_file, export, out, train_split="train", eval_split="test")
    message = str(error.value)
    assert f"{export / 'JPEGImages' / name}: not found, but {export / 'Annotations' / image_id}.xml annotates it" \
        in message and "restore the image or delete the annotation" in message
    assert not out.exists()


def test_every_bad_annotation_is_reported_at_once(dvc_project, tmp_path):
    """Item 8: one run lists every unreadable annotation and every missing image, not the first."""
    voc = make_voc(tmp_path / "mine", 2007) / "VOC2007"
    xmls = sorted((voc / "Annotations").glob("*.xml"))
    xmls[1].write_text("<annotation><object>")
    xmls[2].write_text(xmls[2].read_text().replace("<difficult>0</difficult>", "<difficult>maybe</difficult>", 1))
    (voc / "JPEGImages" / f"{xmls[3].stem}.jpg").unlink()
    dvc_project.set_params({"data.source": str(tmp_path / "mine")})

    result, output = _repro(dvc_project, "prepare")
    assert result.returncode != 0
    assert "3 annotation problem(s)" in output and "fix them all and rerun" in output
    assert f"Annotations/{xmls[1].name}: is not valid XML" in output
    assert f"Annotations/{xmls[2].name}: object #1" in output and "expected 0 or 1" in output
    assert f"JPEGImages/{xmls[3].stem}.jpg: not found, but" in output
    assert not dvc_project.path("data", "labels.csv").exists()


def test_the_list_of_bad_annotations_is_capped(tmp_path, params_file):
    voc = make_voc(tmp_path, 2007) / "VOC2007"
    for path in sorted((voc / "Annotations").glob("*.xml"))[:MAX_REPORTED + 5]:
        path.write_text("not xml")
    with pytest.raises(PipelineError, match=rf"{MAX_REPORTED + 5} annotation problem\(s\)(.|\n)*"
                                            rf"\.\.\. and 5 more"):
        run_stage(params_file, voc, tmp_path / "labels.csv")
    assert not (tmp_path / "labels.csv").exists()


def test_annotations_without_objects_are_counted_and_can_be_left_out(dvc_project, tmp_path):
    """Item 8: an XML with no <object> is said, with a count, and data.skip_no_objects drops it."""
    voc = make_voc(tmp_path / "mine", 2007) / "VOC2007"
    empty = (voc / "ImageSets" / "Main" / "trainval.txt").read_text().split()[:2]
    for image_id in empty:
        path = voc / "Annotations" / f"{image_id}.xml"
        path.write_text(re.sub(r"\s*<object>.*?</object>", "", path.read_text(), flags=re.S))
    dvc_project.set_params({"data.source": str(tmp_path / "mine")})

    result, output = _repro(dvc_project, "prepare")
    assert result.returncode == 0, output
    assert "WARNING: 2 annotation(s) have no <object>" in output
    assert "set data.skip_no_objects: true in params.yaml" in output
    table = pd.read_csv(dvc_project.path("data", "labels.csv"), dtype={"image_id": str}).set_index("image_id")
    assert len(table) == 100 and (table.loc[empty, list(VOC_CLASSES)] == -1).all(axis=None)

    dvc_project.set_params({"data.skip_no_objects": True})
    result, output = _repro(dvc_project, "prepare")
    assert result.returncode == 0, output
    assert "2 annotation(s) have no <object> and their images were left out" in output
    table = pd.read_csv(dvc_project.path("data", "labels.csv"), dtype={"image_id": str})
    assert len(table) == 98 and not set(empty) & set(table["image_id"])
