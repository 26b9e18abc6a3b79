"""The sweep's study and its checks, before any trial runs: the search-space schema, storage and
metric errors, the sampler's seeding and the pruner's warm-up (the sweeps themselves run in
tests/integration/test_sweep.py)."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from conftest import SWEEP_SPACE as SPACE, sweep_config
from ftcli.cli import app


@pytest.mark.parametrize("space, expected", [
    ({"train.learnig_rate": {"low": 1e-5, "high": 1e-4}}, "sweep.space.train.learnig_rate: not a setting (did you mean 'train.learning_rate'?)"),
    ({"train.learning_rate": {"low": 1e-4, "high": 1e-5}}, "sweep.space.train.learning_rate: low (0.0001) is above high (1e-05)"),
    ({"train.learning_rate": {"low": 0, "high": 1e-4, "log": True}}, "log: needs low > 0"),
    ({"train.batch_size": {"choices": [8, "big"]}}, "sweep.space.train.batch_size: 'big' is not a valid train.batch_size"),
    ({"train.epochs": {"low": 0, "high": 3}}, "sweep.space.train.epochs: 0 is not a valid train.epochs"),
    ({"train.output_dir": {"choices": ["a", "b"]}}, "sweep.space.train.output_dir: cannot be searched"),
    ({"train.learning_rate": {"low": 1e-5}}, "give low and high (or choices: [...])"),
    ({"model.peft.r": {"choices": [4, 8]}}, "sweep.space.model.peft.r: model.peft is not set; add a model.peft section"),
])
def test_search_space_errors_are_one_line_before_anything_runs(tiny_model, sweep_files, tmp_path, space, expected):
    cfg = yaml.safe_load(sweep_config(tiny_model, sweep_files, tmp_path).read_text())
    cfg["sweep"]["space"] = space
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = CliRunner().invoke(app, ["sweep", "-c", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2
    assert [line for line in result.stderr.splitlines()] == [line for line in result.stderr.splitlines() if
                                                            line.startswith("error: ")]
    assert expected in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_unknown_metric_or_storage_is_bad_input(tiny_model, sweep_files, tmp_path):
    cfg = sweep_config(tiny_model, sweep_files, tmp_path)
    bad = CliRunner().invoke(app, ["sweep", "-c", str(cfg), "--storage", "redis://x"])
    assert bad.exit_code == 2 and "sweep storage 'redis://x': give an SQLAlchemy URL" in bad.stderr
    (tmp_path / "notes.txt").write_text("the user's file")
    for url in (f"journal:{tmp_path / 'notes.txt' / 'sweep.log'}", f"sqlite:///{tmp_path / 'notes.txt' / 's.db'}"):
        under_a_file = CliRunner().invoke(app, ["sweep", "-c", str(cfg), "--storage", url])
        assert under_a_file.exit_code == 2, under_a_file.output
        assert f"{tmp_path / 'notes.txt'}' is a file, not a folder" in under_a_file.stderr
        assert "data:" not in under_a_file.stderr  # refused before the data is prepared
    metric = CliRunner().invoke(app, ["sweep", "-c", str(cfg), "--set", "sweep.metric=bleu"])
    assert metric.exit_code == 2
    assert "error: sweep.metric: 'bleu' is not reported by metric 'mrpc'; choose one of accuracy, f1, loss" in metric.stderr
    assert not (tmp_path / "run").exists()


def test_a_continued_study_draws_new_points():
    """The sampler is seeded from train.seed and the trials the study has: reproducible from
    scratch, and a second run does not replay the first run's draws."""
    import optuna

    from ftcli.config import SweepConfig
    from ftcli.sweeps.study import sampler as _sampler

    sw = SweepConfig(space=SPACE, sampler="random")
    first = [_sampler(sw, 42, drawn=0).sample_independent(None, None, "x", optuna.distributions.FloatDistribution(
        0, 1)) for _ in range(2)]
    assert first[0] == first[1]  # a new study is reproducible
    again = _sampler(sw, 42, drawn=3).sample_independent(None, None, "x", optuna.distributions.FloatDistribution(0, 1))
    assert again != first[0]


def test_searching_epochs_under_max_steps_is_refused(tiny_model, sweep_files, tmp_path):
    cfg = yaml.safe_load(sweep_config(tiny_model, sweep_files, tmp_path).read_text())
    cfg["train"]["max_steps"] = 20
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = CliRunner().invoke(app, ["sweep", "-c", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2
    assert "sweep.space.train.epochs: train.max_steps (20) sets every trial's length" in result.stderr, result.stderr


def test_sweep_resume_needs_a_sweep_folder(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "no sweep_config.yaml here" in result.stderr


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_pruner_warmup_steps_keeps_a_trial_until_then(pruner):
    """`sweep.pruner_warmup_steps` is the step before which no trial is judged: a trial far behind
    the others at step 4 is stopped there without a warm-up, and runs on to step 8 with one."""
    import optuna

    from ftcli.config import SweepConfig
    from ftcli.sweeps.study import pruner as _pruner

    def study_with_two_good_trials(warmup: int):
        sweep = SweepConfig(space={"train.learning_rate": {"low": 1e-5, "high": 1e-4}}, pruner=pruner,
                            pruner_startup_trials=1, pruner_warmup_steps=warmup)
        # hyperband compares a trial only with trials of its bracket: enough good trials, and a
        # fixed study name (the bracket is a hash of it), put good ones in every bracket
        study = optuna.create_study(direction="maximize", pruner=_pruner(sweep), study_name="warm-up")
        for _ in range(6):
            good = study.ask()
            for step in (4, 8, 12):
                good.report(0.9, step)
                assert not good.should_prune()
            study.tell(good, 0.9)
        return study

    def first_pruned_step(study):
        bad = study.ask()
        for step in (4, 8, 12):
            bad.report(0.1, step)
            if bad.should_prune():
                return step
        return None

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        assert first_pruned_step(study_with_two_good_trials(0)) == 4
        assert first_pruned_step(study_with_two_good_trials(8)) == 8
    finally:
        optuna.logging.set_verbosity(optuna.logging.INFO)


def test_adapter_settings_can_be_searched(tiny_model, sweep_files, tmp_path):
    """`model.peft.r` and `alpha` sit a section deeper than other settings: they validate, draw
    with their types (r an integer) and reach the trial's config."""
    import optuna

    from ftcli.config import load_config
    from ftcli.sweeps.study import suggest, trial_config

    cfg = yaml.safe_load(sweep_config(tiny_model, sweep_files, tmp_path).read_text())
    cfg["model"]["peft"] = {"r": 8}
    cfg["sweep"]["space"] = {"model.peft.r": {"low": 2, "high": 16, "log": True}, "model.peft.alpha": {"low": 4, "high": 32},
                             "train.learning_rate": {"low": 1e-4, "high": 1e-3}}
    (tmp_path / "lora.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    loaded = load_config(tmp_path / "lora.yaml")
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    values = suggest(trial, loaded)
    assert isinstance(values["model.peft.r"], int) and 2 <= values["model.peft.r"] <= 16
    assert isinstance(values["model.peft.alpha"], float)
    trial_cfg = trial_config(loaded, values, tmp_path / "t0")
    assert trial_cfg.model.peft.r == values["model.peft.r"] and trial_cfg.model.peft.alpha == values["model.peft.alpha"]
    bad = dict(cfg, sweep={**cfg["sweep"], "space": {"model.peft.r": {"low": 0, "high": 4}}})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
    result = CliRunner().invoke(app, ["sweep", "-c", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2 and "sweep.space.model.peft.r: 0 is not a valid model.peft.r" in result.stderr
