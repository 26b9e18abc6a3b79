"""The run folder: its metrics log survives a kill."""

from __future__ import annotations

import json

from ftcli.training.run_dir import MetricsLog


def test_resume_truncates_the_log_even_when_a_kill_left_half_a_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"type": "train", "step": s, "loss": 1.0 / s} for s in (4, 8, 12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"type": "train", "step": 16, "lo')
    MetricsLog(path, enabled=True).truncate_after(8)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [4, 8]
    assert path.read_text().endswith("\n")
