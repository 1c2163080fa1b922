"""Frozen CNN features: backbones, views, runtimes, the per-image cache, the engine and
extraction (the views are chosen by the classifier's score: :mod:`fewlabel.model.selection`)."""
