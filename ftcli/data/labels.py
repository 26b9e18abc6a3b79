"""Labels: their names, and each row's label id, checked row by row.

Label names come from `model.labels`, a Hub dataset's class names, or the sorted distinct values
of the training labels; `[]` means regression. Every bad row is reported (up to MAX_ROW_ERRORS,
then a count), each naming the file and row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ftcli.config import DataConfig, ModelConfig
from ftcli.errors import FtcliError, shorten

if TYPE_CHECKING:  # pragma: no cover
    import datasets


UNLABELED = -1
"""Label id of rows without a label (e.g. GLUE test splits, where the label is hidden as -1)."""


def is_multi_label(model: ModelConfig, data: DataConfig, raw: dict[str, datasets.Dataset]) -> bool:
    """`model.problem_type`, or for `auto`: whether the label column holds lists (or strings to
    split by `data.label_separator`)."""
    import pyarrow as pa

    train = raw.get(data.train_split) or next(iter(raw.values()))
    listed = False
    if data.label_column in train.column_names:
        column = train.data.column(data.label_column)
        listed = pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
        if (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)) and data.label_separator is None:
            listed = bool(json_list_rows(column.combine_chunks()))  # JSON lists in CSV cells (or mixed JSON Lines)
    if model.problem_type == "single_label" and (listed or data.label_separator):
        raise FtcliError(f"{split_source(data, data.train_split)}: column {data.label_column!r} holds label lists "
                         "but model.problem_type is single_label; set it to multi_label or auto")
    if model.is_regression:
        return False
    return model.problem_type == "multi_label" or listed or data.label_separator is not None


DIGITS = "^[0-9]+$"
"""A label written as a number: a label id, where the label names are not numbers themselves."""


@dataclass
class LabelLists:
    """A multi-label column, flattened: every row's labels in row order (as strings; null for a
    null inside a list), and the row each came from."""

    values: Any  # pa.StringArray
    rows: Any  # np.ndarray of int64
    missing: Any  # np.ndarray of bool: the row has no label value at all
    blank_strings: Any  # np.ndarray of bool: the row is a non-blank string that holds no label once split
    kind: str  # what the labels are written as: "str", "int", "none" (no labels) or "mixed"


def label_lists(data: DataConfig, column, where: str) -> LabelLists:
    """Each row's labels: a list column, strings split on `data.label_separator`, JSON lists in
    CSV cells, or one label a row. With Arrow's kernels, not row by row in Python."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    n = len(col)
    missing = np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False), dtype=bool)
    blank = np.zeros(n, dtype=bool)
    is_string = pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
    if is_string and data.label_separator is None and (lists := json_list_rows(col)):  # JSON lists in CSV cells
        return _json_label_lists(col, lists, missing, where)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        values, rows = pc.list_flatten(col), pc.list_parent_indices(col)
    elif is_string and data.label_separator is not None:
        if lists := json_list_rows(col):  # a JSON list in a separated column: `[]` is no labels, not a label
            texts = col.to_pylist()
            col = pa.array([data.label_separator.join(map(str, lists[row])) if row in lists else text
                            for row, text in enumerate(texts)], type=pa.string())
        parts = pc.split_pattern(col, data.label_separator)
        values, rows = pc.utf8_trim_whitespace(pc.list_flatten(parts)), pc.list_parent_indices(parts)
        kept = pc.not_equal(values, "")
        values, rows = values.filter(kept), rows.filter(kept)
        blank = np.asarray(pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(col), ""), False)
                           .to_numpy(zero_copy_only=False), dtype=bool)
    else:  # one label a row
        present = pc.is_valid(col)
        values, rows = col.filter(present), pa.array(np.flatnonzero(~missing))
    kind = ("str" if pa.types.is_string(values.type) or pa.types.is_large_string(values.type) else
            "int" if pa.types.is_integer(values.type) else "none" if pa.types.is_null(values.type) else "mixed")
    rows = np.asarray(rows.to_numpy(zero_copy_only=False), dtype=np.int64)
    if blank.any():
        blank[rows] = False  # rows with at least one label are not blank
    return LabelLists(pc.cast(values, pa.string()), rows, missing, blank, kind)


def json_list_rows(col) -> dict[int, list]:
    """The rows of a string column whose cell is a JSON list, parsed: how multi-label data is
    written in a CSV cell (and what a JSON Lines column mixing lists and strings becomes, see
    `build.load_raw`). Only cells that start with `[` are parsed."""
    import numpy as np
    import pyarrow.compute as pc

    opens = pc.fill_null(pc.match_substring_regex(col, r"^\s*\["), False)  # booleans, no copy of the texts
    found = {}
    for row in np.flatnonzero(np.asarray(opens.to_numpy(zero_copy_only=False), dtype=bool)).tolist():
        try:
            parsed = json.loads(col[row].as_py())
        except ValueError:
            continue
        if isinstance(parsed, list):
            found[row] = parsed
    return found


def _json_label_lists(col, lists: dict[int, list], missing, where: str) -> LabelLists:
    """`label_lists` for strings holding JSON lists (CSV cells), row by row: rare, and small.
    Every labelled row must hold a list once one does: a bare label among lists (or a list among
    bare labels) is reported by row, whichever is rarer, rather than read one way or the other."""
    import numpy as np
    import pyarrow as pa

    texts = col.to_pylist()
    single = [row for row, text in enumerate(texts) if text is not None and row not in lists]
    if single:
        bad, other = (single, next(iter(lists))) if len(single) <= len(lists) else (sorted(lists), single[0])
        lines = [f"{where}: row {row + 1}: label {shorten(texts[row])} is "
                 + (f"one label, but other rows (row {other + 1}) hold lists; write it as a list "
                    f"({shorten(json.dumps([texts[row]]))})" if row not in lists else
                    f"a list, but other rows (row {other + 1}) hold one label each; write one label, or "
                    "every row as a list")
                 for row in bad[:MAX_ROW_ERRORS]]
        if len(bad) > MAX_ROW_ERRORS:
            lines.append(f"... and {len(bad) - MAX_ROW_ERRORS} more rows like these")
        raise FtcliError("\n".join(lines))
    values, rows, kinds = [], [], set()
    for row, parsed in sorted(lists.items()):
        for value in parsed:
            kinds.add("int" if isinstance(value, int) and not isinstance(value, bool) else
                      "str" if isinstance(value, str) else "none" if value is None else "mixed")
            values.append(None if value is None else str(value))
            rows.append(row)
    kinds.discard("none")
    kind = kinds.pop() if len(kinds) == 1 else "mixed" if kinds else "none"
    return LabelLists(pa.array(values, type=pa.string()), np.array(rows, dtype=np.int64), missing,
                      np.zeros(len(col), dtype=bool), kind)


def _multi_label_names(model: ModelConfig, data: DataConfig, train: datasets.Dataset) -> list[str]:
    import pyarrow.compute as pc

    where = split_source(data, data.train_split)
    lists = label_lists(data, train.data.column(data.label_column), where)
    values = lists.values.drop_null()
    if not len(values):
        raise FtcliError(f"{where}: no labels in column {data.label_column!r}; declare model.labels")
    numbers = lists.kind == "str" and pc.all(pc.match_substring_regex(values, DIGITS)).as_py() and \
        pc.max(pc.utf8_length(values)).as_py() <= 9  # longer ones are codes, not ids
    if lists.kind == "int" or numbers:
        ids = pc.cast(values, "int64")  # ids: 0..K-1
        top = pc.max(ids).as_py()
        k = model.num_labels or top + 1
        if top >= k:
            raise FtcliError(f"{where}: label id {top} is not below model.num_labels {k}; fix num_labels or "
                             "list the names in model.labels")
        return [str(i) for i in range(k)]
    if lists.kind != "str":
        raise FtcliError(f"{where}: column {data.label_column!r} mixes label names and other values; "
                         "declare model.labels")
    return sorted(pc.unique(values).to_pylist())


def label_names(model: ModelConfig, data: DataConfig, raw: dict[str, datasets.Dataset]) -> list[str]:
    """Label names in id order; [] for regression."""
    if model.is_regression:
        return []
    if model.labels:
        return list(model.labels)
    train = raw.get(data.train_split) or next(iter(raw.values()))
    if is_multi_label(model, data, raw):
        return _multi_label_names(model, data, train)
    feature = train.features[data.label_column]
    names = getattr(feature, "names", None)
    if names:
        return list(names)
    values = [v for v in train.unique(data.label_column) if v is not None and v != UNLABELED]
    if all(isinstance(v, str) for v in values):
        names = sorted(values)
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if sorted(values) != list(range(len(values))) and not (model.num_labels and max(values) < model.num_labels):
            raise FtcliError(
                f"{split_source(data, data.train_split)}: integer labels {sorted(values)[:10]} are not 0..K-1; "
                "declare them with model.labels"
            )
        names = [str(i) for i in range(model.num_labels or len(values))]
    else:
        raise FtcliError(
            f"{split_source(data, data.train_split)}: column {data.label_column!r} mixes or has non-label values "
            "(expected names or integer ids); declare model.labels or num_labels: 1 for regression"
        )
    if model.num_labels is not None and len(names) != model.num_labels:
        raise FtcliError(
            f"{split_source(data, data.train_split)}: found {len(names)} labels {names[:10]} but model.num_labels is "
            f"{model.num_labels}; fix num_labels or list them in model.labels"
        )
    if len(names) < 2:
        raise FtcliError(
            f"{split_source(data, data.train_split)}: only one label value ({names}) in {data.label_column!r}; "
            "a classifier needs at least two"
        )
    return names


def label_ids(model: ModelConfig, data: DataConfig, ds: datasets.Dataset, split: str,
              names: list[str], multi_label: bool = False) -> tuple[Any, bool]:
    """The split's labels as ids (an Arrow array; for multi-label, a rows x labels numpy array
    of 0/1, -1 for unlabelled rows), and whether the split is labelled."""
    import numpy as np
    import pyarrow as pa

    if data.label_column not in ds.column_names:  # a prediction input without labels
        if multi_label:
            return np.full((ds.num_rows, len(names)), UNLABELED, dtype=np.float32), False
        fill = float("nan") if model.is_regression else UNLABELED
        return pa.array([fill] * ds.num_rows, type=pa.float32() if model.is_regression else pa.int64()), False
    if multi_label:
        return _multi_hot(data, ds, split, names)
    return _label_ids_from_column(model, data, ds, split, names)


def _multi_hot(data: DataConfig, ds: datasets.Dataset, split: str, names: list[str]) -> tuple[Any, bool]:
    """Each row's label set as a 0/1 row over `names`; labels may be names or ids (numbers, where
    no name is a number). A row with no labels (a blank cell, `[]`, a null among labelled rows) is
    an empty label set: allowed with `data.allow_empty_labels`, otherwise reported in one line with
    a count. A split where no row has a label value is unlabelled (a test split). Every other bad
    row is reported: an unknown label, a string that splits into nothing."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    where = split_source(data, split)
    column = ds.data.column(data.label_column)
    lists = label_lists(data, column, where)
    values = lists.values
    ids = pc.index_in(values, value_set=pa.array(names, type=pa.string()))
    if not any(name.isdigit() for name in names):  # a number is an id, where it can be one
        small = pc.and_(pc.match_substring_regex(values, DIGITS), pc.less_equal(pc.utf8_length(values), 9))
        number = pc.cast(pc.if_else(small, values, pa.scalar(None, pa.string())), pa.int64())
        ids = pc.coalesce(ids, pc.if_else(pc.less(number, len(names)), number, pa.scalar(None, pa.int64())))
    ids = np.asarray(pc.fill_null(pc.cast(ids, pa.int64()), -1).to_numpy(zero_copy_only=False))
    n = ds.num_rows
    out = np.zeros((n, len(names)), dtype=np.float32)
    known = ids >= 0
    out[lists.rows[known], ids[known]] = 1
    if lists.missing.all():  # no row has a label value: an unlabelled split
        return np.full((n, len(names)), UNLABELED, dtype=np.float32), False
    # Rows with no label: missing (a blank CSV cell, a null), an empty list, a string of separators.
    empty = np.bincount(lists.rows, minlength=n) == 0
    problems, shown = [], set()
    unknown = np.flatnonzero(~known)
    # ", ," : most likely a typo, so named by row (unless rows may have no labels)
    separators_only = np.flatnonzero(lists.blank_strings) if not data.allow_empty_labels else np.zeros(0, np.int64)
    bad = sorted([(int(lists.rows[k]), int(k)) for k in unknown] + [(int(row), -1) for row in separators_only])
    for row, ref in bad[:MAX_ROW_ERRORS]:
        shown.add(row)
        if ref >= 0:
            problems.append(f"{where}: row {row + 1}: label {_as_written(values[ref].as_py(), lists.kind)!r} is not "
                            f"one of the labels {names[:20]}{' ...' if len(names) > 20 else ''}; fix the row or "
                            "model.labels")
        else:
            problems.append(f"{where}: row {row + 1}: label {column[row].as_py()!r} holds no labels when split on "
                            f"{data.label_separator!r}; fix the row or data.label_separator")
    more = len({row for row, _ in bad} - shown)
    if more:
        problems.append(f"... and {more:,} more rows like these")
    no_labels = np.flatnonzero(empty & ~lists.blank_strings)
    if len(no_labels) and not data.allow_empty_labels:
        first = ", ".join(str(r + 1) for r in no_labels[:5]) + (", ..." if len(no_labels) > 5 else "")
        many = len(no_labels) > 1
        problems.append(f"{where}: {len(no_labels):,} of {n:,} rows {'have' if many else 'has'} no labels "
                        f"(row{'s' if many else ''} {first}); in a multi-label column a blank cell or [] is an "
                        "empty label set: set data.allow_empty_labels: true if rows may have none, or label them")
    if problems:
        raise FtcliError("\n".join(problems))
    return out, True


def _as_written(value: str | None, kind: str) -> Any:
    """A label as the data wrote it: a number for an integer column."""
    return int(value) if kind == "int" and value is not None else value


def _label_ids_from_column(model: ModelConfig, data: DataConfig, ds: datasets.Dataset, split: str,
                           names: list[str]) -> tuple[Any, bool]:
    """The label column as ids (an Arrow array), and whether the split is labelled.

    A split whose labels are all missing (null or -1, as in GLUE test sets) is unlabelled: fine for
    `predict`, refused by `eval`. A split with some labels missing is an error naming the row.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    where = split_source(data, split)
    col = ds.data.column(data.label_column).combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if model.is_regression:
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
            raise FtcliError(f"{where}: column {data.label_column!r} must hold numbers for regression (num_labels: 1)")
        missing = pc.is_null(col)
        ids = pc.cast(col, pa.float32())
    elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        lookup = pa.array(names, type=pa.string())
        ids = pc.index_in(pc.cast(col, pa.string()), value_set=lookup)
        missing = pc.or_(pc.is_null(col), pc.equal(col, ""))
        bad = pc.and_(pc.is_null(ids), pc.invert(missing))
        _raise_for_rows(bad, lambda row: f"{where}: row {row + 1}: label {col[row].as_py()!r} is not one of the "
                                         f"labels {names}; fix the row or the label list in model.labels")
        ids = pc.fill_null(ids, UNLABELED)
    elif pa.types.is_integer(col.type) or pa.types.is_boolean(col.type):
        col = pc.cast(col, pa.int64())
        missing = pc.or_kleene(pc.is_null(col), pc.equal(col, UNLABELED))
        missing = pc.fill_null(missing, True)
        bad = pc.and_(pc.invert(missing), pc.or_(pc.less(col, 0), pc.greater_equal(col, len(names))))
        _raise_for_rows(bad, lambda row: f"{where}: row {row + 1}: label {col[row].as_py()} is not a label id "
                                         f"0..{len(names) - 1} (labels: {names}); fix the row or model.labels")
        ids = pc.fill_null(col, UNLABELED)
    else:
        raise FtcliError(
            f"{where}: column {data.label_column!r} has type {col.type}; labels must be names or integer ids"
        )
    n_missing = pc.sum(missing).as_py() or 0  # a boolean sum counts the trues, with no int64 copy
    if 0 < n_missing < len(col):
        _raise_for_rows(missing, lambda row: f"{where}: row {row + 1}: label is missing while other rows have one; "
                                             "label every row or none")
    if model.is_regression and n_missing == 0:
        _raise_for_rows(pc.is_nan(ids), lambda row: f"{where}: row {row + 1}: label is NaN; fix the row")
    return ids, n_missing == 0


MAX_ROW_ERRORS = 10
"""Bad rows reported one per line; beyond this many, a count of the rest."""


def _bad_rows(mask) -> tuple[list[int], int]:
    """The first MAX_ROW_ERRORS row indices where the Arrow boolean `mask` is true, and how many in all."""
    import numpy as np

    flags = np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)
    rows = np.flatnonzero(flags)
    return rows[:MAX_ROW_ERRORS].tolist(), len(rows)


def _raise_for_rows(mask, describe) -> None:
    """One error line per bad row (up to MAX_ROW_ERRORS, then a count of the others)."""
    lines = row_lines(mask, describe)
    if lines:
        raise FtcliError("\n".join(lines))


def row_lines(mask, describe) -> list[str]:
    rows, total = _bad_rows(mask)
    lines = [describe(row) for row in rows]
    if total > len(rows):
        lines.append(f"... and {total - len(rows)} more rows like these")
    return lines


def split_source(data: DataConfig, split: str) -> str:
    if split == data.validation_name and data.holdout is not None:
        split = data.train_split  # its rows come from the training split's file
    return data.files[split] if data.files else f"{data.path}{'/' + data.name if data.name else ''} split {split!r}"
