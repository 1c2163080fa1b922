"""The DVC stages' entry points (``python -m stages.<name>``, see dvc.yaml).

Importing any of them first quiets TensorFlow's start-up lines (:mod:`fewlabel.tf_logs`), before
the stage's own imports load TensorFlow; ``import fewlabel`` alone leaves the process as it is.
"""
from fewlabel import tf_logs

tf_logs.install()
