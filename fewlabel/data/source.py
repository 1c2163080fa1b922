"""Where the data set comes from (``data.source``): the official tarballs or a base URL
(downloaded, checked, extracted into the per-user cache), a local VOCdevkit (used as is) or a
local folder of tarballs; and the link the download stage makes to it."""
from __future__ import annotations

import os
import re
import sys
import urllib.parse
from pathlib import Path

from fewlabel.data.archive import extract_cached
from fewlabel.data.download import (SOURCE_HELP, URL_SCHEMES, extraction_key, fetch_tarball, tarballs_for,
                                    urls_for)
from fewlabel.errors import PipelineError
from fewlabel.io import file_md5, user_cache_dir

VOC_SUBDIRS = ("Annotations", "JPEGImages", "ImageSets/Main")


def is_voc_dir(path: Path) -> bool:
    """Whether ``path`` has the VOC layout (Annotations/, JPEGImages/, ImageSets/Main/)."""
    return all((path / sub).is_dir() for sub in VOC_SUBDIRS)


def locate_voc_dir(path: str | Path, year: int) -> Path | None:
    """The VOC folder at ``path``: itself, ``path/VOC<year>`` or ``path/VOCdevkit/VOC<year>``.

    Returns None when none of them has the VOC layout. A folder named ``VOC<other year>``
    is not taken for ``year`` (a :class:`PipelineError` says so).
    """
    path = Path(path)
    for candidate in (path, path / f"VOC{year}", path / "VOCdevkit" / f"VOC{year}"):
        if is_voc_dir(candidate):
            match = re.fullmatch(r"VOC(\d{4})", candidate.name)
            if match and int(match.group(1)) != year:
                raise PipelineError(f"data.source {path} is a VOC{match.group(1)} folder but "
                                    f"data.year is {year}; set data.year: {match.group(1)} or "
                                    f"point data.source at a VOC{year} folder")
            return candidate
    return None


def _describe_folder(path: Path, year: int) -> str:
    """What a folder lacks, to explain why it is not a usable source."""
    for candidate in (path / "VOCdevkit" / f"VOC{year}", path / f"VOC{year}", path):
        if any((candidate / sub).exists() for sub in VOC_SUBDIRS):
            missing = [sub for sub in VOC_SUBDIRS if not (candidate / sub).is_dir()]
            return f"{candidate} lacks {', '.join(s + '/' for s in missing)}"
    others = sorted(p.name for p in [*path.glob("VOC2*"), *path.glob("VOCdevkit/VOC2*")] if p.is_dir())
    if others:
        return f"it holds {', '.join(others)} but not VOC{year} (check data.year)"
    return "it holds neither"


def _is_url(source: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source) is not None


def resolve_source_folder(source: str, run_root: str | Path, repo_root: str | Path | None = None) -> Path:
    """The absolute folder a local ``data.source`` names.

    A relative path is taken from the root of this run (``run_root``: where dvc.yaml is,
    DVC's working directory), then from the repository the run belongs to (``repo_root``:
    DVC sets ``$DVC_ROOT`` to it; a queued or ``--temp`` experiment runs in a copy under
    ``.dvc/tmp/exps`` holding only tracked files, so a relative, untracked data folder is
    only found there). If neither exists, the error names every path tried.
    """
    path = Path(os.path.expanduser(source))
    if path.is_absolute():
        return path
    candidates = list(dict.fromkeys(Path(os.path.abspath(Path(root) / path))
                                    for root in (run_root, repo_root) if root))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    tried = " nor ".join(str(c) for c in candidates)
    raise PipelineError(f"params.yaml: data.source '{source}' is a relative path and neither {tried} "
                        f"exists; {SOURCE_HELP} (a relative path is read from the repository root)")


def _extracted(tarballs: list[Path], final: Path, year: int, progress: bool) -> Path:
    """Extract the tarballs into ``final`` (all or nothing) and return its ``VOC<year>`` folder."""
    def check(folder: Path) -> None:
        if locate_voc_dir(folder, year) is None:
            names = ", ".join(str(t) for t in tarballs)
            raise PipelineError(f"{names}: do not contain a VOCdevkit/VOC{year} folder with "
                                f"{', '.join(VOC_SUBDIRS)}; check data.year and the tarballs")
    extract_cached(tarballs, final, check, progress)
    return locate_voc_dir(final, year)


def obtain_voc(year: int, source: str | None, md5_overrides: dict[str, str] | None = None,
               progress: bool = True) -> Path:
    """Return a local ``VOC<year>`` folder for ``data.source`` (see the module docstring)."""
    if source is not None and not _is_url(source):
        folder = resolve_source_folder(source, Path.cwd(), os.environ.get("DVC_ROOT"))
        return _from_local(folder, year, md5_overrides, progress)
    if source is not None and urllib.parse.urlparse(source).scheme.lower() not in URL_SCHEMES:
        raise PipelineError(f"params.yaml: data.source '{source}' is a URL with an unsupported scheme; "
                            f"use http://, https:// or file://, or a local folder")
    expected = tarballs_for(year, md5_overrides)
    final = user_cache_dir("extracted") / extraction_key(year, expected)
    found = locate_voc_dir(final, year) if final.is_dir() else None
    if found is not None:
        return found
    cache_dir = user_cache_dir("downloads")
    tarballs = [fetch_tarball(name, md5, urls_for(name, year, source), cache_dir, progress)
                for name, md5 in expected.items()]
    return _extracted(tarballs, final, year, progress)


def _from_local(folder: Path, year: int, md5_overrides: dict[str, str] | None, progress: bool) -> Path:
    """A local source: a VOC folder (linked as is) or a folder of tarballs (checked, extracted)."""
    folder = folder.absolute()
    if not folder.exists():
        raise PipelineError(f"params.yaml: data.source folder {folder} does not exist; {SOURCE_HELP}, "
                            f"or null to download VOC{year}")
    if not folder.is_dir():
        raise PipelineError(f"params.yaml: data.source {folder} is a file; point data.source at the "
                            f"folder holding it (a VOCdevkit folder or a folder of VOC tarballs)")
    found = locate_voc_dir(folder, year)
    if found is not None:
        return found
    expected = tarballs_for(year, md5_overrides)
    present = [name for name in expected if (folder / name).is_file()]
    if not present:
        raise PipelineError(
            f"params.yaml: data.source {folder} is neither a VOC{year} folder (itself, VOC{year}/ or "
            f"VOCdevkit/VOC{year}/ with {', '.join(s + '/' for s in VOC_SUBDIRS)}) nor a folder "
            f"holding the tarballs {', '.join(expected)}: {_describe_folder(folder, year)}")
    missing = [name for name in expected if name not in present]
    if missing:
        raise PipelineError(f"params.yaml: data.source {folder} holds {', '.join(present)} but not "
                            f"{', '.join(missing)}; VOC{year} needs all of {', '.join(expected)}")
    final = user_cache_dir("extracted") / extraction_key(year, expected)
    found = locate_voc_dir(final, year) if final.is_dir() else None
    if found is not None:
        return found
    for name, md5 in expected.items():
        actual = file_md5(folder / name)
        if actual != md5:
            raise PipelineError(
                f"{folder / name}: md5 is {actual}, expected {md5}; if this is your own tarball, "
                f"declare its md5 in params.yaml data.md5 (e.g. data.md5: {{{name}: {actual}}}), "
                f"otherwise replace the corrupt file")
    return _extracted([folder / name for name in expected], final, year, progress)


def link_dataset(target: str | Path, out: str | Path) -> None:
    """Make ``out`` a symlink to ``target``, atomically (temp link, then ``os.replace``).

    A previous link or file at ``out`` is replaced; a real, non-empty folder there is not
    touched (an error says what to do).
    """
    target, out = Path(target).absolute(), Path(out)
    if out.is_dir() and not out.is_symlink():
        if any(out.iterdir()):
            raise PipelineError(f"{out} is a real folder, not a link made by this stage; move it "
                                f"away (or set data.source to it, to use it as the dataset) and rerun")
        out.rmdir()
    if out.is_symlink():
        _undo_dvc_chmod(Path(os.path.realpath(out)))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.link-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp, target_is_directory=True)
    try:
        os.replace(tmp, out)
    finally:
        if tmp.is_symlink():
            tmp.unlink()


def _undo_dvc_chmod(old_target: Path) -> None:
    """Undo a DVC quirk: when it removes a linked output before a rerun, it chmods the link's
    target to 0777. We restore 0755 (minus umask) on folders in our own cache, and point it
    out for the user's own folders."""
    try:
        mode = old_target.stat().st_mode & 0o777
    except OSError:
        return
    if not old_target.is_dir() or mode != 0o777:
        return
    cache = user_cache_dir().resolve()
    if cache in old_target.resolve().parents:
        umask = os.umask(0)
        os.umask(umask)
        old_target.chmod(0o755 & ~umask)
    else:
        print(f"note: {old_target} is world-writable (mode 777); DVC sets that when it removes a "
              f"linked output before a rerun. Run 'chmod 755 {old_target}' if you did not intend it.",
              file=sys.stderr)
