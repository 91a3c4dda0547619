"""User data listed in a manifest: a CSV or Parquet table of image files, their labels and splits.

``data.source: manifest``, ``data.root``: the table, by suffix ``.csv`` or ``.parquet``/``.pq``
(Parquet is read with pyarrow). Rules:

* columns ``path``, ``label`` and ``split`` are required (others are ignored); a CSV has them in
  its header row;
* ``path``: the image file; a relative path is relative to the manifest's folder. Its id is the
  path as written, ``\\`` turned into ``/`` and ``.`` segments and repeated slashes removed
  (``./a//b.png`` is ``a/b.png``);
* ``label``: the class name, as text (a Parquet number ``3`` is the class ``"3"``); class order is
  the sorted names, the same in every split;
* ``split``: ``train``, ``query`` or ``gallery`` (case and surrounding spaces ignored); the splits
  are used as given (``workers.datasets.splits.split_as_assigned``: ``data.query_size`` and
  ``data.gallery_size`` do not apply, ``data.train_size`` caps train, an empty split is refused,
  ``open_set`` requires train classes disjoint from query/gallery classes);
* refused before any image is decoded, each naming the rows (numbered from 1, the first row
  after a CSV's header): a missing column, an empty path or label, a split value other than the
  three, a file listed twice (two rows naming the same file, however written), a file that does
  not exist, and a file outside the manifest's folder (an absolute path elsewhere, ``..`` leading
  out, or a symbolic link whose target lies outside: the path with every link resolved must be
  below the manifest's folder, itself resolved) unless ``data.allow_paths_outside_root`` is true.
  A manifest is often made by another tool or person; the folder it sits in bounds what it can
  make a search read;
* files that exist but cannot be decoded are skipped up to ``data.max_bad_fraction``
  (``workers.datasets.decoding``).
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path, PurePosixPath

import numpy as np

from workers.datasets.errors import DataError
from workers.datasets.image_folder import load_labelled_files
from workers.datasets.listing import SPLIT_NAMES, LabelledFiles
from workers.datasets.registry import register_source
from workers.datasets.types import DataRequest, RetrievalData

COLUMNS = ("path", "label", "split")
CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
SHOWN = 5  # rows named in an error


@register_source("manifest")
def load_manifest_source(request: DataRequest) -> RetrievalData:
    """The manifest's files, decoded once, in the splits it assigns (module rules)."""
    if request.root is None:
        raise DataError("data.root is required for data.source 'manifest': the CSV or Parquet file with columns "
                        f"{list(COLUMNS)}")
    listing = list_manifest(request.root, allow_outside=request.allow_paths_outside_root)
    return load_labelled_files(f"manifest:{request.root}", listing, request)


def list_manifest(manifest: str | Path, allow_outside: bool = False) -> LabelledFiles:
    """The files of ``manifest`` with labels, ids and splits, checked by the module rules; ``allow_outside``:
    ``data.allow_paths_outside_root``."""
    where = f"data.root={str(manifest)!r}"
    manifest = Path(manifest).expanduser().absolute()
    if not manifest.is_file():
        raise DataError(f"{where} is not a file; give the manifest: a CSV or Parquet file with columns {list(COLUMNS)}")
    columns = read_table(manifest, where)
    paths, labels, splits = (columns[name] for name in COLUMNS)
    if not paths:
        raise DataError(f"{where} has no rows; list one image per row with columns {list(COLUMNS)}")
    _refuse_empty_values(where, "path", paths)
    _refuse_empty_values(where, "label", labels)
    splits = [value.strip().lower() for value in splits]
    _refuse_unknown_splits(where, splits)
    ids = [_normalised(path) for path in paths]
    files = [os.path.normpath(manifest.parent / path) for path in ids]
    _refuse_duplicates(where, paths, files)
    _refuse_missing_files(where, paths, files)
    if not allow_outside:
        _refuse_files_outside(where, paths, files, manifest.parent)
    for split in SPLIT_NAMES:
        if split not in splits:
            raise DataError(f"{where} has no rows with split {split!r}; every split needs images (the manifest's "
                            f"splits are used as given): add {split} rows")
    class_names = tuple(sorted(set(labels)))
    label_of = {name: label for label, name in enumerate(class_names)}
    return LabelledFiles(
        description=f"manifest {manifest}",
        paths=np.array(files),
        ids=np.array(ids),
        labels=np.array([label_of[name] for name in labels], dtype=np.int64),
        class_names=class_names,
        splits=np.array(splits),
    )


def read_table(manifest: Path, where: str) -> dict[str, list[str]]:
    """The three columns of a CSV or Parquet manifest as text (an absent value is ``""``)."""
    suffix = manifest.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return _read_csv(manifest, where)
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(manifest, where)
    raise DataError(f"{where} is neither CSV nor Parquet: name it *{CSV_SUFFIXES[0]} or "
                    f"*{PARQUET_SUFFIXES[0]} (allowed suffixes: {list(CSV_SUFFIXES + PARQUET_SUFFIXES)})")


def _read_csv(manifest: Path, where: str) -> dict[str, list[str]]:
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, skipinitialspace=True)
            header = [name.strip() for name in reader.fieldnames or []]
            _refuse_missing_columns(where, header)
            reader.fieldnames = header
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{where} could not be read as CSV ({error}); save it as UTF-8 CSV with a header row "
                        f"naming the columns {list(COLUMNS)}") from error
    return {name: [_text(row.get(name)) for row in rows] for name in COLUMNS}


def _read_parquet(manifest: Path, where: str) -> dict[str, list[str]]:
    try:
        import pyarrow.parquet as parquet
    except ImportError as error:
        raise DataError(f"{where} is Parquet, which needs pyarrow: `pip install pyarrow`, or save the manifest as "
                        "CSV") from error
    try:
        _refuse_missing_columns(where, parquet.read_schema(manifest).names)
        table = parquet.read_table(manifest, columns=list(COLUMNS))
    except DataError:
        raise
    except Exception as error:  # pyarrow raises its own ArrowInvalid/OSError family for damaged files
        raise DataError(f"{where} could not be read as Parquet ({type(error).__name__}: {error}); write it again, "
                        "or save the manifest as CSV") from error
    return {name: [_text(value) for value in table.column(name).to_pylist()] for name in COLUMNS}


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _normalised(path: str) -> str:
    """The id of a manifest path: ``/``-separated, ``.`` segments and repeated slashes removed."""
    return PurePosixPath(path.replace("\\", "/")).as_posix()


def _rows(positions: list[int]) -> str:
    shown = ", ".join(str(position + 1) for position in positions[:SHOWN])
    return f"row{'s' if len(positions) > 1 else ''} {shown}{' ...' if len(positions) > SHOWN else ''}"


def _refuse_missing_columns(where: str, header: list[str]) -> None:
    missing = [name for name in COLUMNS if name not in header]
    if missing:
        raise DataError(f"{where} lacks the column(s) {missing} (it has {list(header)}); a manifest needs the columns "
                        f"{list(COLUMNS)}: path (relative to the manifest's folder or absolute), label (the class "
                        f"name) and split ({'/'.join(SPLIT_NAMES)})")


def _refuse_empty_values(where: str, column: str, values: list[str]) -> None:
    empty = [position for position, value in enumerate(values) if not value]
    if empty:
        raise DataError(f"{where}: {len(empty)} row(s) have an empty {column} ({_rows(empty)}, counted from 1 after "
                        f"the header); fill them in or remove those rows")


def _refuse_unknown_splits(where: str, splits: list[str]) -> None:
    unknown: dict[str, list[int]] = defaultdict(list)
    for position, split in enumerate(splits):
        if split not in SPLIT_NAMES:
            unknown[split].append(position)
    if unknown:
        listed = "; ".join(f"{value!r} in {_rows(positions)}" for value, positions in list(unknown.items())[:SHOWN])
        raise DataError(f"{where}: column split holds values other than {list(SPLIT_NAMES)}: {listed} (rows counted "
                        "from 1 after the header); write one of the three in every row")


def _refuse_duplicates(where: str, paths: list[str], files: list[str]) -> None:
    rows_of: dict[str, list[int]] = defaultdict(list)
    for position, file in enumerate(files):
        rows_of[file].append(position)
    repeated = [positions for positions in rows_of.values() if len(positions) > 1]
    if repeated:
        listed = "; ".join(f"{paths[positions[0]]!r} in {_rows(positions)}" for positions in repeated[:SHOWN])
        raise DataError(f"{where}: {len(repeated)} file(s) are listed more than once: {listed} (rows counted from 1 "
                        "after the header); list each file once, in one split")


def _refuse_missing_files(where: str, paths: list[str], files: list[str]) -> None:
    missing = [position for position, file in enumerate(files) if not os.path.isfile(file)]
    if missing:
        listed = "; ".join(f"{paths[position]!r} (row {position + 1})" for position in missing[:SHOWN])
        raise DataError(f"{where}: {len(missing)} of the {len(files)} listed files do not exist (or are not files), "
                        f"e.g. {listed}; relative paths are read from the manifest's folder. Fix the paths or remove "
                        "those rows")


def _refuse_files_outside(where: str, paths: list[str], files: list[str], folder: Path) -> None:
    root = os.path.realpath(folder)
    outside = [position for position, file in enumerate(files)
               if os.path.commonpath([root, os.path.realpath(file)]) != root]
    if outside:
        listed = "; ".join(f"{paths[position]!r} (row {position + 1})" for position in outside[:SHOWN])
        raise DataError(f"{where}: {len(outside)} of the {len(files)} listed files lie outside the manifest's folder "
                        f"{folder} (an absolute path, '..' or a symbolic link leading out), e.g. {listed}; rows "
                        "counted from 1 after the header. Move the files (or the manifest) so that they lie below "
                        "its folder, or set data.allow_paths_outside_root: true to read them where they are")
