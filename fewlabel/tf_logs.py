"""TensorFlow's start-up lines, kept off a normal run: :func:`install`, called by the entry points
(every ``python -m stages.<name>``, through ``stages/__init__.py``; the ``fewlabel`` command; a Ray
worker), never by ``import fewlabel``.

On a CPU machine importing TensorFlow prints lines that read as failures: ``failed call to
cuInit``, ``Could not find cuda drivers``, ``oneDNN custom operations are on`` and ``All log
messages before absl::InitializeLog() is called are written to STDERR``. TensorFlow 2.21
writes the last three from C++ *before* it reads ``TF_CPP_MIN_LOG_LEVEL``, so no setting
hides them. Hence two measures, both taken before TensorFlow loads:

* ``TF_CPP_MIN_LOG_LEVEL=3`` (its C++ errors too, e.g. ``cuInit``; Python errors and
  warnings are untouched);
* the first import of ``tensorflow`` (or of ``keras``, which imports it) runs with the
  process's stderr (file descriptor 2) captured; afterwards every captured line is written
  back to stderr except the known start-up lines (:data:`NOISE`). An exception raised by the
  import propagates as usual.

``FEWLABEL_TF_LOGS=1`` turns both off: every line, as TensorFlow prints it.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

ENV = "FEWLABEL_TF_LOGS"

#: TensorFlow's start-up lines on a machine without CUDA (dropped from the captured output).
NOISE = re.compile(r"All log messages before absl::InitializeLog\(\) is called"
                   r"|oneDNN custom operations are on"
                   r"|Could not find cuda drivers on your machine"
                   r"|failed call to cuInit"
                   r"|Unable to register cu(DNN|FFT|BLAS) factory"
                   r"|computation placer already registered"
                   r"|This TensorFlow binary is optimized to use available CPU instructions"
                   r"|To enable the following instructions: .* rebuild TensorFlow")

_TARGETS = ("tensorflow", "keras")


def install() -> None:
    """Quiet TensorFlow's start-up unless ``$FEWLABEL_TF_LOGS`` is 1 (idempotent)."""
    if os.environ.get(ENV) == "1":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietFinder())


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the first ``tensorflow`` / ``keras`` import in :class:`_QuietLoader`."""

    def find_spec(self, name, path=None, target=None):
        if name not in _TARGETS:
            return None
        sys.meta_path.remove(self)  # once: the other finders locate the package
        try:
            spec = importlib.util.find_spec(name)
        finally:
            if "tensorflow" not in sys.modules:
                sys.meta_path.insert(0, self)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):  # get_resource_reader, is_package, ...: the real loader's
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        finder = next((f for f in sys.meta_path if isinstance(f, _QuietFinder)), None)
        if finder is not None:  # tensorflow is loading now: no second capture for keras
            sys.meta_path.remove(finder)
        with _StderrFilter():
            self._loader.exec_module(module)


class _StderrFilter:
    """Captures file descriptor 2 into a temporary file; on exit writes back what
    :data:`NOISE` does not match."""

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._capture = tempfile.TemporaryFile(mode="w+b")
        os.dup2(self._capture.fileno(), 2)
        return self

    def __exit__(self, *exc):
        try:
            sys.stderr.flush()
        finally:
            os.dup2(self._saved, 2)
            os.close(self._saved)
        self._capture.seek(0)
        text = self._capture.read().decode(errors="replace")
        self._capture.close()
        kept = [line for line in text.splitlines(keepends=True) if not NOISE.search(line)]
        if kept:
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
        return False
