"""fewlabel: multilabel image classification from very little labelled data.

The DVC pipeline (``dvc.yaml``, ``stages/``) calls this library; from Python, load a trained
run and label photos::

    import fewlabel
    classifier = fewlabel.load(".")          # where `dvc repro` ran
    classifier.predict(["photos/"])          # a DataFrame: path, labels, top_3, p_<class>, y_<class>

The metrics the pipeline reports are here too: :func:`mean_ap`, :func:`per_class_ap`,
:func:`average_precision`, :func:`multilabel_scores`, :func:`precision_at_k`.
"""
from __future__ import annotations

# No side effects here: the commands (stages/, fewlabel.cli) quiet TensorFlow's start-up
# (fewlabel.tf_logs), a notebook that imports the library keeps its stderr as it is.
from fewlabel.errors import PipelineError
from fewlabel.metrics import average_precision, mean_ap, multilabel_scores, per_class_ap, precision_at_k

__all__ = ["load", "Classifier", "PipelineError", "average_precision", "mean_ap", "multilabel_scores",
           "per_class_ap", "precision_at_k"]


def __getattr__(name: str):
    # load and Classifier import scikit-learn and the model code (TensorFlow when they extract): only when used,
    # so `import fewlabel` (and every stage's start) stays light
    if name in ("load", "Classifier"):
        from fewlabel import api
        return getattr(api, name)
    raise AttributeError(f"module 'fewlabel' has no attribute {name!r}")
