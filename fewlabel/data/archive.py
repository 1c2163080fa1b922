"""Tarballs extracted safely into the per-user cache: all or nothing (a temp folder, then a
rename), stale temp folders of killed runs removed."""
from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

from fewlabel.errors import PipelineError
from fewlabel.progress import bytes_bar


def extract(tarballs: list[Path], dest: str | Path, progress: bool = False) -> None:
    """Extract ``tarballs`` into the folder ``dest`` with tarfile's ``data`` filter, which refuses
    members that would land outside it (absolute paths, ``..``, links pointing out) and devices."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for tarball in tarballs:
        bar = bytes_bar(f"extracting {Path(tarball).name}", Path(tarball).stat().st_size, 0, progress)
        try:
            with tarfile.open(tarball, "r:*") as tar:
                position = 0
                for member in tar:
                    try:
                        tar.extract(member, dest, set_attrs=not member.isdir(), filter="data")
                    except tarfile.FilterError as error:
                        raise PipelineError(f"{tarball}: member '{member.name}' points outside the extraction "
                                            f"folder or is not a plain file or folder ({error}); refusing to "
                                            f"extract this tarball (is it really a VOC tarball?)") from error
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


def extract_cached(tarballs: list[Path], final: Path, check: Callable[[Path], None], progress: bool = True) -> None:
    """Extract into a temp folder beside ``final``, then rename it to ``final`` (all or nothing).

    ``check(folder)`` raises if the extracted folder is not what was expected; nothing is kept then.
    """
    root = final.parent
    _remove_stale_temps(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=root))
    try:
        extract(tarballs, tmp, progress)
        check(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise  # a real failure; another run finishing first is fine
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
