"""Obtaining PASCAL VOC: official tarballs (with mirrors, resume and md5 checks), a local
VOCdevkit, a folder of tarballs or a base URL; extraction into the per-user cache.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

from fewlabel.errors import PipelineError
from fewlabel.io import file_md5, user_cache_dir

#: The official tarballs of each year, with their md5s.
OFFICIAL_TARBALLS = {
    2007: {"VOCtrainval_06-Nov-2007.tar": "c52e279531787c972589f7e41ab4ae64",
           "VOCtest_06-Nov-2007.tar": "b6e924de25625d8de591ea690078ad9f"},
    2012: {"VOCtrainval_11-May-2012.tar": "6cd6e144f989b92b3379bac3b3de84fd"},
}
#: Base URLs tried in order when ``data.source`` is null.
OFFICIAL_HOSTS = {
    2007: ("http://host.robots.ox.ac.uk/pascal/VOC/voc2007/", "http://pjreddie.com/media/files/"),
    2012: ("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/", "http://pjreddie.com/media/files/"),
}
VOC_SUBDIRS = ("Annotations", "JPEGImages", "ImageSets/Main")
URL_SCHEMES = ("http", "https", "file")
CHUNK = 1 << 20
TIMEOUT_S = 60
MAX_ATTEMPTS = 5  # per URL, while each attempt makes progress (a dropped connection resumes)
USER_AGENT = "fewlabel-voc-download/1.0 (python urllib)"
SOURCE_HELP = ("set data.source in params.yaml to a local VOCdevkit (or VOC<year>) folder, "
               "a folder holding the VOC tarballs, or a base URL serving them")


class DownloadError(PipelineError):
    """One URL could not be fetched (network, HTTP status): the caller may try another."""


class ChecksumError(DownloadError):
    """One URL served a file with the wrong md5 (e.g. an HTML error page): try the next one."""


# --------------------------------------------------------------------------- tarball lists

def tarballs_for(year: int, md5_overrides: dict[str, str] | None = None) -> dict[str, str]:
    """``{tarball name: expected md5}`` for a VOC year; ``md5_overrides`` (``data.md5``) win."""
    if year not in OFFICIAL_TARBALLS:
        raise PipelineError(
            f"params.yaml: data.year={year} has no known tarballs (known: "
            f"{', '.join(map(str, OFFICIAL_TARBALLS))}); set data.year to one of them, or set "
            f"data.source to a local folder holding VOCdevkit/VOC{year}")
    expected = dict(OFFICIAL_TARBALLS[year])
    for name, md5 in (md5_overrides or {}).items():
        if name in expected:
            expected[name] = md5.lower()
        else:
            print(f"warning: params.yaml data.md5 names '{name}', which is not a VOC{year} tarball "
                  f"({', '.join(expected)}); it is ignored", file=sys.stderr)
    return expected


def urls_for(name: str, year: int, source: str | None) -> list[str]:
    """The URLs to try for one tarball: ``source`` as a base URL, or the official hosts."""
    bases = OFFICIAL_HOSTS[year] if source is None else (source,)
    return [base.rstrip("/") + "/" + urllib.parse.quote(name) for base in bases]


# --------------------------------------------------------------------------- download

def _progress_bar(name: str, total: int | None, initial: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=name, unit="B", unit_scale=True,
                unit_divisor=1024, file=sys.stderr, disable=not enabled, leave=True)


def _fetch_once(url: str, part: Path, progress: bool) -> None:
    """One HTTP request: resume ``part`` with a Range request (append on 206, restart on 200).

    Raises :class:`DownloadError` if the request fails or the body ends early (``part``
    keeps what arrived, for the next attempt to resume).
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            raise _RangeNotSatisfiable() from error
        raise DownloadError(f"HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(str(reason) or type(reason).__name__) from error

    with response:
        status = getattr(response, "status", None)
        if status == 206:
            match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                part.unlink()  # the server resumed from elsewhere: start over, cleanly
                raise DownloadError(f"bad Content-Range {response.headers.get('Content-Range')!r} "
                                    f"for a resume at byte {offset}")
            mode = "ab"
        else:  # 200 (or file://, no status): the whole file, so restart
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        received = 0
        bar = _progress_bar(part.name[:-len(".part")], None if length is None else offset + length,
                            offset, progress)
        try:
            with open(part, mode) as out:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (OSError, ValueError, http.client.HTTPException) as error:
                        raise DownloadError(f"connection lost after {offset + received} bytes "
                                            f"({error or type(error).__name__})") from error
                    if not block:
                        break
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
                out.flush()
                os.fsync(out.fileno())
        finally:
            bar.close()
    if length is not None and received < length:
        raise DownloadError(f"connection closed after {offset + received} of {offset + length} bytes")


class _RangeNotSatisfiable(Exception):
    """HTTP 416 for a resume: the partial file is already complete (or not this file)."""


def download(url: str, dest: str | Path, expected_md5: str, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming it, then check its md5.

    A dropped connection is resumed (``Range: bytes=<size>-``) while attempts make progress,
    up to :data:`MAX_ATTEMPTS`; a ``.part`` left by an interrupted run is resumed too.
    Network failures raise :class:`DownloadError` (the ``.part`` is kept); a wrong md5 deletes
    the download and raises :class:`PipelineError` naming the URL and both md5s.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    resumed = part.exists() and part.stat().st_size > 0
    attempts = 0
    while True:
        attempts += 1
        before = part.stat().st_size if part.exists() else 0
        try:
            _fetch_once(url, part, progress)
        except _RangeNotSatisfiable:
            pass  # the .part may already hold the whole file: the md5 check decides
        except DownloadError:
            after = part.stat().st_size if part.exists() else 0
            if attempts >= MAX_ATTEMPTS or after == before:  # no progress: give up on this URL
                raise
            print(f"{dest.name}: connection dropped at {after} bytes; resuming", file=sys.stderr)
            continue
        actual = file_md5(part)
        if actual == expected_md5.lower():
            os.replace(part, dest)
            return dest
        part.unlink()
        if resumed:  # the old .part may not have been this file: one fresh try
            resumed = False
            print(f"{dest.name}: md5 mismatch after resuming an earlier partial download; "
                  f"downloading it again from the start", file=sys.stderr)
            continue
        raise ChecksumError(
            f"{url}: downloaded file has md5 {actual}, expected {expected_md5}; it was deleted. "
            f"If you serve your own tarballs, declare their md5 in params.yaml data.md5 "
            f"(e.g. data.md5: {{{dest.name}: {actual}}}); otherwise rerun to download it again")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock (POSIX flock) so that parallel runs do not download the same file."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locking
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_tarball(name: str, expected_md5: str, urls: list[str], cache_dir: Path,
                  progress: bool = True) -> Path:
    """Return the cached tarball ``cache_dir/name``, downloading it from the first URL that works.

    A cached file with the right md5 is used as is (no request). When every URL fails, the
    error lists each URL with its reason and says how to use local data instead.
    """
    dest = cache_dir / name
    with _file_lock(cache_dir / f".{name}.lock"):
        if dest.exists():
            if file_md5(dest) == expected_md5.lower():
                return dest
            print(f"{dest}: md5 differs from the expected {expected_md5}; downloading it again",
                  file=sys.stderr)
            dest.unlink()
        failures = []
        for url in urls:
            print(f"downloading {url}", file=sys.stderr)
            try:
                return download(url, dest, expected_md5, progress)
            except DownloadError as error:  # includes a wrong md5: a mirror may serve the right file
                failures.append(f"{url} ({error})")
                print(f"  failed: {error}", file=sys.stderr)
    tried = "\n  ".join(failures)
    kept = dest.with_name(dest.name + ".part")
    resume = (f" The partial download {kept} is kept and resumed on the next run."
              if kept.exists() else "")
    raise PipelineError(
        f"could not download {name}; tried:\n  {tried}\n"
        f"If you are offline or these hosts are down, {SOURCE_HELP}.{resume}")


# --------------------------------------------------------------------------- extraction

def _check_member(member: tarfile.TarInfo, tarball: Path) -> None:
    """Refuse tar members that would land outside the extraction folder."""
    name = member.name
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in parts or re.match(r"^[A-Za-z]:", name):
        raise PipelineError(f"{tarball}: member '{name}' points outside the extraction folder; "
                            f"refusing to extract this tarball (is it really a VOC tarball?)")
    if member.islnk() or member.issym():
        target = member.linkname
        resolved = os.path.normpath(os.path.join(os.path.dirname(name) if member.issym() else "", target))
        if os.path.isabs(target) or resolved.startswith(".."):
            raise PipelineError(f"{tarball}: link '{name}' -> '{target}' points outside the "
                                f"extraction folder; refusing to extract this tarball")
    elif not (member.isfile() or member.isdir()):
        raise PipelineError(f"{tarball}: member '{name}' is a device or fifo; refusing to extract "
                            f"this tarball")


def extract(tarballs: list[Path], dest: str | Path, progress: bool = False) -> None:
    """Extract ``tarballs`` into the folder ``dest``, refusing members that escape it."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    supports_filter = hasattr(tarfile, "data_filter")
    for tarball in tarballs:
        bar = _progress_bar(f"extracting {Path(tarball).name}", Path(tarball).stat().st_size, 0, progress)
        try:
            with tarfile.open(tarball, "r:*") as tar:
                position = 0
                for member in tar:
                    _check_member(member, Path(tarball))
                    if supports_filter:
                        tar.extract(member, dest, set_attrs=not member.isdir(), filter="data")
                    else:  # pragma: no cover - Python without extraction filters
                        tar.extract(member, dest, set_attrs=not member.isdir())
                    now = tar.fileobj.tell()
                    bar.update(now - position)
                    position = now
                bar.update(max(0, (bar.total or 0) - bar.n))  # the tar's end padding
        except (tarfile.TarError, EOFError) as error:
            raise PipelineError(f"{tarball}: cannot be read as a tar archive ({error}); delete it and "
                                f"rerun to fetch it again") from error
        finally:
            bar.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale_temps(root: Path) -> None:
    """Delete half-extracted temp folders left by runs that were killed."""
    for path in root.glob(".tmp-*"):
        match = re.match(r"\.tmp-(\d+)-", path.name)
        if match and not _pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def extraction_key(year: int, expected: dict[str, str]) -> str:
    """The cache folder name of an extraction: the year and a digest of the tarballs' md5s."""
    digest = hashlib.sha1(" ".join(f"{n}={m}" for n, m in sorted(expected.items())).encode()).hexdigest()
    return f"voc{year}-{digest[:16]}"


def extract_cached(tarballs: list[Path], final: Path, year: int, progress: bool = True) -> Path:
    """Extract into a temp folder beside ``final``, then rename it to ``final`` (all or nothing).

    Returns the ``VOC<year>`` folder inside ``final``.
    """
    root = final.parent
    _remove_stale_temps(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=root))
    try:
        extract(tarballs, tmp, progress)
        if locate_voc_dir(tmp, year) is None:
            names = ", ".join(str(t) for t in tarballs)
            raise PipelineError(f"{names}: do not contain a VOCdevkit/VOC{year} folder with "
                                f"{', '.join(VOC_SUBDIRS)}; check data.year and the tarballs")
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise  # a real failure; another run finishing first is fine
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return locate_voc_dir(final, year)


# --------------------------------------------------------------------------- local folders

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


# --------------------------------------------------------------------------- the stage

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
    return extract_cached(tarballs, final, year, progress)


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
    return extract_cached([folder / name for name in expected], final, year, progress)


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
