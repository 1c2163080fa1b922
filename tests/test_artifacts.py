"""fewlabel.artifacts: the files passed between stages, written and read back by one owner."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fewlabel.artifacts import (oof_table, probability_table, read_features, read_oof, read_pool, write_features,
                                write_pool)
from fewlabel.errors import PipelineError

CLASSES = ("cat", "dog")


def test_probability_table_layout_one_prefix_one_meaning():
    probabilities = np.array([[0.9, 0.2], [0.1, 0.7]])
    table = probability_table({"image_id": ["a", "b"]}, CLASSES, probabilities, decisions=np.array([[1, 0], [0, 1]]),
                              targets=np.array([[1, 1], [0, 1]]))
    assert list(table.columns) == ["image_id", "true_cat", "true_dog", "p_cat", "p_dog", "y_cat", "y_dog"]
    assert table.loc[1, "p_dog"] == 0.7 and table.loc[0, "true_dog"] == 1 and table.loc[0, "y_dog"] == 0


def test_oof_round_trip_and_checks(tmp_path):
    path = tmp_path / "oof.csv"
    targets, probabilities = np.array([[1, 0], [0, 1], [1, 1]]), np.array([[0.8, 0.1], [0.3, 0.6], [0.5, 0.5]])
    oof_table(np.array(["a", "b", "c"]), np.array([0, 1, 0]), targets, probabilities, CLASSES).to_csv(path, index=False)
    oof = read_oof(path, CLASSES, expected_ids=["a", "b", "c"])
    np.testing.assert_array_equal(oof.targets, targets)
    np.testing.assert_allclose(oof.probabilities, probabilities)
    np.testing.assert_array_equal(oof.folds, [0, 1, 0])
    with pytest.raises(PipelineError, match="differ from labels.csv; rerun train"):
        read_oof(path, CLASSES, expected_ids=["a", "c", "b"], labels_path="labels.csv")
    frame = pd.read_csv(path)
    frame.loc[1, "p_cat"] = np.nan
    frame.to_csv(path, index=False)
    with pytest.raises(PipelineError, match="non-finite"):
        read_oof(path, CLASSES)
    frame.drop(columns=["true_dog"]).to_csv(path, index=False)
    with pytest.raises(PipelineError, match="true_dog"):
        read_oof(path, CLASSES)


def test_features_and_pool_round_trip(tmp_path):
    features = np.arange(6, dtype=np.float64).reshape(3, 2)
    write_features(tmp_path / "train.npz", ["a", "b", "c"], features)
    ids, read_back = read_features(tmp_path / "train.npz", expected_ids=np.array(["a", "b", "c"]))
    assert list(ids) == ["a", "b", "c"] and read_back.dtype == np.float32
    np.testing.assert_array_equal(read_back, features)
    with pytest.raises(PipelineError, match="do not match the subset CSV"):
        read_features(tmp_path / "train.npz", expected_ids=np.array(["b", "a", "c"]))

    write_pool(tmp_path / "pool.npz", ["x"], ["/photos/x.jpg"], np.ones((1, 2)))
    ids, paths, pool = read_pool(tmp_path / "pool.npz", dims=2)
    assert list(ids) == ["x"] and list(paths) == ["/photos/x.jpg"] and pool.shape == (1, 2)
    with pytest.raises(PipelineError, match="3 dimensions|2 dimensions, the training features 3"):
        read_pool(tmp_path / "pool.npz", dims=3)
    write_pool(tmp_path / "pool.npz", ["x"], ["/photos/x.jpg"], np.full((1, 2), np.nan))
    with pytest.raises(PipelineError, match="NaN or inf"):
        read_pool(tmp_path / "pool.npz")
    write_features(tmp_path / "no_paths.npz", ["x"], np.ones((1, 2)))
    with pytest.raises(PipelineError, match="lacks paths; rerun the featurize_pool stage"):
        read_pool(tmp_path / "no_paths.npz")
    with pytest.raises(PipelineError, match="not found; run the featurize stage"):
        read_features(tmp_path / "missing.npz")
