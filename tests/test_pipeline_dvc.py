"""The whole pipeline through the real DVC commands, on a generated VOC-format data set.

The module works in its own copy of the session's reproduced project (``reproduced_pipeline``:
dvc repro is the slow part); tests that change the workspace put it back (``project.reset()``) so
each one starts from the committed baseline.
"""
import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fewlabel.model.rules import apply_rule, load_rule
from tests.conftest import (FAST_PARAMS, REPO_ROOT, REPORT_TENSORFLOW, TINY_BACKBONE, copy_project, make_dvc_project,
                            stages_run)

@pytest.fixture(scope="module")
def project(reproduced_pipeline):
    return copy_project(reproduced_pipeline, reproduced_pipeline.root.with_name("pipeline-tests"))


def test_repro_runs_every_stage_and_writes_the_declared_outputs(project):
    assert stages_run(project.first_repro_output) == {"check_params", "download", "prepare", "subset", "featurize",
                                                      "train", "calibrate", "evaluate", "pool", "featurize_pool",
                                                      "suggest"}
    metrics = json.loads(project.path("metrics/scores.json").read_text())
    assert metrics["n_train"] == 40 and metrics["n_eval"] == 40
    assert 0 <= metrics["map"] <= 1
    for rule in ("calibrated", "default_threshold", "default_threshold_top1"):  # what calibration buys
        assert {"f1_micro", "f1_macro", "dice", "jaccard", "empty_rate"} <= set(metrics[rule]), rule
    assert metrics["pointing_game"] is None  # FAST_PARAMS map no photo: an empty plots/heatmaps.png
    assert project.path("plots/heatmaps.png").stat().st_size > 0
    meta = json.loads(project.path("data/features/meta.json").read_text())
    assert meta["backbones"] == [TINY_BACKBONE] and meta["dims"] == [64]
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
        project.reset()


def test_exp_run_with_new_C_reruns_only_the_svm_stages_and_metrics_diff_shows_it(project):
    try:
        run = project.dvc("exp", "run", "-S", "svm.C=10", check=True)
        # check_params reruns on any params change; its output is unchanged, so download is skipped
        assert stages_run(run.stdout) == {"check_params", "train", "calibrate", "evaluate", "suggest"}, run.stdout
        assert "featurize" not in stages_run(run.stdout)
        model = project.lock()["stages"]["train"]
        assert any(p.get("svm", {}).get("C") == 10 for p in model["params"].values())
        diff = json.loads(project.dvc("metrics", "diff", "--json", check=True).stdout or "{}")
        changed = diff.get("metrics/metrics.json", {})
        assert changed, "dvc metrics diff read nothing from metrics/metrics.json"
        assert set(changed) <= {"map", "f1", "dice", "jaccard", "p_at_1"}, changed
        assert any(key.startswith("calibrated.") for key in diff.get("metrics/scores.json", {})), diff
        shown = project.dvc("metrics", "show", "--json", check=True).stdout
        assert "f1_micro" in shown and "map_voc07" in shown and "map_ci95" in shown
    finally:
        project.reset()


def test_heatmaps_through_dvc_rerun_only_evaluate_and_play_the_pointing_game(project):
    """evaluate.heatmap_photos is evaluate's alone: turning the heatmaps on reruns evaluate only;
    the generated annotations have boxes, so scores.json gets the pointing game on the mapped
    photos, and plots/heatmaps.png shows them, with none of TensorFlow's start-up lines."""
    try:
        run = project.dvc("exp", "run", "-S", "evaluate.heatmap_photos=12", check=True)
        assert stages_run(run.stdout) == {"check_params", "evaluate"}, run.stdout
        assert not TF_STARTUP.search(run.stdout + run.stderr), run.stdout + run.stderr
        game = json.loads(project.path("metrics/scores.json").read_text())["pointing_game"]
        assert game["n_photos"] == 12 and 0 <= game["accuracy"] <= 100 and 0 <= game["centre_baseline"] <= 100
        assert f"pointing game on 12 photos: {game['accuracy']}" in run.stdout
        assert project.path("plots/heatmaps.png").stat().st_size > 10_000  # photos drawn, not the empty figure
    finally:
        project.reset()


def declared_plots(project) -> tuple[list[str], list[str]]:
    """The files dvc.yaml's ``plots:`` section declares, in the project as it is now:
    (those DVC draws with vega, the images), a folder standing for the files in it."""
    import yaml

    entries = [next(iter(e)) if isinstance(e, dict) else e for e in yaml.safe_load(project.path("dvc.yaml").read_text())["plots"]]
    files = []
    for entry in entries:
        path = project.path(entry)
        files += sorted(str(f.relative_to(project.root)) for f in path.rglob("*") if f.is_file()) if path.is_dir() \
            else [entry]
    images = [f for f in files if f.endswith(".png")]
    return [f for f in files if f not in images], images


def test_a_native_size_giving_the_same_sizes_retrains_nothing(project):
    try:
        # the native size a .keras model of any input size is taken to have (224), stated: the same
        # views, so featurize reruns (its params changed) from its cache and writes the same
        # features and meta.json: nothing after it runs
        run = project.dvc("exp", "run", "-S", "features.native_sizes=[224]", check=True)
        assert stages_run(run.stdout) == {"check_params", "featurize"}, run.stdout
        # 1024: select_scales 0.125 and 0.25 give 128 and 256, neither of the baseline's candidates
        # (32 and 64): other features
        run = project.dvc("exp", "run", "-S", "features.native_sizes=[1024]", check=True)
        assert {"featurize", "train", "calibrate", "evaluate"} <= stages_run(run.stdout), run.stdout
    finally:
        project.reset()


def test_plots_show_renders_every_declared_plot(project):
    result = project.dvc("plots", "show", "-o", "rendered", check=True)
    html = project.path("rendered", "index.html").read_text()
    assert "failed to load" not in result.stderr, result.stderr
    vega, images = declared_plots(project)
    for plot in ("plots/confusion/cat.csv", "plots/pr/dog.csv", "plots/thresholds/person.csv",
                 "plots/class_distribution.csv", "plots/confusion_matrices.png", "plots/thresholds.png",
                 "plots/label_counts.csv"):
        assert plot in vega + images
    for plot in vega + images:
        plot_id = plot.replace("/", "_").replace(".", "_")  # how DVC names each plot in the page
        assert plot_id in html, (plot, result.stdout)
    # no placeholder picture: tuning is off, so the grid has no rows and DVC no data to draw
    assert project.path("plots/tune.csv").read_text().strip() == "scaler,gamma,C,map_mean,map_std"
    assert re.search(r"var spec = \{\};\s*vegaEmbed\('#plots_tune_csv'", html)
    assert not any("tune" in image for image in images)


@pytest.mark.slow
def test_results_page_draws_every_plot_offline_in_a_browser(project, tmp_path):
    """dvc plots show's page, opened in headless Chromium with the network refused, draws
    every declared plot: one vega view per data file, every image loaded, no script error."""
    from tests.browser import page_report, require_chromium

    require_chromium()
    project.dvc("plots", "show", "-o", "page", check=True)
    html = project.path("page", "index.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc=", html), "the page loads a script from elsewhere"
    assert "cdn.jsdelivr" not in html and "vegaEmbed" in html
    report = page_report(project.path("page", "index.html"), tmp_path / "chromium-profile")
    assert report["vega_loaded"] and report["errors"] == [], report
    vega, images = declared_plots(project)
    drawn = {div for div, has_view in report["vega"].items() if has_view}
    expected = {plot.replace("/", "_").replace(".", "_") for plot in vega}  # DVC's div per plot
    assert drawn == expected, {"not drawn": sorted(expected - drawn), "unexpected": sorted(drawn - expected)}
    assert len(report["images"]) == len(images) and all(image["width"] > 0 for image in report["images"]), report
    # on screen the figures of all classes come first, then the interactive per-class plots
    tops = report["tops"]
    assert tops["plots_confusion_matrices_png"] < tops["plots_thresholds_png"] < min(tops[div] for div in expected)


def test_tuning_through_dvc_records_the_grid(project, tmp_path):
    try:
        project.dvc("exp", "run", "-S", "tune.enabled=true", "-S", "tune.C=[0.5,50]", "-S", "tune.gamma=[scale]",
                    check=True)
        tune = json.loads(project.path("reports/tune.json").read_text())
        assert tune["enabled"] is True and len(tune["grid"]) == 2
        assert tune["best"]["C"] in (0.5, 50) and tune["best"]["cv_map"] == max(r["map_mean"] for r in tune["grid"])
        grid = pd.read_csv(project.path("plots/tune.csv"))
        assert len(grid) == 2 and grid["map_mean"].max() == pytest.approx(tune["best"]["cv_map"], abs=1e-6)
        from tests.browser import chromium, page_report
        if chromium():
            project.dvc("plots", "show", "-o", "tuned-page", check=True)
            report = page_report(project.path("tuned-page", "index.html"), tmp_path / "profile")
            assert report["vega"]["plots_tune_csv"] and report["errors"] == [], report["errors"]
            assert "plots/tune.csv" in declared_plots(project)[0]  # a heatmap on the results page
    finally:
        project.reset()


def test_queued_sweep_reuses_the_cached_features(project):
    project.dvc("exp", "run", "--queue", "-S", "svm.C=0.5,5", check=True)
    status = project.run_queue(timeout=420, poll=3)
    assert "Failed" not in status, status
    queued_names = set(re.findall(r"^\w+\s+([\w-]+)\s+.*Success", status, flags=re.M))
    assert len(queued_names) == 2, status
    shown = json.loads(project.dvc("exp", "show", "--json", check=True).stdout)
    runs = [run for entry in shown for exp in (entry.get("experiments") or []) for run in exp.get("revs", [])
            if run["name"] in queued_names]
    assert {run["data"]["params"]["params.yaml"]["data"]["svm"]["C"] for run in runs} == {0.5, 5}, shown
    for run in runs:
        data = run["data"]
        assert "map" in data["metrics"]["metrics/metrics.json"]["data"]
        assert "f1_micro" in data["metrics"]["metrics/scores.json"]["data"]["calibrated"]
        assert set(data["metrics"]) == {"metrics/metrics.json", "metrics/scores.json", "metrics/suggest.json"}
        logs = project.dvc("queue", "logs", run["name"], check=True).stdout
        assert "Stage 'featurize' didn't change, skipping" in logs and "Running stage 'train'" in logs, logs
    try:  # keep the best: apply it to the workspace
        best = max(runs, key=lambda run: run["data"]["metrics"]["metrics/metrics.json"]["data"]["map"])
        project.dvc("exp", "apply", best["name"], check=True)
        assert project.params()["svm"]["C"] == best["data"]["params"]["params.yaml"]["data"]["svm"]["C"]
        applied = json.loads(project.path("metrics/metrics.json").read_text())
        assert applied == best["data"]["metrics"]["metrics/metrics.json"]["data"]
    finally:
        project.reset()


def test_predict_labels_match_the_evaluation_predictions(project, tmp_path):
    evaluated = pd.read_csv(project.path("predictions/eval.csv"), dtype={"image_id": str}).head(6)
    images = [str(project.path("data/raw/voc/JPEGImages", f"{image_id}.jpg")) for image_id in evaluated["image_id"]]
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("this is not a JPEG")
    result = project.run(["python", "-c", REPORT_TENSORFLOW, "stages.predict", *images, str(not_an_image),
                          "--out", str(tmp_path / "p.csv"), "--top-k", "2"])
    assert result.returncode == 1  # one bad file ...
    assert f"{not_an_image}: not a readable image" in result.stderr
    # every vector cached (and the bad file no image at all): no model to run, TensorFlow not started
    assert result.stdout.rstrip().endswith("tensorflow imported: False"), result.stdout
    predicted = pd.read_csv(tmp_path / "p.csv")  # ... and the others were labelled
    assert len(predicted) == 6
    columns = [c for c in evaluated.columns if c.startswith("y_")]
    assert (predicted[columns].to_numpy() == evaluated[columns].to_numpy()).all()
    probabilities = [c for c in evaluated.columns if c.startswith("p_")]
    assert abs(predicted[probabilities].to_numpy() - evaluated[probabilities].to_numpy()).max() < 1e-5
    assert "served from the feature cache" in result.stdout
    assert predicted[columns].sum(axis=1).min() >= 1  # calibrate.min_labels: 1

    # the rule's label counts hold in predict: exactly two labels each; where no class reaches
    # its threshold (1 here), the two highest-scored
    rule = json.loads(project.path("models/thresholds.json").read_text())
    for name, thresholds in (("calibrated", rule["thresholds"]), ("unreachable", dict.fromkeys(rule["thresholds"], 1.0))):
        two_labels = tmp_path / f"two_labels_{name}.json"
        two_labels.write_text(json.dumps({**rule, "thresholds": thresholds, "min_labels": 2, "max_labels": 2}))
        result = project.run(["python", "-m", "stages.predict", *images, "--thresholds", str(two_labels),
                              "--out", str(tmp_path / f"two_{name}.csv"), "--top-k", "2"], check=True)
        predicted = pd.read_csv(tmp_path / f"two_{name}.csv")
        expected = apply_rule(predicted[probabilities].to_numpy(), load_rule(two_labels, list(rule["thresholds"])))
        assert (predicted[columns].to_numpy() == expected).all() and (expected.sum(axis=1) == 2).all(), name
        if name == "unreachable":
            assert [set(labels.split()) for labels in predicted["labels"]] == \
                [set(top.split()) for top in predicted["top_2"]]


# --------------------------------------------------------------------------- issue 12: bad input

def test_a_typo_in_any_section_fails_the_experiment_at_once(project):
    """Item 1: a typo'd key changes no stage's params, yet check_params (which depends on the
    whole params.yaml) fails the run at once, naming the key; nothing is recorded or written."""
    kept = ("data/labels.csv", "data/subset/train.csv", "models/model.joblib", "metrics/metrics.json")
    before = {path: project.path(path).read_bytes() for path in kept}
    experiments = project.dvc("exp", "list", check=True).stdout
    typos = {"+data.clases=[dog,cat]": r"unknown key\(s\) data\.clases \(did you mean data\.classes\?\)",
             "+subset.eval_max_image=5": r"unknown key\(s\) subset\.eval_max_image \(did you mean "
                                         r"subset\.eval_max_images\?\)",
             "+svn.C=10": r"unknown section\(s\) svn \(did you mean svm\?\)",
             "+data.yeer=2012": r"unknown key\(s\) data\.yeer \(did you mean data\.year\?\)"}
    try:
        for override, message in typos.items():
            run = project.dvc("exp", "run", "-S", override)
            output = run.stdout + run.stderr
            assert run.returncode != 0, (override, output)
            assert re.search(r"error: params\.yaml: " + message, output), output
            assert stages_run(run.stdout) == {"check_params"}, output
            assert project.dvc("exp", "list", check=True).stdout == experiments  # no experiment recorded
            assert {path: project.path(path).read_bytes() for path in kept} == before
            project.reset()
    finally:
        project.reset()
        project.dvc("repro", "check_params", check=True)  # DVC removed its output before the failed run


def _model_md5(project) -> str:
    from fewlabel.io import file_md5
    return file_md5(project.path("models/model.joblib"))


def test_predict_says_in_one_line_why_a_file_is_not_an_image(project, tmp_path):
    """Item 8: one plain error line per bad file; no TensorFlow text, no libjpeg noise."""
    from PIL import Image

    evaluated = pd.read_csv(project.path("predictions/eval.csv"), dtype={"image_id": str}).head(2)
    images = [str(project.path("data/raw/voc/JPEGImages", f"{i}.jpg")) for i in evaluated["image_id"]]
    jpeg = project.path("data/raw/voc/JPEGImages", f"{evaluated['image_id'][0]}.jpg").read_bytes()
    bad = {tmp_path / "header_only.jpg": (jpeg[:200], "a damaged or truncated JPEG file that cannot be decoded"),
           tmp_path / "half.jpg": (jpeg[:len(jpeg) // 2], "a damaged or truncated JPEG file that cannot be decoded"),
           tmp_path / "notes.jpg": (b"this is not a JPEG", "not an image: its content is none of JPEG, PNG"),
           tmp_path / "empty.png": (b"", "an empty file (0 bytes)")}
    for path, (content, _) in bad.items():
        path.write_bytes(content)
    scan = tmp_path / "scan.tif"
    Image.new("RGB", (40, 30)).save(scan, format="TIFF")
    bad[scan] = (None, "a TIFF image, which is not supported: convert it to JPEG or PNG")
    thresholds = project.path("models/thresholds.json")  # calibrate records the model's md5

    result = project.run(["python", "-m", "stages.predict", *images, *map(str, bad), "--thresholds", str(thresholds),
                          "--out", str(tmp_path / "p.csv")])
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(bad), result.stderr  # one line per bad file, in the order given
    for line, (path, (_, reason)) in zip(errors, bad.items()):
        assert line.startswith(f"error: {path}: not a readable image ({reason}") and line.endswith("); skipped"), line
    for noise in ("{{function_node", "DecodeImage", "Improper call to JPEG library", "jpeg_mem", "Traceback"):
        assert noise not in result.stderr, result.stderr
    assert "model_md5" not in result.stderr  # the thresholds belong to this model
    assert len(pd.read_csv(tmp_path / "p.csv")) == 2  # the good images were labelled


def test_predict_refuses_a_truncated_model(project, tmp_path):
    """Item 8: a truncated model.joblib gives one clear line, not a pickle traceback."""
    model = tmp_path / "model.joblib"
    content = project.path("models/model.joblib").read_bytes()
    model.write_bytes(content[:len(content) // 2])
    image = str(min(project.path("data/raw/voc/JPEGImages").glob("*.jpg")))
    result = project.run(["python", "-m", "stages.predict", image, "--model", str(model),
                          "--out", str(tmp_path / "p.csv")])
    assert result.returncode == 1
    assert f"error: {model}: cannot be read as a model" in result.stderr
    assert "truncated or not written by the train stage: retrain it (dvc repro -f train)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "p.csv").exists()


def test_predict_refuses_thresholds_calibrated_for_another_model(project, tmp_path):
    """Item 8: thresholds.json records the md5 of the model it was calibrated for."""
    rule = json.loads(project.path("models/thresholds.json").read_text())
    other = tmp_path / "thresholds.json"
    other.write_text(json.dumps({**rule, "model_md5": "0" * 32}))
    image = str(min(project.path("data/raw/voc/JPEGImages").glob("*.jpg")))
    result = project.run(["python", "-m", "stages.predict", image, "--thresholds", str(other),
                          "--out", str(tmp_path / "p.csv")])
    assert result.returncode == 1
    assert f"error: {other}: was calibrated for another model (model_md5 {'0' * 32}), not for " \
           f"models/model.joblib (md5 {_model_md5(project)})" in result.stderr
    assert "pass the thresholds calibrated with this model (--thresholds), or rerun calibrate" in result.stderr
    assert not (tmp_path / "p.csv").exists()


def test_calibrate_records_the_model_it_calibrated(project):
    """Item 8: the contract predict checks: thresholds.json's model_md5 is models/model.joblib's md5."""
    assert json.loads(project.path("models/thresholds.json").read_text()).get("model_md5") == _model_md5(project)


def test_a_cvat_export_runs_through_featurize(dvc_project, tmp_path):
    """Item 6, end to end: PNG, .JPG and .jpeg files of a CVAT export reach the features."""
    from tests.exports import cvat_file_names, write_cvat_export
    from tests.vocgen import voc_spec

    classes = ("cat", "dog", "person", "car")
    spec = voc_spec(2007, n_train=8, n_eval=6, classes=classes)
    export = write_cvat_export(spec, tmp_path / "cvat-export")
    dvc_project.set_params({**FAST_PARAMS, "features.flip_tta": False, "data.source": str(export),
                            "data.classes": list(classes), "data.train_split": "train", "data.eval_split": "test",
                            "subset.n_images": 6, "subset.min_per_class": 1})
    result = dvc_project.dvc("repro", "featurize")
    assert result.returncode == 0, result.stdout + result.stderr
    names = cvat_file_names(spec)
    train = pd.read_csv(dvc_project.path("data/subset/train.csv"), dtype={"image_id": str})
    assert list(train["image_file"]) == [names[i] for i in train["image_id"]]
    assert {name.rsplit(".", 1)[1] for name in names.values()} >= {"png", "JPG", "jpeg"}
    with np.load(dvc_project.path("data/features/eval.npz")) as features:
        assert sorted(features["ids"]) == sorted(spec.splits["test"])
        assert np.isfinite(features["features"]).all() and features["features"].shape[0] == 6


# --------------------------------------------------------------------------- the fewlabel package

API_SCRIPT = """
import sys, fewlabel
classifier = fewlabel.load(sys.argv[1])
paths = sys.argv[3:]
classifier.predict(paths, top_k=2).to_csv(sys.argv[2] + ".paths.csv", index=False)
features = classifier.features(paths)
classifier.predict(features, top_k=2).to_csv(sys.argv[2] + ".features.csv", index=False)
"""


def test_python_api_labels_as_the_predict_command(project, tmp_path):
    """fewlabel.load(run).predict, on paths and on .features(), equals python -m stages.predict;
    loaded from another working directory (a notebook's), with the run's folder given."""
    evaluated = pd.read_csv(project.path("predictions/eval.csv"), dtype={"image_id": str}).head(5)
    images = [str(project.path("data/raw/voc/JPEGImages", f"{image_id}.jpg")) for image_id in evaluated["image_id"]]
    project.run(["python", "-m", "stages.predict", *images, "--out", str(tmp_path / "cli.csv"), "--top-k", "2",
                 "--quiet"], check=True)
    notebook = tmp_path / "notebook"
    notebook.mkdir()
    result = subprocess.run([sys.executable, "-c", API_SCRIPT, str(project.root), str(tmp_path / "api"), *images],
                            cwd=notebook, env={**project.environment(), "PYTHONPATH": str(project.root)},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    command = pd.read_csv(tmp_path / "cli.csv")
    from_paths = pd.read_csv(tmp_path / "api.paths.csv")
    from_features = pd.read_csv(tmp_path / "api.features.csv")
    assert list(from_paths.columns) == list(command.columns)
    assert from_paths["path"].tolist() == images
    labels = [c for c in command.columns if c.startswith("y_")] + ["labels", "top_2"]
    probabilities = [c for c in command.columns if c.startswith("p_")]
    for table in (from_paths, from_features):
        assert table[labels].equals(command[labels])
        assert np.abs(table[probabilities].to_numpy() - command[probabilities].to_numpy()).max() < 1e-6
    # and the same as the evaluate stage's predictions of those images
    assert (from_paths[[c for c in labels if c.startswith("y_")]].to_numpy()
            == evaluated[[c for c in labels if c.startswith("y_")]].to_numpy()).all()


def test_fewlabel_console_script_is_the_predict_command(project, tmp_path):
    evaluated = pd.read_csv(project.path("predictions/eval.csv"), dtype={"image_id": str})["image_id"][0]
    image = str(project.path("data/raw/voc/JPEGImages", f"{evaluated}.jpg"))  # cached: no model to run
    help_text = project.run(["fewlabel", "predict", "--help"], check=True).stdout
    assert "--out" in help_text and "--top-k" in help_text and "--engine" in help_text
    script = project.run(["fewlabel", "predict", image, "--out", str(tmp_path / "a.csv"), "--quiet"], check=True)
    module = project.run(["python", "-m", "stages.predict", image, "--out", str(tmp_path / "b.csv"), "--quiet"],
                         check=True)
    assert script.stdout.startswith(f"wrote {tmp_path / 'a.csv'} (1 images") and module.stdout.startswith("wrote")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    # the same exit codes: a missing input is named and exits 1; a bad option exits 2
    missing = project.run(["fewlabel", "predict", str(tmp_path / "nothing.jpg")])
    assert missing.returncode == 1 and "nothing.jpg: no such file or folder" in missing.stderr
    assert project.run(["fewlabel", "predict", image, "--top-k", "x"]).returncode == 2
    assert project.run(["fewlabel"]).returncode == 2


# --------------------------------------------------------------------------- issue 21: the first hour

SHORT_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")


def _numeric_leaves(value, where: str):
    """Yield (where, problem) for every leaf of a metrics JSON that is not a number under a short key."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not SHORT_KEY.fullmatch(str(key)):
                yield f"{where}.{key}", "not a short key (a path, a class name with spaces, ...)"
            yield from _numeric_leaves(item, f"{where}.{key}")
    elif isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
        yield where, f"{value!r} is not a number"


def test_declared_metrics_files_hold_numbers_only(project):
    """dvc metrics show / exp show stay narrow: every metrics file holds numbers under short
    keys; run details (views, runtimes, kernel reasons, grids) live in reports/, not metrics."""
    import yaml

    stages = yaml.safe_load(project.path("dvc.yaml").read_text())["stages"]
    declared = [next(iter(m)) if isinstance(m, dict) else m for stage in stages.values()
                for m in stage.get("metrics", [])]
    assert declared == ["metrics/metrics.json", "metrics/scores.json", "metrics/suggest.json"], declared
    for path in declared:
        problems = list(_numeric_leaves(json.loads(project.path(path).read_text()), path))
        assert problems == [], problems
    metrics = json.loads(project.path("metrics/metrics.json").read_text())
    assert set(metrics) == {"map", "f1", "dice", "jaccard", "p_at_1"}  # what a user compares first ...
    shown = project.dvc("metrics", "show", "metrics/metrics.json", check=True).stdout
    assert shown.splitlines()[0].split() == ["Path", "dice", "f1", "jaccard", "map", "p_at_1"], shown
    columns = project.dvc("exp", "show", "--csv", "--no-pager", check=True).stdout.splitlines()[0].split(",")
    metric_columns = [c for c in columns if c.startswith("metrics/") or c in ("f1", "dice", "jaccard", "p_at_1")]
    assert metric_columns[:5] == ["metrics/metrics.json:map", "f1", "dice", "jaccard", "p_at_1"], columns  # ... leads
    for report in ("reports/featurize.json", "reports/tune.json"):  # the details are kept, as reports
        assert json.loads(project.path(report).read_text()), report
    assert "views" in json.loads(project.path("reports/featurize.json").read_text())


TF_STARTUP = re.compile(r"failed call to cuInit|oneDNN custom operations|absl::InitializeLog|cuda drivers|"
                        r"^[IWEF]\d{4} \d\d:\d\d:\d\d", flags=re.M)


def test_a_default_cpu_run_prints_no_tensorflow_startup_lines(project, tmp_path):
    """dvc repro of every stage, then predict: none of TensorFlow's C++ start-up lines."""
    assert stages_run(project.first_repro_output) >= {"featurize", "train", "evaluate"}
    output = project.first_repro_output + project.first_repro_stderr
    assert not TF_STARTUP.search(output), TF_STARTUP.search(output).group(0)
    # a photo no vector is cached for (a cached one would not start TensorFlow at all)
    image = tmp_path / "mirrored.jpg"
    Image.open(min(project.path("data/raw/voc/JPEGImages").glob("*.jpg"))).transpose(Image.FLIP_LEFT_RIGHT).save(image)
    predict = project.run(["python", "-m", "stages.predict", str(image), "--out", str(tmp_path / "p.csv")], check=True)
    assert "0 served from the feature cache" in predict.stdout, predict.stdout
    assert not TF_STARTUP.search(predict.stdout + predict.stderr), predict.stderr
    # FEWLABEL_TF_LOGS=1 brings them back (so the test above can see them when they print)
    loud = project.run(["python", "-c", "import fewlabel, tensorflow as tf; tf.config.list_physical_devices('GPU')"],
                       env={"FEWLABEL_TF_LOGS": "1"}, check=True)
    assert TF_STARTUP.search(loud.stderr), loud.stderr


def readme_commands(section: str, blocks: int | None = None) -> list[str]:
    """The command lines of the fenced bash blocks of a README section (the first ``blocks``)."""
    readme = (REPO_ROOT / "README.md").read_text()
    body = readme.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"```bash\n(.*?)```", body, flags=re.S)[:blocks]
    return [line.split("  #")[0].strip() for block in found for line in block.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_readme_quickstart_and_everyday_use_work_as_written(project, tmp_path):
    """A new user's first hour, in a fresh clone: Quickstart's commands, then Everyday use's
    first block, in order, exactly as written (on generated data with fast params). Three are
    stood in for: `make pipeline` is `dvc repro` once the venv exists (this one), `make test` is
    this suite, and `source .venv/bin/activate` is that venv on PATH."""
    commands = readme_commands("Quickstart") + readme_commands("Everyday use", blocks=1)
    assert commands[:4] == ["make pipeline", "make test", "source .venv/bin/activate",
                            'git add dvc.lock metrics plots reports params.yaml && git commit -m "first run"']
    assert "dvc exp run -S svm.C=10" in commands and "dvc exp show --only-changed" in commands
    clone = make_dvc_project(tmp_path / "clone", extra=["bench", "tests/__init__.py"])
    clone.env["FEWLABEL_CACHE_DIR"] = project.env["FEWLABEL_CACHE_DIR"]  # the features, from the user cache
    clone.set_params({**FAST_PARAMS, "data.source": project.params()["data"]["source"]})
    stand_in = {"make pipeline": "dvc repro", "make test": "true",  # this suite is `make test`
                "source .venv/bin/activate": "true"}
    outputs = {}
    for command in commands:
        result = clone.run(["bash", "-c", stand_in.get(command, command)])
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        outputs[command] = result.stdout
    assert "metrics/metrics.json" in outputs["dvc metrics diff"] and "map" in outputs["dvc metrics diff"]
    assert clone.path("dvc_plots", "index.html").is_file()
    assert "svm.C" in outputs["dvc exp show --only-changed"]
    assert "first run" in clone.git("log", "--format=%s", check=True).stdout
