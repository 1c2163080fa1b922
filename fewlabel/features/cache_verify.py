"""Verifying a whole feature cache (``fewlabel cache verify [--drop]``): every entry's checksum
and vector, every folder's key, stale temporary files; optionally dropping what is not sound.

Only what is provably this product's is ever touched. A cache folder is a folder named
``<label>-<16 hex>`` holding a ``key.json`` (as :class:`FeatureCache` writes it), and either
that key matches the hash in the name and the folder holds nothing but fewlabel's files, or at
least one entry carries fewlabel's checksum trailer. Anything else (a data set, a model, your
notes, a folder without key.json) is listed as left alone and never deleted: ``--drop`` removes
files only (bad entries, stale temporaries, the key of a damaged folder), and a folder only
when that left it empty.
"""
from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fewlabel.errors import PipelineError, capped_list
from fewlabel.features.cache import (CHECKSUM_MARKER, FEATURE_CACHE_ENV, STALE_TEMP_SECONDS, TRAILER_SIZE, VERIFY_HINT,
                                     FeatureCache, _filesystem, cache_root, is_url, key_digest)

FOLDER_NAME = re.compile(r".+-([0-9a-f]{16})")
ENTRY = re.compile(r"([0-9a-f]{2})/([0-9a-f]{40})\.npy")
# FeatureCache.put_bytes's temporary files: .<name>.<random>.tmp beside their target
TEMPORARY = re.compile(r"(?:[0-9a-f]{2}/)?\.(?:key\.json|[0-9a-f]{40}\.npy)\.[^/]+\.tmp")
NOT_A_CACHE_FOLDER = "not a cache folder, left alone"
NOT_AN_ENTRY = "not a cache entry (fewlabel never writes it), left alone"
WHERE = f"the cache root (${FEATURE_CACHE_ENV}, or <user cache>/features) or one of its cache folders"


@dataclass
class VerifyReport:
    """What :func:`verify_cache` found: ``problems`` lists (file, problem) for every entry (or
    key, or leftover temporary file) that is not sound, each one ``--drop`` removes;
    ``left_alone`` (path, why) what is not provably the cache's; ``dropped`` counts the files
    removed; ``roots`` the cache roots found below ``location`` when it is not one itself."""
    location: str
    folders: int = 0
    entries: int = 0
    sound: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)
    left_alone: list[tuple[str, str]] = field(default_factory=list)
    dropped: int = 0
    roots: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        below = f" (the cache below it: {', '.join(self.roots)})" if self.roots else ""
        text = (f"{self.location}{below}: {self.folders} cache folders, {self.entries} entries, {self.sound} sound, "
                f"{len(self.problems)} problems")
        if self.problems:
            kinds = Counter(problem.split(":")[0].split(" (")[0] for _, problem in self.problems)
            text += " (" + ", ".join(f"{n} {kind}" for kind, n in kinds.most_common()) + ")"
            text += f"; {self.dropped} files dropped" if self.dropped else f"; `{VERIFY_HINT}` drops them"
        if self.left_alone:
            text += f"; {len(self.left_alone)} not the cache's, left alone"
        return text


class _Store:
    """Listing and deleting in a cache root: a folder or an fsspec URL."""

    def __init__(self, location: str):
        self.location = location.rstrip("/") or location
        self.fs, self.root = _filesystem(location) if is_url(location) else (None, location)
        self.root = self.root.rstrip("/") or self.root

    def url(self, path: str) -> str:
        """A location for FeatureCache (and for messages) from a path of the file system."""
        return path if self.fs is None else self.fs.unstrip_protocol(path)

    def kind(self, path: str) -> str | None:
        """"dir", "file", or None (nothing there)."""
        if self.fs is None:
            return "dir" if os.path.isdir(path) else "file" if os.path.exists(path) else None
        if self.fs.isdir(path):
            return "dir"
        return "file" if self.fs.exists(path) else None

    def children(self, path: str) -> tuple[list[str], list[str]]:
        """(subfolders, files) directly in ``path``, as full paths."""
        if self.fs is None:
            items = sorted(Path(path).iterdir())
            return [str(p) for p in items if p.is_dir()], [str(p) for p in items if not p.is_dir()]
        items = sorted(self.fs.ls(path, detail=True), key=lambda item: item["name"])
        names = [(item["name"].rstrip("/"), item["type"]) for item in items if item["name"].rstrip("/") != path]
        return [n for n, t in names if t == "directory"], [n for n, t in names if t != "directory"]

    def files(self, folder: str) -> list[str]:
        """Every file below ``folder``, as paths relative to it ('/'-separated)."""
        if self.fs is None:
            found = []
            for directory, _, names in os.walk(folder):
                found += [os.path.relpath(os.path.join(directory, n), folder).replace(os.sep, "/") for n in names]
            return sorted(found)
        prefix = folder.rstrip("/") + "/"
        return sorted(p[len(prefix):] for p in self.fs.find(folder) if p.startswith(prefix))

    def read(self, path: str) -> bytes | None:
        try:
            return Path(path).read_bytes() if self.fs is None else self.fs.cat_file(path)
        except (FileNotFoundError, OSError):
            return None

    def is_stale(self, path: str) -> bool:
        """A temporary file old enough to be a killed writer's (object stores write whole)."""
        return self.fs is None and os.path.getmtime(path) < time.time() - STALE_TEMP_SECONDS

    def remove(self, path: str) -> None:
        """Remove one file (never a folder)."""
        if self.fs is None:
            Path(path).unlink(missing_ok=True)
        else:
            self.fs.rm_file(path)

    def remove_if_empty(self, folder: str) -> None:
        """Remove ``folder``'s empty subfolders, then ``folder`` itself if that left it empty."""
        if self.fs is not None:  # object stores have no folders; a file:// one keeps its empty ones
            return
        for directory, _, _ in sorted(os.walk(folder), key=lambda item: -len(item[0])):
            try:
                os.rmdir(directory)  # fails on a folder holding anything
            except OSError:
                pass


@dataclass
class _Folder:
    """One candidate cache folder's files, sorted into what fewlabel writes and the rest."""
    path: str
    key: dict | None = None
    key_problem: str | None = None
    entries: list[str] = field(default_factory=list)      # <sha1[:2]>/<sha1>.npy
    others: list[str] = field(default_factory=list)       # any other file
    temporaries: list[str] = field(default_factory=list)  # .<name>.<random>.tmp


def _has_trailer(content: bytes | None) -> bool:
    return content is not None and len(content) >= TRAILER_SIZE and content[-TRAILER_SIZE:-32] == CHECKSUM_MARKER


def _scan(store: _Store, folder: str) -> _Folder | None:
    """The folder's files sorted, or None when it is not named and keyed like a cache folder."""
    name = FOLDER_NAME.fullmatch(folder.rsplit("/", 1)[-1])
    if name is None or store.kind(f"{folder}/key.json") != "file":
        return None
    scan = _Folder(folder)
    content = store.read(f"{folder}/key.json")
    try:
        scan.key = json.loads(content) if content is not None else None
    except ValueError:
        scan.key_problem = "key.json is damaged (not JSON)"
    if content is None:
        scan.key_problem = "key.json cannot be read"
    elif scan.key_problem is None and (not isinstance(scan.key, dict) or key_digest(scan.key)[:16] != name.group(1)):
        scan.key_problem = "key.json does not match the hash in the folder's name (damaged)"
    for relative in store.files(folder):
        if relative == "key.json":
            continue
        target = scan.entries if ENTRY.fullmatch(relative) else \
            scan.temporaries if TEMPORARY.fullmatch(relative) else scan.others
        target.append(relative)
    return scan


def _is_cache_folder(store: _Store, scan: _Folder | None) -> bool:
    """Provably a cache folder: its key matches its name and it holds only fewlabel's files,
    or one of its files carries fewlabel's checksum trailer."""
    if scan is None:
        return False
    if scan.key_problem is None and not scan.others:
        return True
    return any(_has_trailer(store.read(f"{scan.path}/{relative}"))
               for relative in scan.entries + [p for p in scan.others if p.endswith(".npy")])


def _explain_location(store: _Store, location: str) -> None:
    """Raise a PipelineError when ``location`` is a file or a shard folder (not a cache root or folder)."""
    kind = store.kind(store.root)
    if kind is None:
        raise PipelineError(f"{location}: no feature cache there (not found); give {WHERE}")
    parent = store.root.rsplit("/", 1)[0]
    grandparent = parent.rsplit("/", 1)[0]
    if kind == "file":
        inside = _scan(store, parent) or _scan(store, grandparent)
        hint = f": here `fewlabel cache verify {store.url(inside.path)}`" if inside else ""
        raise PipelineError(f"{location}: a file, not a folder; give {WHERE}{hint}")
    if re.fullmatch(r"[0-9a-f]{2}", store.root.rsplit("/", 1)[-1]) and _scan(store, parent):
        raise PipelineError(f"{location}: a shard folder of the cache folder {store.url(parent)} (which holds "
                            f"key.json and the shards <sha1[:2]>/<sha1>.npy), not a cache folder itself; verify "
                            f"`fewlabel cache verify {store.url(parent)}`, or the whole cache "
                            f"`fewlabel cache verify {store.url(grandparent)}`")


def _cache_folders(store: _Store, root: str, report: VerifyReport) -> list[_Folder]:
    """The cache folders of ``root`` (a cache folder itself, a cache root, or the folder above
    a cache root); everything else goes to ``report.left_alone``."""
    scan = _scan(store, root)
    if _is_cache_folder(store, scan):
        return [scan]
    subfolders, files = store.children(root)
    scans = {folder: _scan(store, folder) for folder in subfolders}
    found = [s for s in scans.values() if _is_cache_folder(store, s)]
    outside = [f for f in subfolders if not any(s.path == f for s in found)] + files
    if not found and subfolders:  # the folder above the cache (~/.cache/fewlabel): find it below
        for folder in subfolders:
            below = [_scan(store, f) for f in store.children(folder)[0]]
            below = [s for s in below if _is_cache_folder(store, s)]
            if below:
                found += below
                report.roots.append(store.url(folder))
        outside = [f for f in subfolders if store.url(f) not in report.roots] + files
    if not found and outside:
        raise PipelineError(f"{report.location}: no feature cache folder there, nor in its subfolders (a cache "
                            f"folder is named <backbone>-<view>-<hash> and holds key.json); nothing was checked or "
                            f"dropped; give {WHERE}. Left alone:"
                            + capped_list(store.url(p) for p in outside))
    report.left_alone += [(store.url(p), NOT_A_CACHE_FOLDER) for p in outside]
    return found


def verify_cache(location: str | Path | None = None, drop: bool = False) -> VerifyReport:
    """Check every entry of a feature cache: a cache root (``$FEWLABEL_FEATURE_CACHE`` or the
    default when ``location`` is None), one cache folder, or the folder above a cache root
    (its cache roots are found one level down); a folder or an fsspec URL.

    An entry is sound when its checksum matches (payload, image digest and the folder's key)
    and it holds a finite float32 vector; a folder's key is sound when ``key.json`` matches the
    hash in its name (else none of its entries can be checked). ``drop=True`` removes the
    files that are not sound (and a damaged folder's key.json, then the folder if that left it
    empty) and temporary files left by killed writers; each vector dropped is extracted again
    when next needed. Files and folders that are not provably the cache's are never removed
    (``report.left_alone``). A file or a shard folder as ``location`` is a PipelineError.
    """
    location = str(location) if location is not None else cache_root()
    store = _Store(location)
    _explain_location(store, location)
    report = VerifyReport(location)
    for folder in _cache_folders(store, store.root, report):
        _verify_folder(store, folder, report, drop)
    return report


def _verify_folder(store: _Store, folder: _Folder, report: VerifyReport, drop: bool) -> None:
    report.folders += 1
    path = folder.path

    def problem(relative: str, text: str) -> None:
        report.problems.append((store.url(f"{path}/{relative}"), text))
        if drop:
            store.remove(f"{path}/{relative}")
            report.dropped += 1

    misplaced = [p for p in folder.others if p.endswith(".npy") and _has_trailer(store.read(f"{path}/{p}"))]
    report.entries += len(folder.entries) + len(misplaced)
    report.left_alone += [(store.url(f"{path}/{p}"), NOT_AN_ENTRY) for p in folder.others if p not in misplaced]
    if folder.key_problem:
        problem("key.json", f"{folder.key_problem}: its {len(folder.entries) + len(misplaced)} entries cannot be "
                            f"checked")
        for relative in folder.entries + misplaced:
            problem(relative, "in a cache folder whose key.json is damaged: cannot be checked")
    else:
        cache = FeatureCache(store.url(path), folder.key, store_key=False)
        for relative in folder.entries:
            shard, digest = ENTRY.fullmatch(relative).groups()
            found = "misplaced: not named <sha1[:2]>/<sha1>.npy" if shard != digest[:2] else cache.check(digest)[1]
            if found is None:
                report.sound += 1
            else:
                problem(relative, found)
        for relative in misplaced:
            problem(relative, "misplaced: not named <sha1[:2]>/<sha1>.npy")
    for relative in folder.temporaries:
        if store.is_stale(f"{path}/{relative}"):
            problem(relative, "temporary file left by an interrupted write")
    if drop and report.dropped:
        store.remove_if_empty(path)
