"""ftcli.files: atomic writes."""

from __future__ import annotations

import pytest


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    from ftcli.files import atomic_path, atomic_write_text

    target = tmp_path / "report.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and len(list(tmp_path.iterdir())) == 1
