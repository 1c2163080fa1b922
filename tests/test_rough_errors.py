"""Issue 23: rough edges that gave a wrong answer, a silent success or advice that fails.

- ``features.engine: ray`` without Ray installed fails in check_params, naming the key and
  how to install it (not only when featurize next reruns);
- the subset stage's advice, followed, leads to a subset (it never asks for
  ``subset.min_per_class`` 0, which the next run refuses);
- split lists saved with a UTF-8 byte order mark (Windows editors) read like any other.
"""
from __future__ import annotations

import re

import pandas as pd
import pytest

from fewlabel.data.subset import select_subsets
from fewlabel.errors import PipelineError
from fewlabel.features import engine
from fewlabel.params import VOC_CLASSES, SubsetParams
from stages import check_params
from stages import prepare as prepare_stage
from tests.vocgen import label_table, make_voc, voc_spec

# --------------------------------------------------------------------------- check_params: engine

def test_check_params_refuses_engine_ray_where_ray_is_not_installed(params_file, tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "ray_installed", lambda: False)
    out = tmp_path / "params_valid.txt"
    with pytest.raises(PipelineError, match=r"features\.engine is ray.*pip install -r requirements-engine\.txt"):
        check_params.main(["--params", str(params_file({"features.engine": "ray"})), "--out", str(out)])
    assert not out.exists()

    for name in ("single", "auto"):  # what runs without Ray
        check_params.main(["--params", str(params_file({"features.engine": name})), "--out", str(out)])
        assert out.exists()
        out.unlink()

    monkeypatch.setattr(engine, "ray_installed", lambda: True)
    check_params.main(["--params", str(params_file({"features.engine": "ray"})), "--out", str(out)])
    assert out.exists()


# --------------------------------------------------------------------------- subset advice

@pytest.fixture(scope="module")
def labels() -> pd.DataFrame:
    return label_table(voc_spec(2007))


def advice(message: str, n_images: int, min_per_class: int) -> list[tuple[int, int]]:
    """Every (n_images, min_per_class) a subset error message advises."""
    options = []
    raise_n = re.search(r"raise subset\.n_images to at least (\d+)", message)
    if raise_n:
        options.append((int(raise_n.group(1)), min_per_class))
    with_floor = re.search(r"or to at least (\d+) with subset\.min_per_class=(\d+)", message)
    if with_floor:
        options.append((int(with_floor.group(1)), int(with_floor.group(2))))
    lower = re.search(r"lower subset\.min_per_class to at most (\d+)", message)
    if lower:
        options.append((n_images, int(lower.group(1))))
    raise_floor = re.search(r"raise subset\.min_per_class \(now \d+\) to at least (\d+)", message)
    if raise_floor:
        options.append((n_images, int(raise_floor.group(1))))
    return options


@pytest.mark.parametrize("n_images, min_per_class", [(5, 3), (5, 1), (5, 0), (20, 3)])
def test_following_the_subset_advice_leads_to_a_subset(labels, n_images, min_per_class):
    """The issue: n_images=5 advised 'lower min_per_class to at most 0', and 0 was then refused
    with 'raise subset.min_per_class (now 0) to at least 1'. Every piece of advice, followed
    (and the advice after it), must reach a subset within a few steps."""
    def reaches_a_subset(n, floor, steps, path):
        try:
            select_subsets(labels, VOC_CLASSES, "trainval", "test", SubsetParams(n_images=n, min_per_class=floor))
            return True
        except PipelineError as error:
            options = advice(str(error), n, floor)
            assert options, f"no advice to follow: {error}"
            assert steps > 0, f"still failing after following {path}: {error}"
            for option in options:
                assert option not in path, f"advice goes round in circles: {path + [option]}: {error}"
                assert reaches_a_subset(*option, steps - 1, path + [option])
            return True

    assert reaches_a_subset(n_images, min_per_class, 3, [(n_images, min_per_class)])


def test_subset_advice_never_asks_for_no_floor(labels):
    with pytest.raises(PipelineError) as error:
        select_subsets(labels, VOC_CLASSES, "trainval", "test", SubsetParams(n_images=5, min_per_class=3))
    assert "at most 0" not in str(error.value) and "cannot go below 1" in str(error.value)


# --------------------------------------------------------------------------- split lists

def run_prepare(params_file, voc, out) -> pd.DataFrame:
    prepare_stage.main(["--voc", str(voc), "--out", str(out), "--params", str(params_file())])
    return pd.read_csv(out, dtype={"image_id": str})


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_split_list_with_a_byte_order_mark_reads_like_any_other(tmp_path, params_file, newline):
    voc = make_voc(tmp_path / "src", 2007) / "VOC2007"
    main = voc / "ImageSets" / "Main"
    for split in ("trainval", "test"):
        ids = (main / f"{split}.txt").read_text().split()
        (main / f"{split}.txt").write_bytes(("\ufeff" + newline.join(ids) + newline).encode("utf-8"))
    table = run_prepare(params_file, voc, tmp_path / "labels.csv")
    pd.testing.assert_frame_equal(table, label_table(voc_spec(2007)), check_dtype=False)


def test_a_split_list_that_is_not_utf8_names_the_file(tmp_path, params_file):
    voc = make_voc(tmp_path / "src", 2007) / "VOC2007"
    path = voc / "ImageSets" / "Main" / "test.txt"
    path.write_bytes(b"\xff\xfe" + path.read_text().encode("utf-16-le"))
    with pytest.raises(PipelineError, match=r"test\.txt: not a UTF-8 text file"):
        run_prepare(params_file, voc, tmp_path / "labels.csv")
