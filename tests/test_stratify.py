"""Iterative stratification: subset draws and k-fold splits on VOC-like label matrices."""
import json
import re

import numpy as np
import pandas as pd
import pytest

from fewlabel.errors import PipelineError
from fewlabel.artifacts import training_targets
from fewlabel.params import SubsetParams, VOC_CLASSES
from fewlabel.data.stratify import stratified_subset
from fewlabel.model.folds import check_folds, multilabel_kfold
from fewlabel.data.subset import class_distribution, pool_limited_classes, select_subsets
from tests.synthetic import VOC07_TRAINVAL_POSITIVES
from tests.vocgen import label_table, make_voc, voc_spec


def voc_like_pool(n=5011, seed=1):
    """Labels with VOC2007 trainval class frequencies; every image has a label."""
    rng = np.random.default_rng(seed)
    present = rng.random((n, 20)) < np.array(VOC07_TRAINVAL_POSITIVES) / 5011
    empty = ~present.any(axis=1)
    present[empty, rng.integers(0, 20, empty.sum())] = True
    return present


def test_subset_has_exact_size_is_deterministic_and_keeps_proportions():
    pool = voc_like_pool()
    chosen = stratified_subset(pool, 750, min_per_class=10, seed=42)
    assert len(chosen) == 750 and len(set(chosen)) == 750
    assert np.array_equal(chosen, stratified_subset(pool, 750, min_per_class=10, seed=42))
    assert not np.array_equal(chosen, stratified_subset(pool, 750, min_per_class=10, seed=7))
    deviation = np.abs(pool[chosen].mean(axis=0) - pool.mean(axis=0))
    # Measured: at most 0.07 percentage points on this pool (random sampling: ~1.8 for person).
    assert deviation.max() < 0.005, deviation
    random_draw = np.random.default_rng(0).choice(len(pool), 750, replace=False)
    assert deviation.max() < np.abs(pool[random_draw].mean(axis=0) - pool.mean(axis=0)).max()


def test_min_per_class_is_guaranteed_where_the_pool_allows():
    pool = voc_like_pool()
    pool[:, 16] = False
    pool[:12, 16] = True  # a class with only 12 images in the pool
    pool[12:16, 9] = False
    chosen = stratified_subset(pool, 100, min_per_class=10, seed=0)
    counts = pool[chosen].sum(axis=0)
    assert counts.min() >= 10, counts
    rare_only = np.zeros_like(pool)
    rare_only[:, 0] = True
    rare_only[:3, 1] = True  # pool has just 3: all of them are taken
    assert pool.shape[1] == 20
    assert rare_only[stratified_subset(rare_only, 50, min_per_class=10, seed=0)][:, 1].sum() == 3


def test_quotas_are_met_exactly():
    pool = voc_like_pool()
    person, sheep = VOC_CLASSES.index("person"), VOC_CLASSES.index("sheep")
    chosen = stratified_subset(pool, 750, min_per_class=10, quotas={person: 150, sheep: 40}, seed=42)
    counts = pool[chosen].sum(axis=0)
    assert counts[person] == 150 and counts[sheep] == 40
    assert counts.min() >= 10


def test_impossible_requests_say_what_is_possible():
    pool = voc_like_pool(n=200)
    with pytest.raises(PipelineError, match="at most 200"):
        stratified_subset(pool, 201)
    available = int(pool[:, 16].sum())
    with pytest.raises(PipelineError, match=f"has only {available}"):
        stratified_subset(pool, 100, quotas={16: available + 1}, class_names=VOC_CLASSES)
    everything_person = np.ones((50, 2), dtype=bool)
    with pytest.raises(PipelineError, match="quota"):
        stratified_subset(everything_person, 20, quotas={0: 5})


def test_kfold_balances_labels_and_sizes():
    pool = voc_like_pool(n=750)
    folds = multilabel_kfold(pool, 5, seed=0)
    assert set(folds) == set(range(5))
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 15
    per_fold = np.stack([pool[folds == k].sum(axis=0) for k in range(5)])
    expected = pool.sum(axis=0) / 5
    assert np.all(np.abs(per_fold - expected) <= np.maximum(2, 0.15 * expected)), per_fold
    assert np.array_equal(folds, multilabel_kfold(pool, 5, seed=0))
    check_folds(pool, folds, VOC_CLASSES)


def test_check_folds_names_the_class_without_positives():
    targets = np.zeros((10, 2), dtype=bool)
    targets[:, 0] = np.arange(10) % 2 == 0
    targets[0, 1] = True
    folds = np.arange(10) % 5
    with pytest.raises(PipelineError, match="'b' has no positive"):
        check_folds(targets, folds, ["a", "b"])


def test_select_subsets_uses_splits_and_eval_cap():
    pool = voc_like_pool(n=400)
    labels = pd.DataFrame(np.where(pool, 1, -1), columns=list(VOC_CLASSES))
    labels.insert(0, "split", ["trainval"] * 250 + ["test"] * 150)
    labels.insert(0, "image_id", [f"{i:06d}" for i in range(400)])
    train, eval_set = select_subsets(labels, VOC_CLASSES, "trainval", "test",
                                     SubsetParams(n_images=100, min_per_class=2))
    assert len(train) == 100 and set(train["split"]) == {"trainval"}
    assert len(eval_set) == 150 and list(eval_set["image_id"]) == sorted(eval_set["image_id"])
    _, capped = select_subsets(labels, VOC_CLASSES, "trainval", "test",
                               SubsetParams(n_images=100, min_per_class=2, eval_max_images=60))
    assert len(capped) == 60 and set(capped["image_id"]) <= set(eval_set["image_id"])
    with pytest.raises(PipelineError, match="subset.n_images=300 .* only 250"):
        select_subsets(labels, VOC_CLASSES, "trainval", "test", SubsetParams(n_images=300))
    with pytest.raises(PipelineError, match="no image in split 'val'"):
        select_subsets(labels, VOC_CLASSES, "trainval", "val", SubsetParams(n_images=10))


# --------------------------------------------------------------------------- issue 12: quotas and floors

def generated_pool() -> np.ndarray:
    """Training targets of the trainval split of the generated VOC data set the end-to-end
    tests use (60 images, 3 to 10 positives per class)."""
    table = label_table(voc_spec(2007))
    return training_targets(table.loc[table["split"] == "trainval", list(VOC_CLASSES)].to_numpy())


def test_a_possible_quota_is_met_exactly_with_every_floor():
    """Item 3: the greedy draw plus swaps missed these; the exact repair finds them."""
    pool = generated_pool()
    person = VOC_CLASSES.index("person")
    floors = np.minimum(3, pool.sum(axis=0))
    floors[person] = 0
    for quota in (0, 1):
        chosen = stratified_subset(pool, 40, min_per_class=3, quotas={person: quota}, seed=42, class_names=VOC_CLASSES)
        counts = pool[chosen].sum(axis=0)
        assert len(set(chosen)) == 40 and counts[person] == quota and (counts >= floors).all(), counts
        assert np.array_equal(chosen, stratified_subset(pool, 40, 3, {person: quota}, 42, VOC_CLASSES))


def _numbers(pattern: str, message: str) -> list[int]:
    match = re.search(pattern, message)
    assert match, message
    return [int(g) for g in match.groups()]


def test_impossible_floors_and_quotas_name_the_binding_constraint_truthfully():
    """Items 3 and 4: the error names the constraint, and the values it proposes do fit."""
    pool = generated_pool()
    with pytest.raises(PipelineError) as error:
        stratified_subset(pool, 40, min_per_class=5, seed=42, class_names=VOC_CLASSES)
    n_needed, floor_fits = _numbers(r"subset\.min_per_class=5 does not fit in subset\.n_images=40: .* raise "
                                    r"subset\.n_images to at least (\d+) or lower subset\.min_per_class to at "
                                    r"most (\d+)", str(error.value))
    floors = np.minimum(5, pool.sum(axis=0))
    assert (pool[stratified_subset(pool, n_needed, 5, seed=42)].sum(axis=0) >= floors).all()
    with pytest.raises(PipelineError):  # n_needed is the fewest
        stratified_subset(pool, n_needed - 1, 5, seed=42)
    fitted = pool[stratified_subset(pool, 40, floor_fits, seed=42)].sum(axis=0)
    assert (fitted >= np.minimum(floor_fits, pool.sum(axis=0))).all(), fitted

    person = VOC_CLASSES.index("person")
    without_person = int((pool[:, person] == 0).sum())
    with pytest.raises(PipelineError, match=rf"subset\.class_quota\.person=0 cannot be met with subset\.n_images=60: "
                                            rf".* only {without_person} such images"):
        stratified_subset(pool, 60, quotas={person: 0}, class_names=VOC_CLASSES)
    with pytest.raises(PipelineError, match=r"subset\.min_per_class=3 cannot be met together with "
                                            r"subset\.class_quota\.tvmonitor=0: .*\(horse\)"):
        stratified_subset(pool, 40, 3, quotas={VOC_CLASSES.index("tvmonitor"): 0}, class_names=VOC_CLASSES)


@pytest.fixture
def subset_project(dvc_project, tmp_path):
    """A DVC project on the generated VOC data with the end-to-end subset settings."""
    make_voc(tmp_path / "mine", 2007)
    dvc_project.set_params({"data.source": str(tmp_path / "mine"), "subset.n_images": 40,
                            "subset.min_per_class": 3})
    return dvc_project


def test_dvc_repro_subset_meets_a_quota_the_draw_used_to_reject(subset_project):
    """Item 3: ``class_quota.person=1`` with min_per_class 3 of 40 was refused; a subset exists."""
    subset_project.set_params({"subset.class_quota": {"person": 1}})
    result = subset_project.dvc("repro", "subset")
    assert result.returncode == 0, result.stdout + result.stderr
    train = pd.read_csv(subset_project.path("data", "subset", "train.csv"), dtype={"image_id": str})
    counts = (train[list(VOC_CLASSES)] >= 0).sum()
    pool = generated_pool().sum(axis=0)
    assert len(train) == 40 and counts["person"] == 1
    assert all(counts[name] >= min(3, pool[k]) for k, name in enumerate(VOC_CLASSES) if name != "person"), counts


@pytest.mark.parametrize("settings, message", [
    ({"subset.min_per_class": 5},
     r"subset\.min_per_class=5 does not fit in subset\.n_images=40: .*raise subset\.n_images to at least \d+ "
     r"or lower subset\.min_per_class to at most \d+"),
    ({"subset.n_images": 10, "subset.min_per_class": 10},
     r"subset\.min_per_class=10 does not fit in subset\.n_images=10: .*raise subset\.n_images"),
    ({"subset.class_quota": {"person": 0}},
     r"class 'person' has no positive among the 40 training images, so it cannot be learnt; "
     r"subset\.class_quota\.person=0 asks for that"),
    ({"subset.n_images": 4, "subset.min_per_class": 0},
     r"has no positive among the 4 training images, so it cannot be learnt; raise subset\.min_per_class "
     r"\(now 0\) to at least 1"),
])
def test_dvc_repro_subset_fails_when_a_floor_cannot_be_met_or_a_class_has_no_positive(
        subset_project, settings, message):
    """Item 4: the true reason, in subset (not after featurize), and no subset CSV written."""
    subset_project.set_params(settings)
    result = subset_project.dvc("repro", "subset")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert re.search(message, output), output
    assert subset_project.path("data", "labels.csv").exists()  # prepare ran ...
    for name in ("subset/train.csv", "subset/eval.csv"):  # ... subset wrote nothing
        assert not subset_project.path("data", *name.split("/")).exists()
    assert not subset_project.path("plots", "class_distribution.csv").exists()


def test_the_pool_limited_floor_warning_is_true(tmp_path, capsys):
    """Item 4: the warning lists only the classes whose pool is below the floor, with its count."""
    pool = voc_like_pool(n=400)
    labels = pd.DataFrame(np.where(pool, 1, -1), columns=list(VOC_CLASSES))
    labels["sheep"] = np.where(labels.index < 4, 1, -1)  # only 4 sheep in the pool
    labels.insert(0, "split", ["trainval"] * 250 + ["test"] * 150)
    labels.insert(0, "image_id", [f"{i:06d}" for i in range(400)])
    train, eval_set = select_subsets(labels, VOC_CLASSES, "trainval", "test",
                                     SubsetParams(n_images=100, min_per_class=5))
    distribution = class_distribution(labels[labels["split"] == "trainval"], train, eval_set, VOC_CLASSES)
    assert pool_limited_classes(distribution, 5) == ["sheep"]
    assert (train["sheep"] >= 0).sum() == 4


def test_dvc_repro_subset_caps_the_eval_set_and_refuses_the_old_key(subset_project):
    """subset.eval_max_images (subset's own key, in its params) caps eval.csv; the key it
    replaced fails at check_params, naming the new one, before any stage runs."""
    subset_project.set_params({"subset.eval_max_images": 15})
    result = subset_project.dvc("repro", "subset")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(pd.read_csv(subset_project.path("data", "subset", "eval.csv"))) == 15

    subset_project.set_params({"eval.max_images": 15})
    result = subset_project.dvc("repro", "subset")
    assert result.returncode != 0
    assert "params.yaml: eval.max_images was renamed to subset.eval_max_images" in result.stdout + result.stderr
    assert "Running stage 'subset'" not in result.stdout


# --------------------------------------------------------------------------- issue 28: the pool is never drawn

def _train_ids(project) -> list[str]:
    return list(pd.read_csv(project.path("data", "subset", "train.csv"), dtype={"image_id": str})["image_id"])


def test_labels_for_an_overlapping_pool_add_exactly_those_images_and_keep_the_draw(dvc_project, tmp_path):
    """Finding 2: with a pool inside the training split, labelling pool images redrew the subset,
    the training set grew by fewer than were labelled and the log under-counted."""
    from fewlabel.active.label_import import add_labels

    devkit = make_voc(tmp_path / "mine", 2007, n_train=120)
    voc = devkit / "VOC2007"
    ids = (voc / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    (voc / "ImageSets" / "Main" / "pool.txt").write_text("".join(f"{i}\n" for i in ids[::3]))
    dvc_project.set_params({"data.source": str(devkit), "subset.n_images": 40, "subset.min_per_class": 2,
                            "data.pool_split": "pool"})
    dvc_project.dvc("repro", "subset", check=True)
    before = _train_ids(dvc_project)
    assert len(before) == 40 and not set(before) & set(ids[::3])  # pool images are never drawn
    labelled = ids[::3][:9]
    export = tmp_path / "export.json"
    export.write_text(json.dumps([  # each labelled as showing only 'person': their labels change
        {"data": {"image_id": i, "image": f"/data/local-files/?d={voc}/JPEGImages/{i}.jpg"},
         "annotations": [{"result": [{"from_name": "labels", "type": "choices", "value": {"choices": ["person"]}}]}]}
        for i in labelled]))
    add_labels(export, voc, dvc_project.path("suggestions", "labelled.txt"), VOC_CLASSES, overwrite=True)
    result = dvc_project.dvc("repro", "subset", check=True)
    after = _train_ids(dvc_project)
    assert sorted(after) == sorted(before + labelled)
    assert "49 training images (40 drawn + 9 from suggestions/labelled.txt)" in result.stdout + result.stderr


def test_a_pool_holding_the_whole_training_split_is_refused(dvc_project, tmp_path):
    """Finding 2 as tried: pool_split trainval with train_split trainval was accepted silently."""
    make_voc(tmp_path / "mine", 2007)
    dvc_project.set_params({"data.source": str(tmp_path / "mine"), "subset.n_images": 40,
                            "subset.min_per_class": 3, "data.pool_split": "trainval"})
    result = dvc_project.dvc("repro", "subset")
    assert result.returncode != 0
    assert ("data.pool_split 'trainval' holds every image of the 'trainval' split (data.train_split), so none is "
            "left to draw the training subset from") in result.stdout + result.stderr
    assert not dvc_project.path("data", "subset", "train.csv").exists()
