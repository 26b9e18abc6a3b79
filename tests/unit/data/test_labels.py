"""ftcli.data.labels, multi-label: every way of writing label sets reads as a plain row-by-row reading
of the spec does; numbers are ids only where no label name is a number; bad rows are named in row
order, the first MAX_ROW_ERRORS of them, then counted."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from ftcli.data import labels
from ftcli.config import DataConfig, ModelConfig
from ftcli.errors import FtcliError

NAMES = ["art", "bio", "cs", "econ"]


def dataset(values: list):
    import datasets as hfds

    return hfds.Dataset.from_dict({"text": ["x"] * len(values), "label": values})


def configs(separator=None, names=None, allow_empty=False):
    model = ModelConfig(name_or_path="m", labels=names, problem_type="multi_label")
    data = DataConfig(files={"train": "t.jsonl"}, text_columns=["text"], label_column="label",
                      label_separator=separator, allow_empty_labels=allow_empty)
    return model, data


def reference(values: list, names: list[str], separator: str | None) -> np.ndarray:
    """The spec, row by row: a list, a string split on the separator (blanks dropped), a JSON list
    in a string, or one label; a label is a name, or else a number below len(names) is an id."""
    out = np.zeros((len(values), len(names)), dtype=np.float32)
    for row, value in enumerate(values):
        if value is None:
            out[row] = -1
            continue
        if isinstance(value, str) and separator is not None:
            found = [p.strip() for p in value.split(separator) if p.strip()]
        elif isinstance(value, str) and value.lstrip().startswith("["):
            found = json.loads(value)
        else:
            found = value if isinstance(value, list) else [value]
        for label in found:
            out[row, names.index(str(label)) if str(label) in names else int(label)] = 1
    return out


def random_sets(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [sorted(rng.sample(range(len(NAMES)), rng.randint(1, 3))) for _ in range(n)]


FORMS = {  # how a data file writes the label set [0, 2]
    "name lists": lambda s: [NAMES[i] for i in s],
    "id lists": lambda s: s,
    "separated ids": lambda s: " , ".join(str(i) for i in s) + ",",
    "separated names": lambda s: "|".join(NAMES[i] for i in s),
    "json in a string": lambda s: json.dumps([NAMES[i] for i in s]),
    "mixed names and ids in a string": lambda s: ",".join(NAMES[i] if i % 2 else str(i) for i in s),
}


@pytest.mark.parametrize("form", FORMS)
def test_every_form_reads_as_the_row_by_row_spec(form):
    sets = random_sets(300, seed=len(form))
    values = [FORMS[form](s) for s in sets]
    separator = "|" if form == "separated names" else "," if "separated" in form or "mixed" in form else None
    model, data = configs(separator, names=NAMES)
    ids, labelled = labels.label_ids(model, data, dataset(values), "train", NAMES, multi_label=True)
    assert labelled and ids.dtype == np.float32
    np.testing.assert_array_equal(ids, reference(values, NAMES, separator))
    expected = np.zeros_like(ids)
    for row, s in enumerate(sets):
        expected[row, s] = 1
    np.testing.assert_array_equal(ids, expected)


@pytest.mark.parametrize("values, separator, names", [
    ([["cs", "art"], ["bio"], []], None, ["art", "bio", "cs"]),
    ([[3, 0], [1]], None, ["0", "1", "2", "3"]),  # ids: 0..K-1
    (["2,0", " 1 "], ",", ["0", "1", "2"]),
    (["9021055555|1000155555", "1000155555"], "|", ["1000155555", "9021055555"]),  # too long for ids: names
    (['["b", "a"]', '["a"]'], None, ["a", "b"]),
])
def test_label_names_are_read_from_the_data(values, separator, names):
    model, data = configs(separator)
    assert labels.label_names(model, data, {"train": dataset(values)}) == names


def test_a_number_is_an_id_only_where_no_name_is_a_number():
    model, data = configs(",", names=["a", "b", "c"])
    ids, _ = labels.label_ids(model, data, dataset(["a,2", "1"]), "train", ["a", "b", "c"], multi_label=True)
    np.testing.assert_array_equal(ids, [[1, 0, 1], [0, 1, 0]])
    # names that are numbers: "1" is neither of them, and not read as the id of "20"
    model, data = configs(",", names=["10", "20"])
    with pytest.raises(FtcliError, match=r"^t\.jsonl: row 2: label '1' is not one of the labels \['10', '20'\]"):
        labels.label_ids(model, data, dataset(["10", "1"]), "train", ["10", "20"], multi_label=True)


def test_missing_and_empty_rows():
    model, data = configs(",", names=NAMES, allow_empty=True)
    ids, labelled = labels.label_ids(model, data, dataset([None, None]), "train", NAMES, multi_label=True)
    assert not labelled and (ids == -1).all()  # an unlabelled split, as for predict
    ids, labelled = labels.label_ids(model, data, dataset(["art", ","]), "train", NAMES, multi_label=True)
    assert labelled and ids[1].sum() == 0  # allowed: a row with no labels


def test_bad_rows_are_named_in_row_order_then_counted():
    values = ["art"] * 30
    values[3], values[5], values[9] = "art,zoo", ",", "nope,art,xyz"
    values[12:24] = ["bad"] * 12
    values[27] = None
    model, data = configs(",", names=NAMES)
    with pytest.raises(FtcliError) as caught:
        labels.label_ids(model, data, dataset(values), "train", NAMES, multi_label=True)
    lines = str(caught.value).splitlines()
    assert lines[:5] == [
        "t.jsonl: row 4: label 'zoo' is not one of the labels ['art', 'bio', 'cs', 'econ']; fix the row or model.labels",
        "t.jsonl: row 6: label ',' holds no labels when split on ','; fix the row or data.label_separator",
        "t.jsonl: row 10: label 'nope' is not one of the labels ['art', 'bio', 'cs', 'econ']; fix the row or "
        "model.labels",
        "t.jsonl: row 10: label 'xyz' is not one of the labels ['art', 'bio', 'cs', 'econ']; fix the row or "
        "model.labels",
        "t.jsonl: row 13: label 'bad' is not one of the labels ['art', 'bio', 'cs', 'econ']; fix the row or "
        "model.labels",
    ]
    # 16 problems in 15 rows: ten lines shown (rows 4, 6, 10 twice, 13-18); the count is of the
    # 6 rows not shown (19-24), not of problems. The blank row 28 is an empty label set: one line.
    assert len(lines) == labels.MAX_ROW_ERRORS + 2
    assert lines[-2] == "... and 6 more rows like these"
    assert lines[-1] == ("t.jsonl: 1 of 30 rows has no labels (row 28); in a multi-label column a blank cell or [] is "
                         "an empty label set: set data.allow_empty_labels: true if rows may have none, or label them")


def test_blank_cells_and_empty_lists_are_empty_label_sets():
    """How people write multi-label CSVs: "urgent,vip", and a blank cell (read as missing) or `[]`
    for a row without tags. With allow_empty_labels they load as empty sets; without it, one line
    counts them and names the setting. A split with no label value at all stays unlabelled."""
    values = ["art,bio", None, "[]", "cs", '["econ", "art"]', ""]
    for separator in (",", None):
        shown = values if separator else ['["art", "bio"]', None, "[]", '["cs"]', '["econ", "art"]', None]
        model, data = configs(separator, names=NAMES, allow_empty=True)
        ids, labelled = labels.label_ids(model, data, dataset(shown), "train", NAMES, multi_label=True)
        assert labelled
        np.testing.assert_array_equal(ids, [[1, 1, 0, 0], [0] * 4, [0] * 4, [0, 0, 1, 0], [1, 0, 0, 1], [0] * 4])
        model, data = configs(separator, names=NAMES)
        with pytest.raises(FtcliError) as caught:
            labels.label_ids(model, data, dataset(shown), "train", NAMES, multi_label=True)
        assert str(caught.value).startswith("t.jsonl: 3 of 6 rows have no labels (rows 2, 3, 6); ") and \
            "data.allow_empty_labels: true" in str(caught.value) and "\n" not in str(caught.value)
    model, data = configs(",", names=NAMES)  # a test split without labels: unlabelled, not three errors
    ids, labelled = labels.label_ids(model, data, dataset([None, None, None]), "train", NAMES, multi_label=True)
    assert not labelled and (ids == -1).all()


def test_many_bad_labels_in_one_row_count_as_one_row():
    values = ["art"] * 40
    for row in range(5, 40):
        values[row] = "x1,x2,x3"  # 35 rows, 105 unknown labels
    model, data = configs(",", names=NAMES)
    with pytest.raises(FtcliError) as caught:
        labels.label_ids(model, data, dataset(values), "train", NAMES, multi_label=True)
    lines = str(caught.value).splitlines()
    # ten lines show rows 6, 7, 8 and 9 (three problems each, the last one of its three):
    assert lines[-1] == "... and 31 more rows like these"
