"""Reading the raw data: local files or a Hub dataset, as Arrow-backed datasets, and the checks
on what was read (splits, columns, text cells). A file that does not parse is named with its
line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ftcli.config import DATA_FORMATS, DataConfig
from ftcli.data import labels
from ftcli.errors import FtcliError, is_disk_full, shorten
from ftcli.quiet import quiet

if TYPE_CHECKING:  # pragma: no cover
    import datasets


def load_hub_dataset(path: str, name: str | None, revision: str | None):
    """`datasets.load_dataset` for a Hub dataset (a seam: tests patch it)."""
    from datasets import load_dataset

    try:
        return load_dataset(path, name, revision=revision)
    except Exception as exc:  # noqa: BLE001 - every Hub failure gets the same advice
        raise FtcliError(
            f"data.path: cannot load Hub dataset {path!r}{f' ({name})' if name else ''}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; check the name and your network, "
            "or use data.files with local files"
        ) from None


RAW_BATCH_ROWS = 10_000
"""Rows per record batch of a raw split's Arrow file (datasets writes 1,000). Opening the file
touches each batch's header, and the kernel maps 64 KB around each touch: with 1,000-row batches
that made a million rows' file count ~60 MB in resident memory before a row was read."""

RAW_BATCH_BYTES = 16 << 20
"""...and at most about this much text per batch: tokenizing reads a whole batch at a time (see
`raw_batches`), and 10,000 documents of 10 KB would be 100 MB of it."""


def _batch_rows(file: Path) -> int:
    """Rows per raw record batch for `file`: RAW_BATCH_ROWS, fewer when its first MiB says its rows
    are long (an estimate from the line count: a quoted CSV cell may hold several lines)."""
    try:
        with open(file, "rb") as f:
            head = f.read(1 << 20)
    except OSError:
        return RAW_BATCH_ROWS
    if Path(file).suffix.lower() == ".parquet" or not head:
        return RAW_BATCH_ROWS
    per_row = len(head) / max(1, head.count(b"\n"))
    return int(max(100, min(RAW_BATCH_ROWS, RAW_BATCH_BYTES // per_row)))


def load_raw(data: DataConfig, cache_dir: Path | None = None) -> dict[str, datasets.Dataset]:
    """The raw splits, as Arrow-backed datasets."""
    if data.path is not None:
        return dict(load_hub_dataset(data.path, data.name, data.revision))
    out = {}
    for split, file in data.files.items():
        suffix = Path(file).suffix.lower()
        kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
        if suffix in (".csv", ".tsv"):
            # CSV has no types: a text cell is the text written, so "NA", "None" or "null" and
            # "007" stay as written. Only the label column reads missing-value words as missing.
            kwargs.update(keep_default_na=False, na_values={data.label_column: MISSING_WORDS},
                          converters={col: str for col in data.text_columns})
            # The CSV reader fills a short row with nulls without a word: check every row's
            # field count first (a cache miss only; ~1 s per 250k rows).
            located = locate_parse_error(Path(file), suffix)
            if located:
                raise FtcliError(f"{file}: {located}")
        try:
            with quiet("datasets"):  # it logs a full traceback when a file fails to parse; ftcli says it in one line
                from datasets import load_dataset

                ds = load_dataset(
                    DATA_FORMATS[suffix], data_files=str(file), split="train",
                    cache_dir=str(cache_dir) if cache_dir else None, writer_batch_size=_batch_rows(Path(file)), **kwargs,
                )
        except Exception as exc:  # noqa: BLE001 - parse errors of any kind
            if is_disk_full(exc):
                raise  # not the file's fault: ftcli.data.cache says where the disk is full
            if "corresponds to no data" in str(exc) or (Path(file).is_file() and Path(file).stat().st_size == 0):
                raise FtcliError(f"{file}: split {split!r} has no rows; add data or remove the split") from None
            located = locate_parse_error(Path(file), suffix)
            if located:
                raise FtcliError(f"{file}: {located}") from None
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise FtcliError(f"{file}: cannot read it as {suffix[1:]} ({detail[:200]}); fix the file") from None
        out[split] = _plain_json_column(ds, data.label_column)
    return out


def raw_batches(ds: datasets.Dataset) -> Iterator[pa.RecordBatch]:
    """The split's rows in order as Arrow record batches. From its Arrow files with plain reads
    when it is the files as loaded (each batch is freed after use): pages of a memory-mapped table
    that a scan touched stay resident, the whole file's worth for long documents. Else (in memory,
    or a selection of rows) from its table."""
    import pyarrow as pa

    files = [f["filename"] for f in ds.cache_files]
    # A loaded split's table is its files (datasets writes shards of 500 MB, in order), with the
    # features put into the schema's metadata.
    changed = [op for op, *_ in getattr(ds.data, "replays", None) or () if op != "replace_schema_metadata"]
    as_loaded = (files and getattr(ds, "_indices", None) is None and not changed
                 and ds.data.num_rows == ds.num_rows == _rows_in(files))
    if as_loaded:
        for file in files:
            with pa.OSFile(file) as f:
                yield from pa.ipc.open_stream(f)
    else:  # in memory, or a selection of rows
        for table in ds.with_format("arrow").iter(batch_size=RAW_BATCH_ROWS):
            yield from table.to_batches()


def _rows_in(files: list[str]) -> int:
    """Rows of Arrow stream files, from their batches' headers (no data read)."""
    import pyarrow as pa

    rows = 0
    for file in files:
        with pa.memory_map(file) as f:
            reader = pa.ipc.open_stream(f)
            for batch in reader:
                rows += batch.num_rows
    return rows


MISSING_WORDS = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                 "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]
"""Cells of a CSV label column read as "no label" (pandas' defaults, which text cells do not get)."""


def _plain_json_column(ds: datasets.Dataset, column: str) -> datasets.Dataset:
    """A JSON Lines column whose rows mix kinds (a list in one row, a string in another) comes as
    Arrow's JSON type, each cell its JSON text. Give it the form a CSV column of the same labels
    has (a list stays a JSON list, a string becomes itself), so one rule reads both."""
    import pyarrow as pa

    if column not in ds.column_names or getattr(ds.data.column(column).type, "extension_name", "") != "arrow.json":
        return ds
    from datasets import Dataset

    cells = _json_cells(ds.data.column(column))
    plain = pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in cells], type=pa.string())
    table = ds.data.table
    return Dataset(table.set_column(table.column_names.index(column), column, plain))


def _json_cells(column) -> list:
    """The values of a column of Arrow's JSON type (each cell stored as its JSON text)."""
    return [None if text is None else json.loads(text) for chunk in column.chunks for text in chunk.storage.to_pylist()]


def locate_parse_error(path: Path, suffix: str) -> str | None:
    """Where a text data file that failed to load is broken, in words ("line 7: 4 fields, but the
    header has 3 ..."), or None when this finds nothing: `datasets` only says that generating the
    dataset failed. Reads the file once more, as the standard library parses it."""
    import csv

    try:
        if suffix in (".csv", ".tsv"):
            delimiter = "\t" if suffix == ".tsv" else ","
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f, delimiter=delimiter)
                header = next(reader, None)
                if header is None:
                    return None
                for row in reader:
                    if row and len(row) != len(header):
                        name = "tab" if delimiter == "\t" else "comma"
                        return (f"line {reader.line_num}: {len(row)} fields, but the header has {len(header)} "
                                f"({', '.join(header)}); quote fields that contain a {name} or a line break, "
                                "or fix the row")
        elif suffix == ".jsonl" or suffix == ".json":
            with open(path, encoding="utf-8") as f:
                if f.read(64).lstrip().startswith("["):
                    return None  # one JSON array, not JSON Lines: datasets' own message says more
                f.seek(0)
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError as exc:
                        return f"line {number}: not valid JSON ({exc.msg}, character {exc.pos + 1}); fix the line"
                    if not isinstance(record, dict):
                        return f"line {number}: a JSON Lines row must be an object {{\"column\": value, ...}}"
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte {exc.start}); save the file as UTF-8"
    except (OSError, csv.Error) as exc:
        return f"cannot read it ({exc})"
    return None


def check_splits(data: DataConfig, *splits: str) -> None:
    """Fail early, before any tokenization, when a needed split is not among local data files."""
    if data.files is None:
        return  # a Hub dataset's splits are known once it is loaded
    for split in splits:
        if split == data.validation_name and data.holdout is not None:
            continue  # held out of the training split when the data is prepared
        if split not in data.files:
            raise FtcliError(
                f"split {split!r} is not in data.files (available: {', '.join(data.files)}); "
                f"add it to data.files or fix the split name"
            )


def check_columns(data: DataConfig, raw: dict[str, datasets.Dataset], labels_optional: bool = False) -> None:
    problems = []
    for split, ds in raw.items():
        where = labels.split_source(data, split)
        if ds.num_rows == 0:
            problems.append(f"{where}: split {split!r} has no rows; add data or remove the split")
            continue
        needed = data.text_columns if labels_optional else (*data.text_columns, data.label_column)
        for col in needed:
            if col not in ds.column_names:
                setting = "data.label_column" if col == data.label_column else "data.text_columns"
                problems.append(
                    f"{where}: column {col!r} not found (columns: {', '.join(ds.column_names)}); fix {setting}"
                )
        present = [col for col in data.text_columns if col in ds.column_names]
        if present:
            problems += _text_columns_problems(ds, present, where)
    if problems:
        raise FtcliError("\n".join(problems))


def _text_columns_problems(ds: datasets.Dataset, columns: list[str], where: str) -> list[str]:
    """`_text_problems` of each text column. A string column is checked batch by batch with plain
    reads (`raw_batches`): a scan of the memory-mapped table would leave every page of the texts
    resident, the whole file's worth for long documents."""
    import pyarrow as pa

    problems, streamed = [], []
    for col in columns:
        kind = ds.data.column(col).type  # the schema's: no data read
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            streamed.append(col)
        else:
            problems += _text_problems(ds.data.column(col), col, where)
    if streamed:
        flags = {col: [] for col in streamed}
        for batch in raw_batches(ds):
            for col in streamed:
                flags[col].append(_empty_texts(batch.column(batch.schema.get_field_index(col))))
        for col in streamed:
            problems += _empty_rows(pa.chunked_array(flags[col], type=pa.bool_()).combine_chunks(), col, where)
    return problems


def _empty_texts(column):
    """Whether each text is empty: missing, or only white space (booleans only: no trimmed copy of
    the texts)."""
    import pyarrow.compute as pc

    return pc.fill_null(pc.or_(pc.equal(pc.utf8_length(column), 0), pc.utf8_is_space(column)), True)


def _empty_rows(empty, name: str, where: str) -> list[str]:
    return labels.row_lines(empty, lambda row: f"{where}: row {row + 1}: column {name!r} is empty; fill in or drop the row")


def _text_problems(column, name: str, where: str) -> list[str]:
    """What is wrong with a text column: not text, or rows without text (missing, or only white
    space, which tokenizes to nothing). Numbers are refused rather than turned into text: a JSON
    or Parquet file that stores a column as numbers more likely names the wrong column (an id)
    than a text; CSV cells are read as the text written, so there it cannot happen."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(column.type):  # e.g. a pandas category written to Parquet
        column = pa.chunked_array([c.dictionary_decode() for c in column.chunks], type=column.type.value_type)
    if pa.types.is_null(column.type):  # no row has a value
        column = pa.chunked_array([pa.nulls(len(c), pa.string()) for c in column.chunks], type=pa.string())
    kind = column.type
    if getattr(kind, "extension_name", "") == "arrow.json":  # JSON Lines rows of mixed kinds
        cells = _json_cells(column)
        odd = pa.array([v is not None and not isinstance(v, str) for v in cells])
        return labels.row_lines(odd, lambda row: (
            f"{where}: row {row + 1}: column {name!r} holds {shorten(cells[row])}, not a text; write it as a "
            "string (in quotes) or fix data.text_columns"))
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        shown = "numbers" if pa.types.is_integer(kind) or pa.types.is_floating(kind) else f"values of type {kind}"
        return [f"{where}: column {name!r} holds {shown}, not texts; fix data.text_columns, or write the texts as "
                "strings (in quotes)"]
    return _empty_rows(_empty_texts(column.combine_chunks()), name, where)
