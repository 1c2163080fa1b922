"""Downloading the VOC tarballs: the official hosts (then a mirror) or a base URL, resumed
after a dropped connection, md5-checked, one download per file across parallel runs."""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from filelock import FileLock

from fewlabel.errors import PipelineError
from fewlabel.io import file_md5
from fewlabel.progress import bytes_bar

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
        bar = bytes_bar(part.name[:-len(".part")], None if length is None else offset + length,
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


def fetch_tarball(name: str, expected_md5: str, urls: list[str], cache_dir: Path,
                  progress: bool = True) -> Path:
    """Return the cached tarball ``cache_dir/name``, downloading it from the first URL that works.

    A cached file with the right md5 is used as is (no request). When every URL fails, the
    error lists each URL with its reason and says how to use local data instead.
    """
    dest = cache_dir / name
    # one download per file across parallel runs (filelock: flock on POSIX, msvcrt on Windows)
    with FileLock(cache_dir / f".{name}.lock"):
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


def extraction_key(year: int, expected: dict[str, str]) -> str:
    """The cache folder name of an extraction: the year and a digest of the tarballs' md5s."""
    digest = hashlib.sha1(" ".join(f"{n}={m}" for n, m in sorted(expected.items())).encode()).hexdigest()
    return f"voc{year}-{digest[:16]}"
