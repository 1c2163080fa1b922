"""Verifying a whole feature cache (``fewlabel cache verify [--drop]``): every entry's checksum
and vector, every folder's key, stale temporary files; optionally dropping what is not sound."""
from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fewlabel.errors import PipelineError
from fewlabel.features.cache import (FEATURE_CACHE_ENV, STALE_TEMP_SECONDS, VERIFY_HINT, FeatureCache, _filesystem,
                                     cache_root, is_url, key_digest)


@dataclass
class VerifyReport:
    """What :func:`verify_cache` found: ``problems`` lists (file, problem) for every entry (or
    folder, or leftover temporary file) that is not sound; ``dropped`` counts those removed."""
    location: str
    folders: int = 0
    entries: int = 0
    sound: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)
    dropped: int = 0

    @property
    def clean(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        text = (f"{self.location}: {self.folders} cache folders, {self.entries} entries, {self.sound} sound, "
                f"{len(self.problems)} problems")
        if self.problems:
            kinds = Counter(problem.split(":")[0].split(" (")[0] for _, problem in self.problems)
            text += " (" + ", ".join(f"{n} {kind}" for kind, n in kinds.most_common()) + ")"
            text += f"; {self.dropped} dropped" if self.dropped else f"; `{VERIFY_HINT}` drops them"
        return text


class _Store:
    """Listing and deleting in a cache root: a folder or an fsspec URL."""

    def __init__(self, location: str):
        self.location = location.rstrip("/") or location
        self.fs, self.root = _filesystem(location) if is_url(location) else (None, location)

    def url(self, path: str) -> str:
        """A location for FeatureCache from a path listed by the file system."""
        return path if self.fs is None else self.fs.unstrip_protocol(path)

    def exists(self, path: str) -> bool:
        return Path(path).exists() if self.fs is None else self.fs.exists(path)

    def subfolders(self, path: str) -> list[str]:
        if self.fs is None:
            return sorted(str(p) for p in Path(path).iterdir() if p.is_dir())
        return sorted(item["name"] for item in self.fs.ls(path, detail=True) if item["type"] == "directory")

    def entries(self, path: str) -> list[str]:
        if self.fs is None:
            return sorted(str(p) for p in Path(path).glob("*/*.npy"))
        return sorted(self.fs.glob(f"{path.rstrip('/')}/*/*.npy"))

    def read(self, path: str) -> bytes | None:
        try:
            return Path(path).read_bytes() if self.fs is None else self.fs.cat_file(path)
        except (FileNotFoundError, OSError):
            return None

    def stale_temporaries(self, path: str) -> list[str]:
        if self.fs is not None:  # object stores: a put is whole, nothing is left behind
            return []
        cutoff = time.time() - STALE_TEMP_SECONDS
        found = [*Path(path).glob(".*.tmp"), *Path(path).glob("*/.*.tmp")]
        return sorted(str(p) for p in found if p.stat().st_mtime < cutoff)

    def remove(self, path: str, folder: bool = False) -> None:
        if self.fs is None:
            if folder:
                import shutil
                shutil.rmtree(path)
            else:
                Path(path).unlink(missing_ok=True)
        else:
            self.fs.rm(path, recursive=folder)


def verify_cache(location: str | Path | None = None, drop: bool = False) -> VerifyReport:
    """Check every entry of a feature cache: a cache root (``$FEWLABEL_FEATURE_CACHE`` or the
    default when ``location`` is None) or one cache folder; a folder or an fsspec URL.

    An entry is sound when its checksum matches (payload, image digest and the folder's key)
    and it holds a finite float32 vector; a folder is sound when its ``key.json`` matches the
    hash in its name (else none of its entries can be checked). ``drop=True`` removes what
    is not sound (a folder with a bad key.json whole) and temporary files left by killed
    writers; each vector dropped is extracted again when next needed.
    """
    location = str(location) if location is not None else cache_root()
    store = _Store(location)
    if not store.exists(store.root):
        raise PipelineError(f"{location}: no feature cache there (not found); give the cache root "
                            f"(${FEATURE_CACHE_ENV}, or <user cache>/features) or one of its folders")
    report = VerifyReport(location)
    root = store.root.rstrip("/")
    folders = [root] if store.exists(f"{root}/key.json") else store.subfolders(root)
    for folder in folders:
        report.folders += 1
        entries = store.entries(folder)
        report.entries += len(entries)
        key_problem, key = None, None
        content = store.read(f"{folder}/key.json")
        try:
            key = json.loads(content) if content is not None else None
        except ValueError:
            key_problem = "key.json is damaged (not JSON)"
        if content is None:
            key_problem = "key.json is missing"
        elif key is not None:
            name = re.search(r"-([0-9a-f]{16})$", folder)
            if not isinstance(key, dict) or (name and key_digest(key)[:16] != name.group(1)):
                key_problem = "key.json does not match the hash in the folder's name (damaged)"
        if key_problem:
            report.problems.append((store.url(f"{folder}/key.json"),
                                    f"{key_problem}: its {len(entries)} entries cannot be checked"))
            if drop:
                store.remove(folder, folder=True)
                report.dropped += len(entries) + 1
            continue
        cache = FeatureCache(store.url(folder), key, store_key=False)
        for entry in entries:
            digest = entry.rsplit("/", 1)[-1][:-len(".npy")]
            parent = entry.rsplit("/", 2)[-2]
            if not re.fullmatch(r"[0-9a-f]{40}", digest) or parent != digest[:2]:
                problem = "misplaced: not named <sha1[:2]>/<sha1>.npy"
            else:
                _, problem = cache.check(digest)
            if problem is None:
                report.sound += 1
                continue
            report.problems.append((store.url(entry), problem))
            if drop:
                store.remove(entry)
                report.dropped += 1
        for temporary in store.stale_temporaries(folder):
            report.problems.append((temporary, "temporary file left by an interrupted write"))
            if drop:
                store.remove(temporary)
                report.dropped += 1
    return report
