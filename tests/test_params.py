"""params.yaml validation: defaults, and errors that name the key."""
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from fewlabel.errors import PipelineError
from fewlabel.params import VOC_CLASSES, Params, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


def test_repository_params_are_the_methods_defaults():
    params = load_params(REPO / "params.yaml")
    assert params.data.classes == VOC_CLASSES and params.data.year == 2007
    assert params.subset.n_images == 750 and params.subset.min_per_class == 10
    assert params.features.backbones == ("EfficientNetB6",) and params.features.weights == "imagenet"
    assert params.features.runtime == "auto"  # OpenVINO bf16 where it pays (README, "Measured speed"), else Keras
    assert params.features.native_sizes is None
    assert params.features.select_max_size == 640  # B6's 800 px candidate is not tried on a CPU
    # chosen by measurement on real photos (README, "Quality on real photos")
    assert (params.features.image_size, params.features.select_scales, params.features.flip_tta) == \
        ("auto", ((1.0,), (1.5,)), True)
    assert (params.svm.kernel, params.svm.C, params.svm.gamma, params.svm.scaler) == ("rbf", 1.0, "median", "sqrt")
    assert (params.svm.approximation, params.svm.max_exact_kernel, params.svm.n_components) == ("auto", 5000, 1500)
    assert (params.train.oof_folds, params.calibrate.metric, params.calibrate.strategy,
            params.calibrate.min_labels) == (5, "jaccard", "auto", 1)
    assert params.tune.gamma == ("scale", 0.0005, 0.002, 0.008)
    assert params.evaluate.top_k == (1, 3)


def test_the_schemas_defaults_are_params_yaml_key_by_key():
    """A key left out of a params file, ``parse_params({})`` and the section objects
    (``FeaturesParams()``, ``SvmParams()``) all mean what params.yaml says."""
    stated, default = load_params(REPO / "params.yaml"), parse_params({})
    differ = [f"{section.name}.{key.name}: params.yaml {getattr(getattr(stated, section.name), key.name)!r}, "
              f"schema {getattr(getattr(default, section.name), key.name)!r}"
              for section in fields(Params) for key in fields(getattr(stated, section.name))
              if getattr(getattr(stated, section.name), key.name) != getattr(getattr(default, section.name), key.name)]
    assert not differ, "\n".join(differ)


def test_params_yaml_states_every_key_and_the_section_objects_are_the_defaults():
    from fewlabel.params import read_params_file

    raw = read_params_file(REPO / "params.yaml")
    missing = [f"{section.name}.{key.name}" for section in fields(Params)
               for key in fields(section.default_factory) if key.name not in (raw.get(section.name) or {})]
    assert not missing, f"params.yaml documents every key; missing: {missing}"
    assert Params() == parse_params({})


def test_choice_lists_agree_with_the_code_that_implements_them():
    """The schema owns the names (params imports no active code); the registries must match."""
    from fewlabel.active import label_check, strategies
    from fewlabel.features import views
    from fewlabel.model import calibrate
    from fewlabel.params import (CALIBRATION_STRATEGIES, CHECK_SCORES, RESIZE_METHODS, SUGGEST_STRATEGIES,
                                 SuggestParams)

    assert SUGGEST_STRATEGIES == strategies.STRATEGIES and set(strategies._IMPLEMENTATIONS) == set(SUGGEST_STRATEGIES)
    assert CHECK_SCORES == label_check.SCORES
    assert (SuggestParams().strategy, SuggestParams().check_score) == (strategies.DEFAULT_STRATEGY,
                                                                       label_check.DEFAULT_SCORE)
    assert set(RESIZE_METHODS) == set(views.RESIZE_METHODS)
    assert set(CALIBRATION_STRATEGIES) == {*calibrate.STRATEGIES, "auto"}


def test_params_does_not_import_the_active_modules():
    import subprocess
    import sys

    code = ("import sys, fewlabel.params as p; p.load_params('params.yaml'); "
            "print(sorted(m for m in sys.modules if m.startswith('fewlabel.')))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "fewlabel.active" not in loaded and "fewlabel.params" in loaded


def test_the_svm_of_view_selection_and_of_active_learning_is_the_schemas_default():
    from fewlabel.active.fitting import DEFAULT_SVM
    from fewlabel.model.selection import SELECTION_SVM
    from fewlabel.params import SvmParams

    assert DEFAULT_SVM == SELECTION_SVM == SvmParams() == load_params(REPO / "params.yaml").svm


@pytest.mark.parametrize("raw, message", [
    ({"calibrate": {"folds": 3}}, r"params\.yaml: calibrate\.folds was renamed to train\.oof_folds"),
    ({"eval": {"max_images": 500}}, r"params\.yaml: eval\.max_images was renamed to subset\.eval_max_images"),
    ({"eval": None}, r"eval\.max_images was renamed to subset\.eval_max_images"),
])
def test_moved_keys_say_where_they_went(raw, message):
    with pytest.raises(PipelineError, match=message):
        parse_params(raw)
    assert parse_params({"train": {"oof_folds": 3}, "subset": {"eval_max_images": 500}}).train.oof_folds == 3


@pytest.mark.parametrize("raw, message", [
    ({"svm": {"c": 10}}, r"svm\.c \(did you mean svm\.C\?\)"),
    ({"svm": {"C": -1}}, r"svm\.C must be a number > 0"),
    ({"svm": {"gamma": "wide"}}, r"svm\.gamma must be a number > 0 or one of scale, auto, median"),
    ({"svm": {"scaler": "minmax"}}, r"svm\.scaler must be one of none, standard, l2, sqrt"),
    ({"features": {"image_size": [224, 224]}}, r"features\.image_size must be null \(native size\), auto"),
    ({"features": {"select_scales": [1.0, [0.05]]}}, r"features\.select_scales must be a list of candidates"),
    ({"features": {"select_max_size": 16}}, r"features\.select_max_size must be an integer >= 32"),
    ({"features": {"backbones": ["EfficientNetB0", "EfficientNetB1"], "native_sizes": [240]}},
     r"features\.native_sizes must be null or a list of 2 native size\(s\) .*EfficientNetB0, EfficientNetB1"),
    ({"features": {"native_sizes": [16]}}, r"features\.native_sizes must be null or a list of 1 native size"),
    ({"features": {"native_sizes": 260}}, r"features\.native_sizes must be null or a list"),
    ({"features": {"native_sizes": [True]}}, r"features\.native_sizes must be null or a list"),
    ({"features": {"native_size": [260]}}, r"features\.native_size \(did you mean features\.native_sizes\?\)"),
    ({"features": {"resize": "lanczos"}}, r"features\.resize must be one of bilinear, bilinear_antialias"),
    ({"subset": {"n_images": "many"}}, r"subset\.n_images must be an integer"),
    ({"subset": {"class_quota": {"unicorn": 3}}}, r"subset\.class_quota must be .*'unicorn' is not in data\.classes"),
    ({"subset": {"class_quota": {"cat": -1}}}, r"subset\.class_quota must be .*integers >= 0 \(cat: -1\)"),
    ({"subset": {"eval_max_images": 0}}, r"subset\.eval_max_images must be an integer >= 1 or null"),
    ({"calibrate": {"strategy": "best"}}, r"calibrate\.strategy must be one of per_class, global, none, auto"),
    ({"train": {"oof_folds": 1}}, r"train\.oof_folds must be an integer >= 2"),
    ({"train": {"folds": 5}}, r"train\.folds \(did you mean train\.oof_folds\?\)"),
    ({"evaluate": {"top_k": [0]}}, r"evaluate\.top_k must be a list of integers between 1 and 20"),
    ({"features": {"batch_size": 0}}, r"features\.batch_size must be an integer >= 1"),
    ({"tune": {"C": []}}, r"tune\.C must be a non-empty list"),
    ({"data": {"train_split": "test"}}, r"data\.eval_split must be a split other than data\.train_split \('test'\)"),
    ({"data": {"pool_split": "test"}}, r"data\.pool_split must be null or a list other than data\.eval_split"),
    ({"data": {"pool_split": "u", "pool_images": "/x"}}, r"data\.pool_images must be null when data\.pool_split"),
    ({"calibrate": {"min_labels": 2, "max_labels": 1}}, r"calibrate\.max_labels must be null or an integer >= "
                                                        r"calibrate\.min_labels \(2\)"),
    ({"svm": {"C": True}}, r"svm\.C must be a number > 0, got True"),
    ({"features": {"flip_tta": "yes"}}, r"features\.flip_tta must be true or false, got 'yes'"),
    ({"suggest": {"strategy": "entropy"}}, r"suggest\.strategy must be one of random, uncertainty"),
    ({"svn": {}}, r"unknown section\(s\) svn"),
    ({"subset": {"seed": -1}}, r"subset\.seed must be an integer >= 0"),
    ({"svm": {"n_jobs": 0}}, r"svm\.n_jobs must be a non-zero integer"),
    ({"svm": {"approximation": "rff"}}, r"svm\.approximation must be one of auto, exact, nystroem"),
    ({"svm": {"max_exact_kernel": 0}}, r"svm\.max_exact_kernel must be an integer >= 1"),
    ({"svm": {"n_components": 1.5}}, r"svm\.n_components must be an integer"),
    ({"svm": {"n_component": 10}}, r"svm\.n_component \(did you mean svm\.n_components\?\)"),
    ({"tune": {"C": [1, 1.0]}}, r"tune\.C must be a list without repeats"),
    ({"tune": {"gamma": ["scale", "scale"]}}, r"tune\.gamma must be a list without repeats"),
])
def test_bad_values_name_the_key(raw, message):
    with pytest.raises(PipelineError, match=message):
        parse_params(raw)


def test_native_sizes_parse_parallel_to_the_backbones():
    features = parse_params({"features": {"backbones": ["a.keras", "b.keras"], "native_sizes": [260, None]}}).features
    assert features.native_sizes == (260, None)
    assert parse_params({"features": {"native_sizes": None}}).features.native_sizes is None


def test_params_files_are_read_as_dvc_reads_them(tmp_path):
    """YAML 1.2 as DVC reads params.yaml (ruamel.yaml's safe loader): ``1e-3`` a float, ``yes``
    and ``on`` strings, ``0o10`` octal, ``010`` decimal. PyYAML (YAML 1.1) reads the last four
    otherwise, so a stage would see another value than ``dvc params diff`` shows."""
    from dvc.utils.serialize import load_yaml

    from fewlabel.params import read_params_file

    path = tmp_path / "params.yaml"
    path.write_text("a: 1e-3\nb: yes\nc: on\nd: 0o10\ne: 010\nf: No\ng: [1e2, 1_000]\nh:\n")
    assert read_params_file(path) == load_yaml(str(path)) == \
        {"a": 0.001, "b": "yes", "c": "on", "d": 8, "e": 10, "f": "No", "g": [100.0, 1000], "h": None}
    path.write_text("features:\n  flip_tta: on\n")
    with pytest.raises(PipelineError, match=r"features\.flip_tta must be true or false, got 'on'"):
        load_params(path)
    path.write_text("svm:\n  C: 1\n  C: 2\n")  # DVC refuses a repeated key too
    with pytest.raises(PipelineError, match="params.yaml: is not valid YAML"):
        load_params(path)


def test_gamma_words_and_numbers(tmp_path):
    assert parse_params({"svm": {"gamma": "median"}}).svm.gamma == "median"
    assert parse_params({"svm": {"gamma": 0.01}}).svm.gamma == 0.01
    assert parse_params({"tune": {"gamma": ["scale", 0.1]}}).tune.gamma == ("scale", 0.1)
    exponent = tmp_path / "exponent.yaml"
    exponent.write_text("svm:\n  gamma: 1e-3\ntune:\n  C: [1e2, 10]\n")  # YAML 1.2 floats, as DVC reads them
    assert load_params(exponent).svm.gamma == 0.001 and load_params(exponent).tune.C == (100.0, 10.0)
    broken = tmp_path / "params.yaml"
    broken.write_text("svm: [unclosed\n")
    with pytest.raises(PipelineError, match="params.yaml: is not valid YAML"):
        load_params(broken)
    custom = tmp_path / "custom.yaml"
    custom.write_text(yaml.safe_dump({"data": {"classes": ["cat", "dog"]}, "evaluate": {"top_k": [1, 2]}}))
    assert load_params(custom).data.classes == ("cat", "dog")


# `dvc exp run -S key=value` edits params.yaml with this function (dvc.repo.experiments.queue.base
# _update_params -> dvc.utils.hydra.apply_overrides) before it runs the pipeline.
@pytest.mark.parametrize("override", ["svm.C=10", "calibrate.max_labels=2", "data.source=/data/VOCdevkit",
                                      "evaluate.bootstrap=20", "tune.enabled=true", "features.runtime=openvino",
                                      "features.select_scales=[1.0]", "tune.gamma=[scale,0.0005,0.002]",
                                      "features.select_max_size=800", "data.pool_split=unlabelled",
                                      "suggest.strategy=uncertainty", "suggest.n=50", "train.oof_folds=3",
                                      "subset.eval_max_images=500"])
def test_dvc_set_param_changes_one_line_of_params_yaml(tmp_path, override):
    """DVC rewrites the whole file when it sets one value: in the style params.yaml is
    written in, only the value's own line (or list) changes, and every comment stays."""
    import difflib

    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    original = (REPO / "params.yaml").read_text()
    path.write_text(original)
    apply_overrides(path, [override])
    changed = [line for line in difflib.unified_diff(original.splitlines(), path.read_text().splitlines(), n=0,
                                                     lineterm="")
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    removed = [line for line in changed if line.startswith("-")]
    added = [line for line in changed if line.startswith("+")]
    # one line replaced, or one list item dropped (a list of two set to one item)
    assert (len(removed), len(added)) in ((1, 1), (1, 0)), "\n".join(changed)
    assert not any(line[1:].lstrip().startswith("#") for line in changed), "\n".join(changed)  # no comment moved
