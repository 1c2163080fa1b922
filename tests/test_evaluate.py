"""evaluate, and train -> calibrate -> evaluate as commands on synthetic features."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import (accuracy_score, average_precision_score, f1_score, hamming_loss, jaccard_score,
                             multilabel_confusion_matrix)

from fewlabel.model.rules import DecisionRule, apply_rule, load_rule
from fewlabel.evaluation import confusion_records, evaluate, label_count_table, rule_metrics
from fewlabel.params import EvaluateParams, VOC_CLASSES
from fewlabel.predict import label_images
from tests.conftest import REPORT_TENSORFLOW
from tests.synthetic import write_synthetic_inputs

REPO = Path(__file__).resolve().parents[1]

TRAIN = ["stages.train", "--features", "data/features/train.npz", "--meta", "data/features/meta.json",
         "--labels", "data/subset/train.csv", "--model-out", "models/model.joblib",
         "--oof-out", "models/oof_probabilities.csv", "--tune-out", "reports/tune.json",
         "--tune-grid", "plots/tune.csv"]
CALIBRATE = ["stages.calibrate", "--oof", "models/oof_probabilities.csv", "--model", "models/model.joblib",
             "--out", "models/thresholds.json",
             "--plots", "plots/thresholds", "--figure", "plots/thresholds.png"]
EVALUATE = ["stages.evaluate", "--model", "models/model.joblib", "--thresholds", "models/thresholds.json",
            "--features", "data/features/eval.npz", "--meta", "data/features/meta.json",
            "--labels", "data/subset/eval.csv", "--metrics-out", "metrics/metrics.json",
            "--scores-out", "metrics/scores.json",
            "--per-class-out", "metrics/per_class.csv", "--predictions-out", "predictions/eval.csv",
            "--confusion-dir", "plots/confusion", "--pr-dir", "plots/pr",
            "--confusion-png", "plots/confusion_matrices.png", "--label-counts-out", "plots/label_counts.csv",
            "--label-counts-png", "plots/label_counts.png"]
RULES = ("calibrated", "default_threshold", "default_threshold_top1")
SCORE_KEYS = {"f1_micro", "f1_macro", "dice", "jaccard", "precision_at_1", "precision_at_3", "hamming_loss",
              "subset_accuracy", "empty_rate"}


def run_stage(workdir: Path, args: list[str], report_tensorflow: bool = False) -> subprocess.CompletedProcess:
    """``python -m <args>`` in ``workdir``; with ``report_tensorflow``, its last line of output
    says whether the stage imported TensorFlow."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    python = [sys.executable, "-c", REPORT_TENSORFLOW] if report_tensorflow else [sys.executable, "-m"]
    return subprocess.run([*python, *args], cwd=workdir, env=env, capture_output=True, text=True)


@pytest.fixture()
def synthetic_workdir(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["svm"].update(gamma="scale", n_jobs=1)
    params["train"]["oof_folds"] = 3
    params["evaluate"]["bootstrap"] = 50
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_synthetic_inputs(tmp_path, n_train=150, n_eval=200, dim=32)
    return tmp_path


def test_metrics_match_scikit_learn_without_difficult_entries():
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((120, 4)) < 0.3, 1, -1)
    probabilities = rng.random((120, 4))
    thresholds = np.array([0.3, 0.5, 0.6, 0.7])
    metrics, per_class = evaluate(labels, probabilities, DecisionRule(tuple(thresholds)), list("abcd"),
                                  EvaluateParams(bootstrap=20))
    truth, predicted = labels == 1, probabilities >= thresholds
    assert metrics["map"] == pytest.approx(np.mean([average_precision_score(truth[:, c], probabilities[:, c])
                                                    for c in range(4)]), abs=1e-6)
    assert metrics["calibrated"]["f1_micro"] == pytest.approx(f1_score(truth, predicted, average="micro"), abs=1e-6)
    assert metrics["default_threshold"]["f1_macro"] == pytest.approx(
        f1_score(truth, probabilities >= 0.5, average="macro"), abs=1e-6)
    confusion = multilabel_confusion_matrix(truth, predicted)
    assert list(per_class["tp"]) == list(confusion[:, 1, 1]) and list(per_class["fp"]) == list(confusion[:, 0, 1])
    assert list(per_class["f1"]) == pytest.approx(f1_score(truth, predicted, average=None))
    low, high = metrics["map_ci95"]["low"], metrics["map_ci95"]["high"]
    assert low <= metrics["map"] <= high


def test_the_three_rules_match_scikit_learn():
    rng = np.random.default_rng(1)
    labels = np.where(rng.random((150, 5)) < 0.25, 1, -1)
    labels[labels.sum(axis=1) == -5, 0] = 1          # every image has a class, as in VOC
    probabilities = np.clip(rng.random((150, 5)) * 0.7 + 0.3 * (labels == 1), 0, 1)
    thresholds = np.array([0.3, 0.4, 0.5, 0.6, 0.45])
    rule = DecisionRule(tuple(thresholds), min_labels=1, max_labels=2)
    truth = labels == 1
    over_half = probabilities >= 0.5
    top1 = over_half.copy()
    none = ~top1.any(axis=1)
    top1[none, probabilities[none].argmax(axis=1)] = True      # 0.5, plus the top class when none passes
    calibrated = probabilities >= thresholds
    for row in np.flatnonzero(calibrated.sum(axis=1) > 2):     # at most the two top-scored passing classes
        passing = np.flatnonzero(calibrated[row])
        calibrated[row, passing[np.argsort(-probabilities[row, passing])[2:]]] = False
    for row in np.flatnonzero(~calibrated.any(axis=1)):        # at least one label
        calibrated[row, probabilities[row].argmax()] = True
    assert none.any() and (probabilities >= thresholds).sum(axis=1).max() > 2
    metrics = rule_metrics(labels, probabilities, rule)
    assert list(metrics) == list(RULES)
    for name, predicted in zip(RULES, (calibrated, over_half, top1)):
        scores = metrics[name]
        assert set(scores) == SCORE_KEYS
        assert scores["f1_micro"] == pytest.approx(f1_score(truth, predicted, average="micro"))
        assert scores["f1_macro"] == pytest.approx(f1_score(truth, predicted, average="macro"))
        assert scores["dice"] == pytest.approx(f1_score(truth, predicted, average="samples", zero_division=1.0))
        assert scores["jaccard"] == pytest.approx(jaccard_score(truth, predicted, average="samples",
                                                                zero_division=1.0))
        assert scores["hamming_loss"] == pytest.approx(hamming_loss(truth, predicted))
        assert scores["subset_accuracy"] == pytest.approx(accuracy_score(truth, predicted))
        assert scores["empty_rate"] == pytest.approx(np.mean(~predicted.any(axis=1)))
    assert metrics["default_threshold"]["empty_rate"] > 0
    assert metrics["default_threshold_top1"]["empty_rate"] == metrics["calibrated"]["empty_rate"] == 0


def test_label_count_table_hand_example():
    labels = np.array([[1, -1, 1], [1, 0, -1], [-1, -1, 1], [1, 1, 1]])
    predicted = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 1, 0]])
    table = label_count_table(labels, predicted)
    # actual: 2, 1 (the difficult-only cell is not a label), 1, 3; predicted: 1, 2, 0, 2
    assert table.to_dict("list") == {"labels_per_image": [0, 1, 2, 3], "actual": [0, 2, 1, 1],
                                     "predicted": [1, 1, 2, 0]}


def test_predict_labels_images_with_the_rule():
    probabilities = np.array([[0.2, 0.1, 0.3], [0.9, 0.8, 0.7], [0.6, 0.1, 0.55]])
    rule = DecisionRule.uniform(3, 0.5, min_labels=1, max_labels=2)
    table = label_images(probabilities, rule, ["cat", "dog", "sofa"], top_k=2)
    assert list(table["labels"]) == ["sofa", "cat dog", "cat sofa"]
    assert (table[["y_cat", "y_dog", "y_sofa"]].to_numpy() == apply_rule(probabilities, rule)).all()
    assert list(table["top_2"]) == ["sofa cat", "cat dog", "cat sofa"]


def test_difficult_entries_are_left_out_of_confusion_records():
    labels = np.array([[1, 0], [-1, 1], [0, -1]])
    predicted = np.array([[1, 1], [1, 0], [0, 0]])
    records = confusion_records(labels, predicted, ["a", "b"])
    assert records["a"].to_dict("records") == [{"actual": "present", "predicted": "present"},
                                               {"actual": "absent", "predicted": "present"}]
    assert len(records["b"]) == 2


@pytest.mark.slow
def test_stages_write_every_declared_output(synthetic_workdir):
    for args in (TRAIN, CALIBRATE):
        completed = run_stage(synthetic_workdir, args)
        assert completed.returncode == 0, completed.stderr
    # as dvc.yaml runs it, with evaluate.heatmap_photos 0: an empty heatmaps figure, and no
    # TensorFlow start-up (seconds) when no photo is mapped
    params = yaml.safe_load((synthetic_workdir / "params.yaml").read_text())
    params["evaluate"]["heatmap_photos"] = 0
    (synthetic_workdir / "params.yaml").write_text(yaml.safe_dump(params))
    evaluate_with_heatmaps = [*EVALUATE, "--images", "images", "--heatmaps-png", "plots/heatmaps.png"]
    completed = run_stage(synthetic_workdir, evaluate_with_heatmaps, report_tensorflow=True)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[-1] == "tensorflow imported: False"
    assert (synthetic_workdir / "plots/heatmaps.png").stat().st_size > 1_000
    metrics = json.loads((synthetic_workdir / "metrics/scores.json").read_text())
    assert metrics["n_train"] == 150 and metrics["n_eval"] == 200
    for name in RULES:
        assert set(metrics[name]) == SCORE_KEYS, name
    headline = json.loads((synthetic_workdir / "metrics/metrics.json").read_text())
    assert headline == {"map": metrics["map"], "f1": metrics["calibrated"]["f1_micro"],
                        "dice": metrics["calibrated"]["dice"], "jaccard": metrics["calibrated"]["jaccard"],
                        "p_at_1": metrics["calibrated"]["precision_at_1"]}
    predictions = pd.read_csv(synthetic_workdir / "predictions/eval.csv", dtype={"image_id": str})
    assert list(predictions.columns) == ["image_id"] + [f"p_{c}" for c in VOC_CLASSES] + [f"y_{c}" for c in VOC_CLASSES]
    record = json.loads((synthetic_workdir / "models/thresholds.json").read_text())
    assert (record["min_labels"], record["max_labels"]) == (1, None)   # the defaults
    rule = load_rule(synthetic_workdir / "models/thresholds.json", VOC_CLASSES)
    predicted = predictions[[f"y_{c}" for c in VOC_CLASSES]].to_numpy()
    np.testing.assert_array_equal(predicted, apply_rule(predictions[[f"p_{c}" for c in VOC_CLASSES]], rule))
    assert predicted.sum(axis=1).min() >= 1 and metrics["calibrated"]["empty_rate"] == 0
    counts = pd.read_csv(synthetic_workdir / "plots/label_counts.csv")
    assert counts["actual"].sum() == counts["predicted"].sum() == 200
    assert list(counts["predicted"]) == list(np.bincount(predicted.sum(axis=1), minlength=len(counts)))
    assert (synthetic_workdir / "plots/label_counts.png").stat().st_size > 5_000
    assert len(list((synthetic_workdir / "plots/confusion").glob("*.csv"))) == 20
    assert len(list((synthetic_workdir / "plots/pr").glob("*.csv"))) == 20
    assert len(list((synthetic_workdir / "plots/thresholds").glob("*.csv"))) == 20
    assert (synthetic_workdir / "plots/confusion_matrices.png").stat().st_size > 10_000

    # the same method in memory (fewlabel.fit, what bench/quality.py runs) scores exactly as the stages
    from fewlabel.artifacts import read_features, read_label_table
    from fewlabel.fit import fit
    from fewlabel.params import load_params
    params = load_params(synthetic_workdir / "params.yaml")
    train_ids, train_labels = read_label_table(synthetic_workdir / "data/subset/train.csv", VOC_CLASSES)
    eval_ids, eval_labels = read_label_table(synthetic_workdir / "data/subset/eval.csv", VOC_CLASSES)
    fitted = fit(read_features(synthetic_workdir / "data/features/train.npz", train_ids)[1], train_labels, params)
    in_memory, _ = fitted.evaluate(read_features(synthetic_workdir / "data/features/eval.npz", eval_ids)[1],
                                   eval_labels, params)
    assert fitted.calibration.strategy == record["strategy"]
    for key in ("map", "map_voc07"):
        assert in_memory[key] == pytest.approx(metrics[key], abs=1e-6), key
    for key in ("f1_micro", "jaccard", "dice"):
        assert in_memory["calibrated"][key] == pytest.approx(metrics["calibrated"][key], abs=1e-6), key


@pytest.mark.slow
def test_past_max_exact_kernel_train_switches_to_nystroem_and_says_so(synthetic_workdir):
    """150 training images > svm.max_exact_kernel=100: the approximate kernel; calibrate and
    evaluate run on its probabilities unchanged."""
    params = yaml.safe_load((synthetic_workdir / "params.yaml").read_text())
    params["svm"].update(max_exact_kernel=100, n_components=64)
    (synthetic_workdir / "params.yaml").write_text(yaml.safe_dump(params))
    logs = []
    for args in (TRAIN, CALIBRATE, EVALUATE):
        completed = run_stage(synthetic_workdir, args)
        assert completed.returncode == 0, completed.stderr
        logs.append(completed.stdout)
    assert "approximate: Nystroem with 64 landmarks" in logs[0]
    assert "150 training images > svm.max_exact_kernel (100)" in logs[0]
    kernel = json.loads((synthetic_workdir / "reports/tune.json").read_text())["kernel"]
    assert (kernel["method"], kernel["n_components"], kernel["n_train"]) == ("nystroem", 64, 150)
    metrics = json.loads((synthetic_workdir / "metrics/scores.json").read_text())
    assert metrics["n_eval"] == 200 and 0 < metrics["calibrated"]["f1_micro"] <= 1


@pytest.mark.parametrize("settings", ["defaults", "tuning", "per_class_dice_capped"])
@pytest.mark.slow
def test_evaluation_labels_never_reach_the_model_or_the_thresholds(synthetic_workdir, settings):
    """Shuffle the eval labels: model, grid and decision rule must stay byte-identical."""
    params = yaml.safe_load((synthetic_workdir / "params.yaml").read_text())
    if settings == "tuning":
        params["tune"].update(enabled=True, C=[0.5, 5.0], gamma=["scale"], folds=2)
    if settings == "per_class_dice_capped":
        params["calibrate"].update(strategy="per_class", metric="dice", min_labels=1, max_labels=3)
    (synthetic_workdir / "params.yaml").write_text(yaml.safe_dump(params))
    outputs = ("models/model.joblib", "models/thresholds.json", "models/oof_probabilities.csv",
               "reports/tune.json")
    for args in (TRAIN, CALIBRATE):
        assert run_stage(synthetic_workdir, args).returncode == 0
    before = {name: (synthetic_workdir / name).read_bytes() for name in outputs}
    eval_csv = synthetic_workdir / "data/subset/eval.csv"
    table = pd.read_csv(eval_csv, dtype={"image_id": str})
    shuffled = table[list(VOC_CLASSES)].sample(frac=1.0, random_state=1).to_numpy()
    table[list(VOC_CLASSES)] = shuffled
    table.to_csv(eval_csv, index=False)
    shutil.rmtree(synthetic_workdir / "models")
    for args in (TRAIN, CALIBRATE):
        assert run_stage(synthetic_workdir, args).returncode == 0
    for name in outputs:
        assert (synthetic_workdir / name).read_bytes() == before[name], name


@pytest.mark.slow
def test_a_model_for_other_features_is_refused(synthetic_workdir):
    for args in (TRAIN, CALIBRATE):
        assert run_stage(synthetic_workdir, args).returncode == 0
    meta_path = synthetic_workdir / "data/features/meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "backbones": ["EfficientNetB0"]}))
    completed = run_stage(synthetic_workdir, EVALUATE)
    assert completed.returncode == 1
    assert "models/model.joblib: was trained on features" in completed.stderr
    assert not (synthetic_workdir / "metrics/metrics.json").exists()
