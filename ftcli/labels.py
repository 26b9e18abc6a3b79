"""Labels: their names, and each row's label id, checked row by row.

Label names come from `model.labels`, a Hub dataset's class names, or the sorted distinct values
of the training labels; `[]` means regression. Every bad row is reported (up to MAX_ROW_ERRORS,
then a count), each naming the file and row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ftcli.config import DataConfig, ModelConfig
from ftcli.errors import FtcliError

if TYPE_CHECKING:  # pragma: no cover
    import datasets


UNLABELED = -1
"""Label id of rows without a label (e.g. GLUE test splits, where the label is hidden as -1)."""


def label_names(model: ModelConfig, data: DataConfig, raw: dict[str, datasets.Dataset]) -> list[str]:
    """Label names in id order; [] for regression."""
    if model.is_regression:
        return []
    if model.labels:
        return list(model.labels)
    train = raw.get(data.train_split) or next(iter(raw.values()))
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
              names: list[str]) -> tuple[Any, bool]:
    import pyarrow as pa

    if data.label_column not in ds.column_names:  # a prediction input without labels
        fill = float("nan") if model.is_regression else UNLABELED
        return pa.array([fill] * ds.num_rows, type=pa.float32() if model.is_regression else pa.int64()), False
    return _label_ids_from_column(model, data, ds, split, names)


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
    n_missing = pc.sum(pc.cast(missing, pa.int64())).as_py() or 0
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
