"""A labelled table written to ``--out``: the path checked before any work, rows appended chunk
by chunk to a CSV or Parquet file (by its suffix), renamed into place only at the end."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pandas as pd

from fewlabel.errors import PipelineError
from fewlabel.io import atomic_path

OUTPUT_SUFFIXES = (".csv", ".parquet")


def check_output_path(path: str) -> None:
    """A PipelineError naming ``--out`` and what to do unless a table can be written to ``path``:
    a CSV or Parquet name, not a folder, in a folder that exists (it is not created: a typo
    in it would otherwise scatter outputs) and that this user can write to."""
    target = Path(path)
    if target.suffix.lower() not in OUTPUT_SUFFIXES:
        raise PipelineError(f"--out {path}: must end in {' or '.join(OUTPUT_SUFFIXES)} (CSV or Parquet)")
    if target.is_dir():
        raise PipelineError(f"--out {path}: is a folder; give a file name, e.g. --out {target / 'predictions'}"
                            f"{target.suffix.lower()}")
    folder = target.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise PipelineError(f"--out {path}: the folder {folder} {what}; create it first (mkdir -p {folder}) "
                            f"or write the table elsewhere")
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{target.name}.", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise PipelineError(f"--out {path}: cannot write in {folder} ({error.strerror or error}); choose a "
                            f"folder you can write to") from error


class TableWriter:
    """Appends tables to one CSV or Parquet file (by ``path``'s suffix), chunk after chunk.

    Rows go to a temporary file beside ``path``, renamed onto it when the ``with`` block ends
    without error; ``path`` None writes nothing. Made before any work: a path that cannot be
    written (see :func:`check_output_path`) raises a PipelineError at once.
    """

    def __init__(self, path: str | None):
        self.path, self.rows = path, 0
        if path is not None:
            check_output_path(path)
        self.parquet = path is not None and Path(path).suffix.lower() == ".parquet"
        if self.parquet:
            try:
                import pyarrow.parquet  # noqa: F401
            except ImportError as error:
                raise PipelineError(f"--out {path}: writing Parquet needs pyarrow, which requirements.txt "
                                    f"installs (pip install -r requirements.txt); or write a .csv") from error

    def __enter__(self):
        self._atomic = atomic_path(self.path) if self.path is not None else contextlib.nullcontext()
        self.tmp = self._atomic.__enter__()
        self._parquet = None
        return self

    def write(self, table: pd.DataFrame) -> None:
        if self.path is None or table.empty:
            return
        if self.parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq
            batch = pa.Table.from_pandas(table, preserve_index=False)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.tmp, batch.schema)
            self._parquet.write_table(batch)
        else:
            table.to_csv(self.tmp, mode="a" if self.rows else "w", header=not self.rows, index=False,
                         float_format="%.6g")
        self.rows += len(table)

    def __exit__(self, *exc):
        if self._parquet is not None:
            self._parquet.close()
        return self._atomic.__exit__(*exc)
