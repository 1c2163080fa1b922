"""Files in general: atomic writes, the per-user cache folder, reading a CSV, JSON or list file
with a clear error. The formats of the files passed between stages live in :mod:`fewlabel.artifacts`."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import platformdirs

from fewlabel.errors import PipelineError

CACHE_ENV = "FEWLABEL_CACHE_DIR"
# The first bytes of the image formats TensorFlow decodes (JPEG, PNG, GIF, BMP, JPEG XL; WebP below)
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"\xff\x0a",
                b"\x00\x00\x00\x0cJXL \r\n\x87\n")


def is_image_header(head: bytes) -> bool:
    """Whether a file's first 16 bytes start an image (JPEG, PNG, GIF, BMP, WebP or JPEG XL)."""
    return head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Readers never see a half-written file, and a crash leaves the previous version intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp",
                                    dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it the usual mode
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def replace_dir(path: str | Path, files: dict[str, Callable[[Path], None]]) -> None:
    """Write a directory of files (name -> writer) to a temp dir, then swap it in whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        for name, writer in files.items():
            writer(tmp / name)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            _rmtree(old)
    finally:
        if tmp.exists():
            _rmtree(tmp)


def _rmtree(path: Path) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def user_cache_dir(*parts: str) -> Path:
    """The per-user cache (downloads, extracted data, per-image features).

    ``$FEWLABEL_CACHE_DIR`` overrides it; else ``$XDG_CACHE_HOME/fewlabel`` or ``~/.cache/fewlabel`` on Linux
    (platformdirs' user cache folder elsewhere).
    """
    # platformdirs: $XDG_CACHE_HOME/fewlabel or ~/.cache/fewlabel on Linux, each system's own elsewhere
    root = os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("fewlabel", appauthor=False)
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_csv(path: str | Path, required: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV a previous stage wrote, with a clear error if it is missing or lacks columns."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: not found; run the stage that writes it first (dvc repro)")
    frame = pd.read_csv(path, dtype={"image_id": str})
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise PipelineError(f"{path}: missing column(s) {', '.join(missing)}; rerun the stage that writes it")
    return frame


def read_lines(path: str | Path, what: str = "a list") -> list[str]:
    """The non-empty lines of a UTF-8 text file (a byte order mark, CRLF and ``#`` comments
    allowed), each stripped; e.g. image ids or paths, one per line."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as error:
        raise PipelineError(f"{path}: cannot read {what} ({error.strerror or error}); give a text file "
                            f"with one entry per line") from error
    except UnicodeDecodeError as error:
        raise PipelineError(f"{path}: not a UTF-8 text file ({error.reason} at byte {error.start}); save "
                            f"{what} as UTF-8, one entry per line") from error
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: not found; run the stage that writes it first (dvc repro)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PipelineError(f"{path}: is not valid JSON ({error}); rerun the stage that writes it") from error


def write_csv_dir(path: str | Path, frames: dict[str, pd.DataFrame]) -> None:
    """Replace directory ``path`` by one ``<name>.csv`` per frame (e.g. one plot per class)."""
    replace_dir(path, {f"{name}.csv": (lambda target, frame=frame: frame.to_csv(target, index=False,
                                                                                 float_format="%.6g"))
                       for name, frame in frames.items()})


def file_md5(path: str | Path) -> str:
    """The md5 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
