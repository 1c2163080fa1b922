"""Each DVC stage's code deps, derived from what its entry module imports.

A stage of ``dvc.yaml`` runs ``python -m stages.<name>``; the code it runs is that module's
import closure within this repository: every ``fewlabel.*`` / ``stages.*`` module reached through
``import`` / ``from ... import`` statements (those inside functions too: they run when the
function does), plus the package ``__init__.py`` files that importing a module runs. Its
``deps:`` must list exactly those files, so that editing one reruns the stages that run it, and
editing another reruns nothing.

    python -m tests.dvc_deps            # list the stages whose deps differ (exit 1 if any)
    python -m tests.dvc_deps --write    # rewrite the code deps of every stage in dvc.yaml

``--write`` replaces only the code deps (paths under ``fewlabel/`` and ``stages/``) and the
comments directly above them; data deps, their comments and the rest of the file stay as they
are. A folder is written where the stage imports every file in it. tests/test_dvc_deps.py
fails when a stage's deps miss a file it imports or stand for one it does not.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Top-level packages of this repository whose modules are followed (others are libraries).
PACKAGES = ("fewlabel", "stages")
FIX_COMMAND = "python -m tests.dvc_deps --write"
HEADER = f"# code: the import closure of the stage's module ({FIX_COMMAND})"
_ENTRY = re.compile(r"\bpython -m (stages(?:\.\w+)+)")


def module_file(root: Path, name: str) -> Path | None:
    """The file of module ``name`` under ``root`` (``a/b.py`` or ``a/b/__init__.py``), or None."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@dataclass(frozen=True)
class _Imports:
    """What one module's import statements may load, and what they leave to PEP 562."""
    names: frozenset[str]  # every module name an import may load (``from a import b``: ``a``, ``a.b``)
    lazy: frozenset[str]  # imports inside a module-level ``__getattr__``: they run on a missing attribute
    bound: frozenset[str]  # names the module binds at its top level


def _imports(path: Path, module: str) -> _Imports:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    lazy_nodes = {id(node) for top in tree.body
                  if isinstance(top, ast.FunctionDef) and top.name == "__getattr__" for node in ast.walk(top)}
    names: set[str] = set()
    lazy: set[str] = set()
    bound: set[str] = set()
    for top in tree.body:
        if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(top.name)
        elif isinstance(top, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in top.names)
        elif isinstance(top, (ast.Assign, ast.AnnAssign)):
            targets = top.targets if isinstance(top, ast.Assign) else [top.target]
            bound.update(node.id for target in targets for node in ast.walk(target) if isinstance(node, ast.Name))
    for node in ast.walk(tree):
        found: set[str] = set()
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from ..a import y
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names if alias.name != "*")
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id in PACKAGES):  # import fewlabel; fewlabel.load(...)
            found.add(f"{node.value.id}.{node.attr}")
        (lazy if id(node) in lazy_nodes else names).update(found)
    return _Imports(frozenset(names), frozenset(lazy), frozenset(bound))


def _with_parents(name: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: importing a module runs its packages first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_closure(root: Path, entry: str) -> set[str]:
    """The files (paths relative to ``root``, with ``/``) that running module ``entry`` may import
    from this repository's packages.

    A package's module-level ``__getattr__`` (PEP 562: ``fewlabel.load`` imports the API on first
    use) runs only for a name the package does not bind, so its imports are followed only when
    a module of the closure asks the package for such a name."""
    modules: dict[str, _Imports] = {}
    files: set[str] = set()
    asked: set[str] = set()  # every dotted name imported or read, module or attribute
    todo = [entry]
    while todo:
        name = todo.pop()
        asked.add(name)
        for part in _with_parents(name):
            if part in modules or part.split(".")[0] not in PACKAGES:
                continue
            path = module_file(root, part)
            if path is None:  # a namespace package (stages/) or an attribute: nothing runs
                modules[part] = _Imports(frozenset(), frozenset(), frozenset())
                continue
            modules[part] = found = _imports(path, part)
            files.add(path.relative_to(root).as_posix())
            todo.extend(found.names)
        if not todo:  # PEP 562: the lazy imports of packages asked for a name they do not bind
            for package, found in list(modules.items()):
                wanted = {n.rpartition(".")[2] for n in asked if n.rpartition(".")[0] == package}
                if found.lazy and any(w not in found.bound and module_file(root, f"{package}.{w}") is None
                                      for w in wanted):
                    todo.extend(n for n in found.lazy if n not in asked)
                    modules[package] = _Imports(found.names, frozenset(), found.bound)
    return files


def is_code(dep: str) -> bool:
    """A dep on this repository's code (vs data)."""
    return dep.split("/")[0] in PACKAGES


def files_under(root: Path, dep: str) -> set[str]:
    """The files a dep stands for, as DVC hashes them: itself, or a folder's files but Python's
    caches (.dvcignore)."""
    path = root / dep
    if not path.is_dir():
        return {dep}
    return {file.relative_to(root).as_posix() for file in path.rglob("*")
            if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc"}


def code_deps(root: Path, needed: set[str], entry_file: str) -> list[str]:
    """``needed`` as deps: a folder where the stage imports every file in it, else its files;
    the entry module first, then the rest of ``stages/``, then the library."""
    def collapse(folder: Path) -> list[str]:
        relative = folder.relative_to(root).as_posix()
        if files_under(root, relative) <= needed:
            return [relative]
        deps = [f"{relative}/{file.name}" for file in sorted(folder.iterdir())
                if file.is_file() and f"{relative}/{file.name}" in needed]
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "__pycache__"):
            if any(path.startswith(sub.relative_to(root).as_posix() + "/") for path in needed):
                deps += collapse(sub)
        return deps

    deps = [dep for package in PACKAGES if (root / package).is_dir() for dep in collapse(root / package)]
    return sorted(deps, key=lambda dep: (dep != entry_file, not dep.startswith("stages/"), dep))


@dataclass(frozen=True)
class StageDeps:
    stage: str
    entry: str  # the module its cmd runs
    listed: tuple[str, ...]  # its code deps in dvc.yaml
    needed: frozenset[str]  # the files of its import closure
    generated: tuple[str, ...]  # those as deps (code_deps), what --write writes
    covers: dict  # listed dep -> the files it stands for (files_under)

    @property
    def missing(self) -> list[str]:
        """Files the stage runs that no dep covers: editing them would not rerun it."""
        return sorted(path for path in self.needed if not any(path in files for files in self.covers.values()))

    @property
    def extra(self) -> dict[str, list[str]]:
        """Deps standing for files the stage never imports (a file, or some files of a folder):
        editing those would rerun it for nothing."""
        return {dep: sorted(files - self.needed) for dep, files in self.covers.items() if files - self.needed}


def _entry_of(stage: str, cmd) -> str:
    text = " ".join(cmd) if isinstance(cmd, list) else str(cmd)
    found = _ENTRY.findall(text)
    if len(found) != 1:
        raise ValueError(f"dvc.yaml: stage {stage!r}: expected one `python -m stages.<name>` in its cmd, "
                         f"found {len(found)}: {text!r}")
    return found[0]


def stage_deps(root: Path = REPO_ROOT) -> list[StageDeps]:
    """For each stage of ``root/dvc.yaml``: its code deps as listed and as its imports need them."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    result = []
    for stage, spec in stages.items():
        entry = _entry_of(stage, spec["cmd"])
        entry_path = module_file(root, entry)
        if entry_path is None:
            raise ValueError(f"dvc.yaml: stage {stage!r} runs {entry}, which is not a file under {root}")
        needed = import_closure(root, entry)
        listed = tuple(dep for dep in spec.get("deps") or [] if is_code(dep))
        result.append(StageDeps(stage, entry, listed, frozenset(needed),
                                tuple(code_deps(root, needed, entry_path.relative_to(root).as_posix())),
                                {dep: files_under(root, dep) for dep in listed}))
    return result


def rewrite(text: str, needed: dict[str, tuple[str, ...]]) -> str:
    """``text`` (dvc.yaml) with each stage's code deps replaced by ``needed[stage]``: written where
    its first code dep (or the comment above it) was; the code deps' own comments are dropped,
    the data deps and everything else kept as they are."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    stage = None
    i = 0
    while i < len(lines):
        line = lines[i]
        stage_match = re.match(r"^  (\w[\w-]*):\s*$", line)
        if stage_match:
            stage = stage_match.group(1)
        deps_match = re.match(r"^(\s+)deps:\s*$", line)
        if not (deps_match and stage in needed):
            out.append(line)
            i += 1
            continue
        out.append(line)
        indent = deps_match.group(1)
        block_end = i + 1  # the deps list: deeper-indented lines and comments
        while block_end < len(lines) and (lines[block_end].startswith(indent + " ")
                                          or not lines[block_end].strip()):
            block_end += 1
        item_indent = None
        kept: list[str] = []
        pending_comments: list[str] = []
        insert_at = None
        for item in lines[i + 1:block_end]:
            stripped = item.strip()
            if stripped.startswith("#") or not stripped:
                pending_comments.append(item)
                continue
            item_indent = item_indent or item[:len(item) - len(item.lstrip())]
            dep = stripped[1:].strip() if stripped.startswith("-") else None
            if dep is not None and is_code(dep):
                if insert_at is None:
                    insert_at = len(kept)
                pending_comments = []  # this dep's comments go with it
            else:
                kept.extend(pending_comments)
                kept.append(item)
                pending_comments = []
        kept.extend(pending_comments)
        item_indent = item_indent or indent + "  "
        generated = [f"{item_indent}{HEADER}\n"] + [f"{item_indent}- {path}\n" for path in needed[stage]]
        kept = [item for item in kept if item.strip() != HEADER]
        insert_at = 0 if insert_at is None else min(insert_at, len(kept))
        # a header left from an earlier run sits right before the old code deps
        out.extend(kept[:insert_at] + generated + kept[insert_at:])
        stage = None
        i = block_end
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the code deps of dvc.yaml")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    stages = stage_deps(args.root)
    wrong = [s for s in stages if s.missing or s.extra]
    if args.write:
        path = args.root / "dvc.yaml"
        text = path.read_text(encoding="utf-8")
        new = rewrite(text, {s.stage: s.generated for s in stages})
        if new != text:
            temp = path.with_name(path.name + ".tmp")
            temp.write_text(new, encoding="utf-8")
            temp.replace(path)
        print(f"dvc.yaml: code deps of {len(wrong)} stage(s) rewritten" if new != text
              else "dvc.yaml: code deps already match the imports")
        return 0
    for s in wrong:
        print(describe(s))
    return 1 if wrong else 0


def describe(s: StageDeps) -> str:
    """What is wrong with one stage's code deps, one line per file."""
    lines = [f"stage {s.stage} ({s.entry}):"]
    lines += [f"  missing: {path} (it imports it: editing it does not rerun the stage)" for path in s.missing]
    lines += [f"  extra: {dep} (it never imports {', '.join(files) if files != [dep] else 'it'}: "
              f"editing {'it' if files == [dep] else 'them'} reruns the stage for nothing)"
              for dep, files in s.extra.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
