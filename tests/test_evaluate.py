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
from sklearn.metrics import average_precision_score, f1_score, multilabel_confusion_matrix

from bench.synthetic import write_synthetic_inputs
from stages.evaluate import confusion_records, evaluate
from stages.params import EvaluateParams, VOC_CLASSES

REPO = Path(__file__).resolve().parents[1]

TRAIN = ["stages.train", "--features", "data/features/train.npz", "--meta", "data/features/meta.json",
         "--labels", "data/subset/train.csv", "--model-out", "models/model.joblib",
         "--oof-out", "models/oof_probabilities.csv", "--tune-out", "metrics/tune.json",
         "--tune-heatmap", "plots/tune_heatmap.png"]
CALIBRATE = ["stages.calibrate", "--oof", "models/oof_probabilities.csv", "--out", "models/thresholds.json",
             "--plots", "plots/thresholds", "--figure", "plots/thresholds.png"]
EVALUATE = ["stages.evaluate", "--model", "models/model.joblib", "--thresholds", "models/thresholds.json",
            "--features", "data/features/eval.npz", "--meta", "data/features/meta.json",
            "--labels", "data/subset/eval.csv", "--metrics-out", "metrics/metrics.json",
            "--per-class-out", "metrics/per_class.csv", "--predictions-out", "predictions/eval.csv",
            "--confusion-dir", "plots/confusion", "--pr-dir", "plots/pr",
            "--confusion-png", "plots/confusion_matrices.png"]


def run_stage(workdir: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", *args], cwd=workdir, env=env, capture_output=True, text=True)


@pytest.fixture()
def synthetic_workdir(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["svm"].update(gamma="scale", n_jobs=1)
    params["calibrate"]["folds"] = 3
    params["evaluate"]["bootstrap"] = 50
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_synthetic_inputs(tmp_path, n_train=150, n_eval=200, dim=32)
    return tmp_path


def test_metrics_match_scikit_learn_without_difficult_entries():
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((120, 4)) < 0.3, 1, -1)
    probabilities = rng.random((120, 4))
    thresholds = np.array([0.3, 0.5, 0.6, 0.7])
    metrics, per_class = evaluate(labels, probabilities, thresholds, list("abcd"), EvaluateParams(bootstrap=20))
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


def test_difficult_entries_are_left_out_of_confusion_records():
    labels = np.array([[1, 0], [-1, 1], [0, -1]])
    predicted = np.array([[1, 1], [1, 0], [0, 0]])
    records = confusion_records(labels, predicted, ["a", "b"])
    assert records["a"].to_dict("records") == [{"actual": "present", "predicted": "present"},
                                               {"actual": "absent", "predicted": "present"}]
    assert len(records["b"]) == 2


def test_stages_write_every_declared_output(synthetic_workdir):
    for args in (TRAIN, CALIBRATE, EVALUATE):
        completed = run_stage(synthetic_workdir, args)
        assert completed.returncode == 0, completed.stderr
    metrics = json.loads((synthetic_workdir / "metrics/metrics.json").read_text())
    assert metrics["n_train"] == 150 and metrics["n_eval"] == 200
    assert set(metrics["calibrated"]) == {"f1_micro", "f1_macro", "dice", "jaccard", "precision_at_1",
                                          "precision_at_3", "hamming_loss", "subset_accuracy"}
    predictions = pd.read_csv(synthetic_workdir / "predictions/eval.csv", dtype={"image_id": str})
    assert list(predictions.columns) == ["image_id"] + [f"p_{c}" for c in VOC_CLASSES] + [f"y_{c}" for c in VOC_CLASSES]
    thresholds = json.loads((synthetic_workdir / "models/thresholds.json").read_text())["thresholds"]
    for name in ("cat", "person"):
        assert list(predictions[f"y_{name}"]) == list((predictions[f"p_{name}"] >= thresholds[name]).astype(int))
    assert len(list((synthetic_workdir / "plots/confusion").glob("*.csv"))) == 20
    assert len(list((synthetic_workdir / "plots/pr").glob("*.csv"))) == 20
    assert len(list((synthetic_workdir / "plots/thresholds").glob("*.csv"))) == 20
    assert (synthetic_workdir / "plots/confusion_matrices.png").stat().st_size > 10_000


@pytest.mark.parametrize("tuning", [False, True])
def test_evaluation_labels_never_reach_the_model_or_the_thresholds(synthetic_workdir, tuning):
    """Shuffle the eval labels: model, grid and thresholds must stay byte-identical."""
    if tuning:
        params = yaml.safe_load((synthetic_workdir / "params.yaml").read_text())
        params["tune"].update(enabled=True, C=[0.5, 5.0], gamma=["scale"], folds=2)
        (synthetic_workdir / "params.yaml").write_text(yaml.safe_dump(params))
    outputs = ("models/model.joblib", "models/thresholds.json", "models/oof_probabilities.csv",
               "metrics/tune.json")
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
