"""The suggest loop through the real DVC commands: a pool of unlabelled images is ranked, new
labels join the training set through suggestions/labelled.txt, an SVM change reruns neither
featurize nor the pool's extraction, and the pool's labels are never read.

The module works in its own copy of the session's reproduced project (``reproduced_pipeline``, whose
pool is 20 images, one of them unreadable); each test leaves it as it found it.
"""
import json
import random
import re
import shlex
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from fewlabel.active.label_check import label_check
from fewlabel.artifacts import read_label_table, training_targets
from tests.conftest import N_SUGGESTED, REPORT_TENSORFLOW, copy_project, stages_run


@pytest.fixture(scope="module")
def project(reproduced_pipeline):
    return copy_project(reproduced_pipeline, reproduced_pipeline.root.with_name("suggest-tests"))


def test_repro_ranks_the_pool_and_writes_every_output(project):
    assert {"featurize_pool", "suggest"} <= stages_run(project.first.stdout)
    assert f"{project.bad_id}.jpg: not a readable image" in project.first.stderr  # reported, and the rest went on
    pool = np.load(project.path("data/features/pool.npz"))
    assert sorted(pool["ids"]) == sorted(set(project.pool_ids) - {project.bad_id})
    train_ids = set(pd.read_csv(project.path("data/subset/train.csv"), dtype={"image_id": str})["image_id"])
    suggested = pd.read_csv(project.path("suggestions/next.csv"), dtype={"image_id": str})
    assert list(suggested["rank"]) == list(range(1, N_SUGGESTED + 1))
    assert set(suggested["image_id"]) <= set(pool["ids"]) and not set(suggested["image_id"]) & train_ids
    assert suggested["why"].str.len().min() > 0 and {"labels", "p_dog", "score", "path"} <= set(suggested.columns)
    tasks = json.loads(project.path("suggestions/label_studio.json").read_text())
    assert [t["data"]["image_id"] for t in tasks] == list(suggested["image_id"])
    first = tasks[0]["predictions"][0]["result"][0]
    assert first["type"] == "choices" and first["value"]["choices"] == str(suggested["labels"][0]).split()
    config = project.path("suggestions/label_studio_config.xml").read_text()
    assert f'name="{first["from_name"]}"' in config and f'toName="{first["to_name"]}"' in config
    assert config.count("<Choice ") == 20
    check = pd.read_csv(project.path("suggestions/check_labels.csv"), dtype={"image_id": str})
    assert sorted(check["image_id"]) == sorted(train_ids) and check["score"].is_monotonic_decreasing
    # the default check: max_abs on the train stage's own out-of-fold probabilities (no other fold
    # assignments), an image given fewer than calibrate.min_labels labels first
    params = project.params()
    assert params["suggest"]["check_score"] == "max_abs"
    oof = pd.read_csv(project.path("models/oof_probabilities.csv"), dtype={"image_id": str})
    classes = [c[2:] for c in oof.columns if c.startswith("p_")]
    ids, labels = read_label_table(project.path("data/subset/train.csv"), classes)
    assert list(oof["image_id"]) == list(ids)
    expected = label_check(oof[[f"p_{c}" for c in classes]].to_numpy(float), training_targets(labels), "max_abs",
                           min_labels=params["calibrate"]["min_labels"])
    assert list(check["image_id"]) == list(ids[expected.order])
    np.testing.assert_allclose(check["score"], expected.scores[expected.order], rtol=1e-6)
    curve = pd.read_csv(project.path("plots/learning_curve.csv"))
    assert set(curve["kind"]) == {"measured", "forecast"}
    metrics = json.loads(project.path("metrics/suggest.json").read_text())
    assert metrics["pool"] == len(pool["ids"]) and 0 <= metrics["cv_map"] <= 1
    assert project.path("plots/suggestions.png").stat().st_size > 0


def test_an_svm_change_reruns_neither_featurize_nor_the_pool_extraction(project):
    try:
        result = project.dvc("exp", "run", "-S", "svm.C=10", check=True)
        # check_params depends on the whole params.yaml; its output is unchanged, so nothing else reruns for it
        assert stages_run(result.stdout) == {"check_params", "train", "calibrate", "evaluate", "suggest"}, result.stdout
    finally:
        project.reset()


def test_pool_labels_are_never_read(project):
    """Shuffle the pool images' annotations among them: the suggestions stay the same."""
    before = project.path("suggestions/next.csv").read_text()
    annotations = {i: (project.voc / "Annotations" / f"{i}.xml").read_text() for i in project.pool_ids}
    shuffled = list(annotations.values())
    random.Random(0).shuffle(shuffled)
    try:
        for image_id, text in zip(annotations, shuffled):
            (project.voc / "Annotations" / f"{image_id}.xml").write_text(re.sub(
                r"<filename>[^<]*</filename>", f"<filename>{image_id}.jpg</filename>", text))
        project.dvc("repro", check=True)
        project.dvc("repro", "-f", "-s", "featurize_pool", check=True)
        project.dvc("repro", "-f", "-s", "suggest", check=True)
        assert project.path("suggestions/next.csv").read_text() == before
    finally:
        for image_id, text in annotations.items():
            (project.voc / "Annotations" / f"{image_id}.xml").write_text(text)
        project.reset()


def test_labelled_suggestions_join_the_training_set(project):
    suggested = pd.read_csv(project.path("suggestions/next.csv"), dtype={"image_id": str})["image_id"][:3].tolist()
    listed = project.path("suggestions/labelled.txt")
    try:
        listed.write_text(listed.read_text() + "".join(f"{i}\n" for i in suggested))
        result = project.dvc("repro", check=True)
        assert "40 drawn + 3 from suggestions/labelled.txt" in result.stdout
        train_ids = pd.read_csv(project.path("data/subset/train.csv"), dtype={"image_id": str})["image_id"]
        assert set(suggested) <= set(train_ids) and len(train_ids) == 43
        pool = np.load(project.path("data/features/pool.npz"))
        assert not set(suggested) & set(pool["ids"])  # the pool always excludes the training set
        again = pd.read_csv(project.path("suggestions/next.csv"), dtype={"image_id": str})
        assert not set(suggested) & set(again["image_id"])

        listed.write_text(listed.read_text() + "nosuchimage\n")
        failed = project.dvc("repro")
        assert failed.returncode != 0
        assert "suggestions/labelled.txt: lists image id(s) nosuchimage that have no annotation" in failed.stderr
    finally:
        project.reset()


def test_an_empty_pool_is_a_clear_error(project):
    """A pool list that holds only evaluation images leaves nothing to suggest."""
    eval_ids = (project.voc / "ImageSets" / "Main" / "test.txt").read_text()
    listing = project.voc / "ImageSets" / "Main" / "evaluated.txt"
    listing.write_text(eval_ids)
    try:
        project.set_params({"data.pool_split": "evaluated"})
        result = project.dvc("repro")
        assert result.returncode != 0, result.stdout + result.stderr
        assert "data.pool_split 'evaluated' holds no image outside the training and evaluation sets" in result.stderr
        assert "featurize" not in stages_run(result.stdout)  # the subset stage said it, before any extraction
    finally:
        # the VOC folder is shared with the other modules' projects: a file left in it would
        # change the download stage's output there (and rerun everything after it)
        listing.unlink()
        project.reset()


def test_an_image_added_to_the_pool_folder_or_list_reruns_featurize_pool(project, tmp_path):
    """Issue 26: data.pool_images is a dependency (through data/pool), not only a param: an image
    copied into the folder, or a line added to the list file, shows in `dvc status` and reruns
    featurize_pool, and a null pool still runs. Only the pool stages are reproduced (``-s``): a
    changed pool setting also redraws the subset (no longer kept out of the draw), which other
    tests cover. Last in the module: it leaves data/pool pointing elsewhere."""
    pool_stages = ("repro", "--single-item", "pool", "featurize_pool")
    folder = tmp_path / "photos"
    folder.mkdir()
    good = [i for i in project.pool_ids if i != project.bad_id]
    for image_id in good[:4]:
        shutil.copy(project.voc / "JPEGImages" / f"{image_id}.jpg", folder)
    listing = tmp_path / "pool.txt"
    listing.write_text("".join(f"{project.voc / 'JPEGImages'}/{i}.jpg\n" for i in good[:4]))
    try:
        for location, grow in ((folder, lambda: shutil.copy(project.voc / "JPEGImages" / f"{good[4]}.jpg", folder)),
                               (listing, lambda: listing.write_text(listing.read_text() +
                                                                    f"{project.voc / 'JPEGImages'}/{good[4]}.jpg\n"))):
            project.set_params({"data.pool_split": None, "data.pool_images": str(location)})
            project.dvc(*pool_stages, check=True)
            assert "featurize_pool" not in project.dvc("status", "featurize_pool", check=True).stdout
            grow()
            status = project.dvc("status", "featurize_pool", check=True).stdout
            assert "featurize_pool:" in status and "data/pool" in status, status
            rerun = project.dvc(*pool_stages, check=True)
            assert "featurize_pool" in stages_run(rerun.stdout)
            assert sorted(np.load(project.path("data/features/pool.npz"))["ids"]) == sorted(good[:5])
        # every vector of this pool cached: the stage, run as dvc.yaml runs it, writes the same
        # features without starting TensorFlow (seconds a run)
        written = dict(np.load(project.path("data/features/pool.npz")))
        command = shlex.split(yaml.safe_load(project.path("dvc.yaml").read_text())["stages"]["featurize_pool"]["cmd"])
        assert command[:2] == ["python", "-m"]
        direct = project.run(["python", "-c", REPORT_TENSORFLOW, *command[2:]], check=True)
        assert "5 pool images (0 extracted, 5 from cache" in direct.stdout
        assert direct.stdout.rstrip().endswith("tensorflow imported: False"), direct.stdout
        again = np.load(project.path("data/features/pool.npz"))
        assert list(again["ids"]) == list(written["ids"]) and np.array_equal(again["features"], written["features"])
        project.set_params({"data.pool_split": None, "data.pool_images": None})  # no pool
        project.dvc(*pool_stages, check=True)
        assert len(np.load(project.path("data/features/pool.npz"))["ids"]) == 0
    finally:
        project.reset()
