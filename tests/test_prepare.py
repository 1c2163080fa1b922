"""stages.prepare: the label table from VOC annotations; plus download + prepare under dvc repro."""
from __future__ import annotations

import re
import stat

import pandas as pd
import pytest

from stages import prepare
from stages.common import PipelineError
from stages.params import VOC_CLASSES
from tests.vocgen import label_table, make_tarballs, make_voc, md5s, voc_spec


def run_stage(params_file, voc, out, **data) -> pd.DataFrame:
    """Run prepare's main() on ``voc`` and read back the table it wrote."""
    path = params_file({f"data.{key}": value for key, value in data.items()})
    prepare.main(["--voc", str(voc), "--out", str(out), "--params", str(path)])
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
    image_id, objects = prepare.parse_annotation(xml, "VOC/Annotations/000042.xml")
    assert image_id == "000042"
    assert objects == [("dog", True), ("cat", True), ("cat", False), ("zebra", False)]

    annotations = {"000042": objects, "000007": []}
    table = prepare.build_label_table(annotations, {"000042": "test"}, ["cat", "dog", "bird"])
    assert table.to_dict("records") == [
        {"image_id": "000007", "split": "unused", "cat": -1, "dog": -1, "bird": -1},
        {"image_id": "000042", "split": "test", "cat": 1, "dog": 0, "bird": -1}]
    assert prepare.unknown_classes(annotations, ["cat", "dog"]) == {"zebra": 1}

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
