"""What importing the library does (nothing to the process) and what the entry points do (quiet
TensorFlow's start-up). The import layers themselves are checked by `lint-imports` in `make test`
(pyproject.toml, [tool.importlinter])."""
from __future__ import annotations

import subprocess
import sys

from fewlabel.features import recipes
from tests.conftest import REPO_ROOT

STATE = """
import os, sys
def state():
    fd2 = os.fstat(2)
    return ([type(f).__name__ for f in sys.meta_path], (fd2.st_dev, fd2.st_ino),
            os.environ.get("TF_CPP_MIN_LOG_LEVEL"))
before = state()
"""


def run_python(code: str) -> str:
    env = {"PATH": str(REPO_ROOT / ".venv" / "bin"), "PYTHONPATH": str(REPO_ROOT)}  # no FEWLABEL_TF_LOGS
    result = subprocess.run([sys.executable, "-c", STATE + code], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_importing_the_library_leaves_the_process_as_it_was():
    """No import hook, file descriptor 2 and the environment untouched (a notebook's stderr is its own)."""
    # (modules that import pandas are left out: dateutil's `six` adds an import hook of its own)
    out = run_python("import fewlabel, fewlabel.metrics, fewlabel.params, fewlabel.errors\n"
                     "print(state() == before, 'tensorflow' in sys.modules, before)")
    assert out.startswith("True False"), out


def test_the_commands_quiet_tensorflow_before_their_imports_load_it():
    # a stage: the stages package installs the filter before the stage's module runs
    out = run_python("import stages\nprint(state() == before, '_QuietFinder' in state()[0], state()[2])")
    assert out.split() == ["False", "True", "3"], out
    # the fewlabel command (and python -m fewlabel), before it parses its arguments
    out = run_python("from fewlabel.cli import main\nprint('_QuietFinder' in state()[0])\n"
                     "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
                     "print('_QuietFinder' in state()[0])")
    assert out.split()[0] == "False" and out.split()[-1] == "True", out


def test_meta_json_records_the_versions_tensorflow_and_keras_report():
    """Read from the installed packages' metadata (no TensorFlow import), the same strings."""
    import keras
    import tensorflow as tf
    assert recipes.installed_version("tensorflow") == tf.__version__
    assert recipes.installed_version("keras") == keras.__version__


def test_a_package_installed_under_another_name_still_gets_its_version(monkeypatch):
    import keras
    monkeypatch.setitem(recipes._DISTRIBUTIONS, "keras", ("no-such-distribution",))
    assert recipes.installed_version("keras") == keras.__version__
