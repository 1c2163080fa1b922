"""dvc.yaml's code deps are each stage's import closure (tests/dvc_deps.py): a file a stage runs
is listed, so editing it reruns the stage, and nothing else is, so other edits rerun nothing."""
from __future__ import annotations

import textwrap

from tests.dvc_deps import FIX_COMMAND, HEADER, REPO_ROOT, describe, import_closure, main, stage_deps


def test_every_stage_depends_on_exactly_the_code_it_imports():
    wrong = [s for s in stage_deps(REPO_ROOT) if s.missing or s.extra]
    assert not wrong, ("dvc.yaml's code deps differ from what the stages import; run "
                       f"`{FIX_COMMAND}` to rewrite them:\n" + "\n".join(describe(s) for s in wrong))


def write_tree(root, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


LIBRARY = {
    "fewlabel/__init__.py": """
        from fewlabel.errors import PipelineError

        def __getattr__(name):  # PEP 562: the heavy part only when asked for
            if name == "load":
                from fewlabel import heavy
                return heavy.load
            raise AttributeError(name)
        """,
    "fewlabel/errors.py": "class PipelineError(Exception): pass\n",
    "fewlabel/heavy.py": "def load(): pass\n",
    "fewlabel/unused.py": "",
    "fewlabel/sub/__init__.py": "",
    "fewlabel/sub/a.py": "from . import b\nfrom .c import C\n",
    "fewlabel/sub/b.py": "",
    "fewlabel/sub/c.py": "C = 1\n",
    "fewlabel/sub/lazy.py": "import fewlabel.late\n",
    "fewlabel/late.py": "",
    "stages/run.py": """
        from fewlabel import PipelineError
        from fewlabel.sub import a

        def main():
            from fewlabel.sub.lazy import nothing  # runs when main does
        """,
    "stages/api.py": "import fewlabel\n\nfewlabel.load()\n",
}


def test_the_closure_follows_imports_in_functions_relative_ones_and_the_packages_they_run(tmp_path):
    write_tree(tmp_path, LIBRARY)
    assert import_closure(tmp_path, "stages.run") == {
        "stages/run.py", "fewlabel/__init__.py", "fewlabel/errors.py", "fewlabel/sub/__init__.py",
        "fewlabel/sub/a.py", "fewlabel/sub/b.py", "fewlabel/sub/c.py", "fewlabel/sub/lazy.py", "fewlabel/late.py"}
    # a name the package does not bind runs its __getattr__, and the import in it
    assert import_closure(tmp_path, "stages.api") == {"stages/api.py", "fewlabel/__init__.py",
                                                      "fewlabel/errors.py", "fewlabel/heavy.py"}


DVC_YAML = """\
stages:
  run:
    cmd: python -m stages.run --out out.txt
    deps:
      - stages/run.py
      # why the data is here
      - data/in.csv
      # the library
      - fewlabel/sub
      - fewlabel/unused.py
    outs:
      - out.txt
  api:
    cmd: >-
      python -m stages.api
      --flag
    deps:
      - data/in.csv
"""


def test_missing_and_extra_files_are_named_and_write_fixes_only_the_code_deps(tmp_path, capsys):
    write_tree(tmp_path, LIBRARY)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    run, api = stage_deps(tmp_path)
    assert run.missing == ["fewlabel/__init__.py", "fewlabel/errors.py", "fewlabel/late.py"]
    assert run.extra == {"fewlabel/unused.py": ["fewlabel/unused.py"]}  # fewlabel/sub: every file imported
    assert api.missing == ["fewlabel/__init__.py", "fewlabel/errors.py", "fewlabel/heavy.py", "stages/api.py"]
    assert main(["--root", str(tmp_path)]) == 1
    printed = capsys.readouterr().out
    assert "stage run (stages.run):\n  missing: fewlabel/__init__.py" in printed
    assert "extra: fewlabel/unused.py (it never imports it" in printed

    assert main(["--root", str(tmp_path), "--write"]) == 0
    assert (tmp_path / "dvc.yaml").read_text() == f"""\
stages:
  run:
    cmd: python -m stages.run --out out.txt
    deps:
      {HEADER}
      - stages/run.py
      - fewlabel/__init__.py
      - fewlabel/errors.py
      - fewlabel/late.py
      - fewlabel/sub
      # why the data is here
      - data/in.csv
    outs:
      - out.txt
  api:
    cmd: >-
      python -m stages.api
      --flag
    deps:
      {HEADER}
      - stages/api.py
      - fewlabel/__init__.py
      - fewlabel/errors.py
      - fewlabel/heavy.py
      - data/in.csv
"""
    capsys.readouterr()
    assert main(["--root", str(tmp_path)]) == 0
    before = (tmp_path / "dvc.yaml").read_text()
    assert main(["--root", str(tmp_path), "--write"]) == 0 and (tmp_path / "dvc.yaml").read_text() == before
    # a folder dep where a file is not imported: the folder is extra, named with that file
    (tmp_path / "fewlabel/sub/new.py").write_text("")
    (run, _) = stage_deps(tmp_path)
    assert run.extra == {"fewlabel/sub": ["fewlabel/sub/new.py"]} and not run.missing
