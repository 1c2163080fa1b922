"""The whole pipeline through the real DVC commands, on a generated VOC-format data set.

One project is built per module (dvc repro is the slow part); tests that change the
workspace put it back (``restore``) so each one starts from the committed baseline.
"""
import json
import re
import time

import pandas as pd
import pytest

from tests.conftest import make_dvc_project
from tests.vocgen import make_voc

FAST_PARAMS = {
    "features.backbones": ["EfficientNetB0"],
    "features.weights": None,
    "features.image_size": 32,
    "features.batch_size": 16,
    "subset.n_images": 40,
    "subset.min_per_class": 3,
    "calibrate.folds": 3,
    "tune.folds": 2,
    "svm.gamma": "scale",
    "svm.n_jobs": 1,
    "evaluate.bootstrap": 20,
}


def stages_run(output: str) -> set[str]:
    """Names of the stages DVC says it ran."""
    return set(re.findall(r"Running stage '([\w-]+)'", output))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    devkit = make_voc(root / "voc", year=2007, n_train=60, n_eval=40)
    project = make_dvc_project(root / "project", extra=["bench", "tests/__init__.py"], commit=False)
    project.env["FEWLABEL_CACHE_DIR"] = str(root / "user-cache")
    project.set_params({**FAST_PARAMS, "data.source": str(devkit)})
    first = project.dvc("repro", check=True)
    project.first_repro_output = first.stdout
    project.commit("baseline run")
    return project


def restore(project):
    """Back to the committed baseline: params, lock and outputs."""
    project.git("checkout", "--", ".", check=True)
    project.git("clean", "-fdq", "metrics", "plots", check=True)
    project.dvc("checkout", "--force", check=True)


def test_repro_runs_every_stage_and_writes_the_declared_outputs(project):
    assert stages_run(project.first_repro_output) == {"download", "prepare", "subset", "featurize", "train",
                                                      "calibrate", "evaluate"}
    metrics = json.loads(project.path("metrics/metrics.json").read_text())
    assert metrics["n_train"] == 40 and metrics["n_eval"] == 40
    assert 0 <= metrics["map"] <= 1 and set(metrics["calibrated"]) == set(metrics["default_threshold"])
    meta = json.loads(project.path("data/features/meta.json").read_text())
    assert meta["backbones"] == ["EfficientNetB0"] and meta["dims"] == [1280]
    dag = project.dvc("dag", check=True).stdout
    for stage in ("download", "prepare", "subset", "featurize", "train", "calibrate", "evaluate"):
        assert stage in dag


def test_second_repro_does_nothing(project):
    second = project.dvc("repro", check=True)
    assert stages_run(second.stdout) == set(), second.stdout


def test_an_impossible_subset_fails_with_a_clear_message(project):
    try:
        project.set_params({"subset.n_images": 1000})
        result = project.dvc("repro", "subset")
        assert result.returncode != 0
        assert "subset.n_images=1000 but the 'trainval' split has only 60 images" in result.stdout + result.stderr
    finally:
        restore(project)


def test_exp_run_with_new_C_reruns_only_the_svm_stages_and_metrics_diff_shows_it(project):
    try:
        run = project.dvc("exp", "run", "-S", "svm.C=10", check=True)
        assert stages_run(run.stdout) == {"train", "calibrate", "evaluate"}, run.stdout
        assert "featurize" not in stages_run(run.stdout)
        model = project.lock()["stages"]["train"]
        assert any(p.get("svm", {}).get("C") == 10 for p in model["params"].values())
        diff = json.loads(project.dvc("metrics", "diff", "--json", check=True).stdout or "{}")
        changed = diff.get("metrics/metrics.json", {})
        assert changed, "dvc metrics diff read nothing from metrics/metrics.json"
        assert any(key.startswith("calibrated.") or key == "map" for key in changed), changed
        shown = project.dvc("metrics", "show", "--json", check=True).stdout
        assert "f1_micro" in shown and "map_voc07" in shown and "map_ci95" in shown
    finally:
        restore(project)


def test_plots_show_renders_every_declared_plot(project):
    result = project.dvc("plots", "show", "-o", "rendered", check=True)
    html = project.path("rendered", "index.html").read_text()
    assert "failed to load" not in result.stderr, result.stderr
    for plot in ("plots/confusion/cat.csv", "plots/pr/dog.csv", "plots/thresholds/person.csv",
                 "plots/class_distribution.csv", "plots/confusion_matrices.png", "plots/class_distribution.png",
                 "plots/thresholds.png", "plots/tune_heatmap.png"):
        plot_id = plot.replace("/", "_").replace(".", "_")  # how DVC names each plot in the page
        assert plot_id in html, (plot, result.stdout)


def test_tuning_through_dvc_records_the_grid(project):
    try:
        project.dvc("exp", "run", "-S", "tune.enabled=true", "-S", "tune.C=[0.5,50]", "-S", "tune.gamma=[scale]",
                    check=True)
        tune = json.loads(project.path("metrics/tune.json").read_text())
        assert tune["enabled"] is True and len(tune["grid"]) == 2
        assert tune["best"]["C"] in (0.5, 50) and tune["best"]["cv_map"] == max(r["map_mean"] for r in tune["grid"])
        assert project.path("plots/tune_heatmap.png").stat().st_size > 1000
    finally:
        restore(project)


def test_queued_sweep_reuses_the_cached_features(project):
    project.dvc("exp", "run", "--queue", "-S", "svm.C=0.5,5", check=True)
    project.dvc("queue", "start", "-j", "1", check=True)
    deadline = time.time() + 420
    while time.time() < deadline:
        status = project.dvc("queue", "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(3)
    assert "Failed" not in status, status
    queued_names = set(re.findall(r"^\w+\s+([\w-]+)\s+.*Success", status, flags=re.M))
    assert len(queued_names) == 2, status
    baseline_run = json.loads(project.path("metrics/featurize.json").read_text())
    shown = json.loads(project.dvc("exp", "show", "--json", check=True).stdout)
    runs = [run for entry in shown for exp in (entry.get("experiments") or []) for run in exp.get("revs", [])
            if run["name"] in queued_names]
    assert {run["data"]["params"]["params.yaml"]["data"]["svm"]["C"] for run in runs} == {0.5, 5}, shown
    for run in runs:
        data = run["data"]
        metrics = data["metrics"]["metrics/metrics.json"]["data"]
        assert "map" in metrics and "f1_micro" in metrics["calibrated"]
        # featurize rewrites its run stats whenever it runs (then all from the cache): same = not rerun.
        assert data["metrics"]["metrics/featurize.json"]["data"] == baseline_run
        logs = project.dvc("queue", "logs", run["name"], check=True).stdout
        assert "Stage 'featurize' didn't change, skipping" in logs and "Running stage 'train'" in logs, logs
    try:  # keep the best: apply it to the workspace
        best = max(runs, key=lambda run: run["data"]["metrics"]["metrics/metrics.json"]["data"]["map"])
        project.dvc("exp", "apply", best["name"], check=True)
        assert project.params()["svm"]["C"] == best["data"]["params"]["params.yaml"]["data"]["svm"]["C"]
        applied = json.loads(project.path("metrics/metrics.json").read_text())
        assert applied == best["data"]["metrics"]["metrics/metrics.json"]["data"]
    finally:
        restore(project)


def test_predict_labels_match_the_evaluation_predictions(project, tmp_path):
    evaluated = pd.read_csv(project.path("predictions/eval.csv"), dtype={"image_id": str}).head(6)
    images = [str(project.path("data/raw/voc/JPEGImages", f"{image_id}.jpg")) for image_id in evaluated["image_id"]]
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("this is not a JPEG")
    result = project.run(["python", "-m", "stages.predict", *images, str(not_an_image), "--out", str(tmp_path / "p.csv"),
                          "--top-k", "2"])
    assert result.returncode == 1  # one bad file ...
    assert f"{not_an_image}: not a readable image" in result.stderr
    predicted = pd.read_csv(tmp_path / "p.csv")  # ... and the others were labelled
    assert len(predicted) == 6
    columns = [c for c in evaluated.columns if c.startswith("y_")]
    assert (predicted[columns].to_numpy() == evaluated[columns].to_numpy()).all()
    probabilities = [c for c in evaluated.columns if c.startswith("p_")]
    assert abs(predicted[probabilities].to_numpy() - evaluated[probabilities].to_numpy()).max() < 1e-5
    assert "served from the feature cache" in result.stdout
