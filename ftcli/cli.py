"""The `ftcli` command line: thin commands that parse, load the config, call one library
function each and print what it returns (its own summary lines, or `--json`). Heavy libraries
(torch, transformers, datasets, evaluate, accelerate) are imported inside those functions, never
here, so `ftcli --help` and config errors answer at once.

Exit codes: 0 success, 1 unexpected error, 2 bad input, 3 a check failed (`eval --require`, the
parity check of `ftcli export`), 130/143 interrupted (SIGINT/SIGTERM).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from ftcli.errors import (EXIT_QUALITY_GATE, EXIT_SIGINT, EXIT_UNEXPECTED, FtcliError,
                          TrainingInterrupted, disk_full_error, shorten)

app = typer.Typer(
    name="ftcli",
    help="Fine-tune Hugging Face transformers for text classification, from a YAML config.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Show the resolved config, or write its JSON Schema.", no_args_is_help=True)
app.add_typer(config_app, name="config")

_state = {"debug": False}

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config file.", show_default=False)]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", metavar="KEY=VALUE",
                 help="Override a config value: dotted.key=value (YAML scalar). Repeatable.", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the results as one JSON object on stdout.")]
BackendOpt = Annotated[str, typer.Option(
    "--backend", metavar="torch|onnx", help="What scores the rows: the PyTorch model, or its ONNX export (`ftcli "
    "export`; --model may name the export folder, default: onnx/ in the run folder).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display; warnings and results only.")]


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    _state["debug"] = debug


def _reporter(quiet: bool, as_json: bool):
    from ftcli.console import Reporter

    # With --json, stdout carries only the JSON: people's output goes to stderr in plain lines.
    mode = "quiet" if quiet else ("plain" if as_json else None)
    return Reporter(mode=mode, out=sys.stderr if as_json else None)


def _run(fn: Callable[[], Any], *, as_json: bool = False) -> Any:
    """Call a library function; turn ftcli's exceptions into one-line messages and exit codes.
    With `as_json`, a failure also prints one JSON object on stdout (`error`, `exit_code`), so a
    script that reads stdout gets an answer instead of nothing. `--debug` adds the traceback but
    never changes the exit code."""
    try:
        try:
            return fn()
        except OSError as exc:
            raise _environment_error(exc) or exc
    except FtcliError as exc:
        if _said_by_this_process(exc):  # under `accelerate launch`: once, from the main process
            if _state["debug"]:
                import traceback

                traceback.print_exc()
            lines = [_cap(line) for line in str(exc).splitlines()] or [type(exc).__name__]
            for line in lines:
                typer.echo(f"error: {line}", err=True)
            if as_json:
                _print_json({"error": "\n".join(lines), "exit_code": exc.exit_code})
        raise typer.Exit(exc.exit_code) from None
    except TrainingInterrupted as exc:
        if str(exc):  # empty on processes other than the main one
            typer.echo(str(exc), err=True)
            if as_json:
                _print_json({"error": str(exc), "exit_code": exc.exit_code})
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        if as_json:
            _print_json({"error": "interrupted", "exit_code": EXIT_SIGINT})
        raise typer.Exit(EXIT_SIGINT) from None
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence: say what happened, briefly
        if _state["debug"]:
            raise
        text = str(exc).strip().splitlines()
        message = f"unexpected {type(exc).__name__}: {_cap(text[0]) if text else ''}"
        typer.echo(f"error: {message} (rerun with --debug for the traceback)", err=True)
        if as_json:
            _print_json({"error": message, "exit_code": EXIT_UNEXPECTED})
        raise typer.Exit(EXIT_UNEXPECTED) from None


def _cap(line: str, limit: int = 1000) -> str:
    """A message line quoting a huge value stays readable (values are capped where they are quoted;
    this is the last guard)."""
    return line if len(line) <= limit else f"{line[:limit]}... ({len(line):,} characters)"


def _environment_error(exc: OSError) -> FtcliError | None:
    """A full disk or an impossible path met anywhere: one line naming the path, not a crash."""
    import errno

    if exc.errno == errno.ENOSPC:
        return disk_full_error(shorten(str(exc.filename or '')))
    if exc.errno == errno.ENAMETOOLONG:
        return FtcliError(f"{shorten(str(exc.filename or ''))}: the path is too long for the filesystem; "
                          "check the value given")
    return None


def _said_by_this_process(exc: FtcliError) -> bool:
    """Every process of a launch meets the same bad input; only the main one reports it. An error
    raised while an Accelerator was up carries which process raised it; one raised before (a
    config error) asks Accelerate, which every process of the launch does at this point."""
    if exc.main_process is not None:
        return exc.main_process
    from ftcli.runtime import is_main_process

    return is_main_process()


def _load(config: Path, overrides: list[str] | None):
    from ftcli.config import load_config

    return load_config(config, overrides or [])


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


@app.command()
def init(
    data: Annotated[Path, typer.Option("--data", "-d", help="The data: csv, tsv, json, jsonl or parquet.",
                                       show_default=False)],
    validation: Annotated[Optional[Path], typer.Option("--validation", help="A validation file (default: hold "
                          "out a stratified tenth of --data).", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Model to fine-tune (default: the offline "
                     "all-MiniLM-L6-v2).", show_default=False)] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Config to write.")] = Path("config.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Replace --output if it exists.")] = False,
    label_column: Annotated[Optional[str], typer.Option("--label-column", "-l", help="The label column (default: "
                            "guessed from names and values).", show_default=False)] = None,
    text_column: Annotated[Optional[list[str]], typer.Option("--text-column", "-t", help="A text column; twice "
                           "for a pair (default: the longest texts).", show_default=False)] = None,
    multi_label: Annotated[Optional[bool], typer.Option("--multi-label/--single-label", help="Whether a row may "
                           "carry several labels (default: label lists or separated labels make it multi-label).",
                           show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Draft a commented config from a data file: text and label columns, labels, max_length."""

    def go():
        from ftcli.draft import DEFAULT_MODEL
        from ftcli.draft import init as init_fn

        result = init_fn(data, validation_file=validation, model=model or DEFAULT_MODEL, output=output,
                         overwrite=force, label_column=label_column, text_columns=text_column or None,
                         multi_label=multi_label)
        if as_json:
            _print_json(result)
            return
        kind = "multi-label" if result["multi_label"] else "single-label"
        typer.echo(f"wrote {result['output']}: text {', '.join(result['text_columns'])}; {kind} labels from "
                   f"{result['label_column']!r}; max_length {result['max_length']} ({result['rows']:,} rows read)")
        facts = result["model"]
        if facts["peft"]:
            typer.echo(f"model: {facts['parameters'] / 1e6:,.0f}M parameters: LoRA adapters on a bf16 base, "
                       "gradient checkpointing (see the comments)")
        typer.echo(f"next: ftcli train --config {result['output']}")

    _run(go, as_json=as_json)


RequireOpt = Annotated[Optional[list[str]], typer.Option(
    "--require", metavar="METRIC>=VALUE", help="Quality gate, e.g. 'f1>=0.85' or 'loss<0.5' (operators >=, >, "
    "<=, <, ==; repeatable): exit 3 when a metric misses it.", show_default=False)]


@app.command()
def validate(config: ConfigOpt, set_: SetOpt = None, require: RequireOpt = None, as_json: JsonOpt = False) -> None:
    """Dry run: check the config, the data files, every row's labels and the metric names (also those of
    --require), without tokenizing or training. Exit 0 when a run would start, 2 naming what to fix."""

    def go():
        from ftcli import gate

        requirements = [gate.parse(g) for g in require or []]
        _validate(_load(config, set_), requirements, as_json)

    _run(go, as_json=as_json)


def _validate(cfg, requirements, as_json: bool) -> None:
    from ftcli.validate import describe
    from ftcli.validate import validate as validate_fn

    result = validate_fn(cfg, requirements)
    if as_json:
        _print_json(result)
        return
    for line in describe(result):
        typer.echo(line)
    for warning in result["warnings"]:
        typer.echo(f"warning: {warning}", err=True)


@app.command()
def prepare(config: ConfigOpt, set_: SetOpt = None, as_json: JsonOpt = False, quiet: QuietOpt = False,
            check: Annotated[bool, typer.Option("--check", help="Only check the config and data, as `ftcli "
                                                "validate` does: nothing is tokenized.")] = False) -> None:
    """Tokenize the dataset and cache it (a repeated run with nothing changed is a cache hit)."""

    def go():
        cfg = _load(config, set_)
        if check:
            return _validate(cfg, [], as_json)
        from ftcli.data import prepare
        from ftcli.runtime import is_main_process

        if not is_main_process():
            return  # under accelerate launch the main process builds; the others have nothing to do
        reporter = _reporter(quiet, as_json)
        # Separate commands may prepare at once: one builds under the cache's file lock, the
        # others wait and load the result.
        prepared = prepare(cfg, log=reporter.info, progress=reporter.progress)
        validation = cfg.data.validation_name
        if as_json:
            _print_json(prepared.summary(validation))
            return
        for line in prepared.report_lines():
            typer.echo(line)
        if warning := prepared.absence_warning(validation):
            reporter.warn(warning)

    _run(go, as_json=as_json)


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", help="YAML config file (may be left out with --resume RUN_DIR: the run's own config.yaml).",
        show_default=False)] = None,
    set_: SetOpt = None,
    resume: Annotated[Optional[str], typer.Option(
        "--resume", metavar="auto|RUN_DIR|CHECKPOINT",
        help="Continue a run: 'auto' (the newest intact checkpoint in train.output_dir), a run folder (its "
             "newest intact checkpoint, with the run's saved config unless --config is given) or a "
             "checkpoint folder.", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run already in output_dir.")] = False,
    allow_changes: Annotated[bool, typer.Option(
        "--allow-changes", help="Resume even though training settings or data differ from the checkpoint's.")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune the model (works unchanged under `accelerate launch -m ftcli train`)."""

    def go():
        from ftcli.training import load_run_config

        if config is None:
            if resume in (None, "auto"):
                raise FtcliError("train: give --config FILE, or --resume RUN_DIR to continue a run with its saved config")
            cfg = load_run_config(resume, set_ or [])
        else:
            cfg = _load(config, set_)
        from ftcli.runtime import tune_process_for_training
        from ftcli.training import train as train_fn

        # this process is ftcli's own: settings a library call must not make
        tune_process_for_training(cfg)
        reporter = _reporter(quiet, as_json)
        result = train_fn(cfg, resume=resume, overwrite=overwrite, allow_changes=allow_changes, reporter=reporter)
        if as_json and reporter.enabled:  # enabled: this is the main process
            _print_json(result)

    _run(go, as_json=as_json)


@app.command("eval")
def eval_(
    config: ConfigOpt,
    set_: SetOpt = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Trained model folder "
                     "(default: the config's train.output_dir).", show_default=False)] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Split to evaluate (default: eval.split).",
                                                 show_default=False)] = None,
    require: RequireOpt = None,
    best_threshold: Annotated[bool, typer.Option(
        "--best-threshold", help="Multi-label: also report the single threshold that would maximize micro F1 on "
                                 "this split.")] = False,
    save_threshold: Annotated[bool, typer.Option(
        "--save-threshold", help="Multi-label: keep that threshold with the model (thresholds.json); eval and "
                                 "predict then use it unless eval.threshold is set.")] = False,
    errors: Annotated[Optional[Path], typer.Option(
        "--errors", metavar="FILE", help="Write the misclassified rows (text, true and predicted label, probability; "
                                         "most confident first) to FILE: .csv or .jsonl.", show_default=False)] = None,
    report_dir: Annotated[Optional[Path], typer.Option(
        "--report-dir", help="Where to write eval_report.json and confusion_matrix.png (default: eval/SPLIT/ in "
                             "the model's run folder).", show_default=False)] = None,
    backend: BackendOpt = "torch",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate a trained model on a split: metrics, a per-class table, and a report with a confusion matrix."""

    def go():
        from ftcli import gate

        requirements = [gate.parse(g) for g in require or []]
        cfg = _load(config, set_)
        from ftcli.runtime import openmp_wait_for, set_openmp_wait

        set_openmp_wait(openmp_wait_for(cfg.train))  # before torch loads (train.openmp_wait)
        from ftcli.evaluation import evaluate_model

        reporter = _reporter(quiet, as_json)
        result = evaluate_model(cfg, model_dir=model, split=split, require=requirements, reporter=reporter,
                                report_dir=report_dir, find_threshold=best_threshold, save_threshold=save_threshold,
                                errors_file=errors, backend=backend)
        if not reporter.enabled:  # not the main process
            return
        if as_json:
            _print_json(result)
        if requirements:
            typer.echo(gate.verdict(requirements, result), err=True)
        if result["failed"]:
            raise typer.Exit(EXIT_QUALITY_GATE)

    _run(go, as_json=as_json)


@app.command()
def predict(
    config: ConfigOpt,
    input: Annotated[Path, typer.Option("--input", "-i", help="Rows to label: csv, tsv, json, jsonl or parquet "
                                        "with the config's text columns.", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write: .jsonl or .csv "
                      "(default: <output_dir>/predictions/<input name>.jsonl).", show_default=False)] = None,
    set_: SetOpt = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Trained model folder "
                     "(default: the config's train.output_dir).", show_default=False)] = None,
    keep: Annotated[Optional[list[str]], typer.Option(
        "--keep", "-k", metavar="COLUMN", help="Input column to copy into each prediction, e.g. an id column "
        "(--keep idx) or the text (repeatable).", show_default=False)] = None,
    label_separator: Annotated[Optional[str], typer.Option(
        "--label-separator", metavar="SEP", help="Multi-label CSV output: the separator that joins a row's labels "
        "in the labels column (default: data.label_separator, else '|').", show_default=False)] = None,
    backend: BackendOpt = "torch",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Label every row of a file with a trained model (label, label_id, probabilities), in input order."""

    def go():
        cfg = _load(config, set_)
        from ftcli.runtime import openmp_wait_for, set_openmp_wait

        set_openmp_wait(openmp_wait_for(cfg.train))  # before torch loads (train.openmp_wait)
        from ftcli.evaluation import predict as predict_fn

        reporter = _reporter(quiet, as_json)
        result = predict_fn(cfg, input, output, model_dir=model, keep_columns=keep or [], reporter=reporter,
                            label_separator=label_separator, backend=backend)
        if not reporter.enabled:
            return
        if as_json:
            _print_json(result)
        else:
            counts = ", ".join(f"{k} {v}" for k, v in result["labels"].items())
            read = f", read in {result['windows']:,} windows" if "windows" in result else ""
            cut = (f"; {result['truncated']:,} rows not read whole ("
                   + ("max_windows" if "windows" in result else "cut at max_length") + ")") if result["truncated"] else ""
            typer.echo(f"{result['rows']:,} predictions -> {result['output']} ({counts}{read}){cut}")

    _run(go, as_json=as_json)


@app.command()
def calibrate(
    run_dir: Annotated[Optional[Path], typer.Argument(help="A finished run (train.output_dir), or its model folder: "
                       "calibrated with the config the run saved (or give --config).", show_default=False)] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file (may be left out with "
                      "RUN_DIR: the run's own config.yaml).", show_default=False)] = None,
    set_: SetOpt = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Trained model folder "
                     "(default: the config's train.output_dir).", show_default=False)] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Labelled split to fit on (default: the "
                                                 "validation split).", show_default=False)] = None,
    temperature: Annotated[Optional[bool], typer.Option("--temperature/--no-temperature", help="Fit temperature "
                           "scaling (default: calibration.temperature).", show_default=False)] = None,
    thresholds: Annotated[Optional[bool], typer.Option("--thresholds/--no-thresholds", help="Tune thresholds: per "
                          "label (multi-label) or one for two labels (default: calibration.thresholds).",
                          show_default=False)] = None,
    metric: Annotated[Optional[str], typer.Option("--metric", metavar="f1|accuracy|matthews_correlation",
                      help="Two labels: the metric the threshold is chosen for (default: calibration.threshold_metric).",
                      show_default=False)] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fit temperature scaling and tune thresholds on the validation split; keep them with the model (eval,
    predict and the ONNX export use them), with a reliability diagram and the refreshed model card."""

    def go():
        options = [f"calibration.{k}={v}" for k, v in (("temperature", temperature), ("thresholds", thresholds),
                                                       ("threshold_metric", metric)) if v is not None]
        from ftcli.deploy import calibrate as calibrate_fn
        from ftcli.deploy import locate_run, run_config

        model_dir = model
        if run_dir is not None:
            if model is not None:
                raise FtcliError("calibrate: give RUN_DIR or --model, not both")
            run = locate_run(run_dir, "calibrate")
            model_dir = run.model
            cfg = _load(config, [*(set_ or []), *options]) if config else \
                run_config(run, "calibrate", [*(set_ or []), *options])
        elif config is None:
            raise FtcliError("calibrate: give RUN_DIR (a finished run), or --config FILE")
        else:
            cfg = _load(config, [*(set_ or []), *options])
        reporter = _reporter(quiet, as_json)
        result = calibrate_fn(cfg, model_dir=model_dir, split=split, reporter=reporter)
        if as_json and reporter.enabled:
            _print_json(result.to_dict())

    _run(go, as_json=as_json)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A finished run (train.output_dir), or its model folder.")],
    format: Annotated[str, typer.Option("--format", "-f", metavar="onnx", help="Export format.")] = "onnx",
    quantize: Annotated[Optional[str], typer.Option("--quantize", metavar="int8", help="Also quantize the checked "
                        "graph: int8 (ONNX Runtime dynamic quantization).", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Export folder (default: RUN_DIR/onnx, "
                      "or RUN_DIR/onnx-int8).", show_default=False)] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Labelled split of the parity check (default: "
                                                 "the validation split).", show_default=False)] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export the trained model to ONNX, with its tokenizer, labels, thresholds and temperature; kept only when
    its logits match PyTorch's within 1e-4 on the validation split (exit 3 with the figure otherwise)."""

    def go():
        from ftcli.deploy import export as export_fn
        from ftcli.runtime import is_main_process

        if not is_main_process():
            return  # under accelerate launch one process exports; the others have nothing to do
        reporter = _reporter(quiet, as_json)
        result = export_fn(run_dir, format=format, quantize=quantize, output=output, split=split, reporter=reporter)
        if as_json:
            _print_json(result)

    _run(go, as_json=as_json)


@app.command()
def push(
    run_dir: Annotated[Path, typer.Argument(help="A finished run (train.output_dir), or its model folder.")],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Hub repository, e.g. your-name/mrpc-minilm.",
                                         show_default=False)],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Branch to commit to (default: main).",
                                                    show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be uploaded; upload nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Upload the model folder (card, thresholds, calibration) and the run's ONNX exports to the Hugging Face Hub."""

    def go():
        from ftcli.deploy import push as push_fn
        from ftcli.runtime import is_main_process

        if not is_main_process():
            return  # one upload, from the main process

        result = push_fn(run_dir, repo_id, private=private, revision=revision, dry_run=dry_run)
        if as_json:
            _print_json(result)
            return
        for f in result["files"]:
            typer.echo(f"{f['path_in_repo']}  ({f['bytes']:,} bytes)")
        verb = "would upload" if dry_run else "uploaded"
        typer.echo(f"{verb} {len(result['files'])} files ({result['bytes'] / 1e6:,.1f} MB) to {repo_id}"
                   + (f": {result['commit']}" if "commit" in result else ""))

    _run(go, as_json=as_json)


@app.command()
def sweep(
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", help="YAML config file (may be left out with --resume DIR).", show_default=False)] = None,
    set_: SetOpt = None,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", metavar="DIR", help="Continue the sweep in DIR (its output_dir) with the config and options it "
        "was started with; --set, --trials and --timeout given here apply on top.", show_default=False)] = None,
    trials: Annotated[Optional[int], typer.Option("--trials", "-n", min=1, help="Finished trials the study should "
                      "have (default: sweep.trials).", show_default=False)] = None,
    timeout: Annotated[Optional[int], typer.Option("--timeout", min=1, help="Start no new trial after this many "
                       "seconds (default: sweep.timeout_s).", show_default=False)] = None,
    storage: Annotated[Optional[str], typer.Option("--storage", help="Study storage: an SQLAlchemy URL or "
                       "journal:PATH (default: sweep.storage, else sqlite in output_dir).", show_default=False)] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="Study name (default: sweep.study, else the "
                     "output_dir's name).", show_default=False)] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Search hyperparameters (Optuna): trials are ordinary runs in output_dir/trials/; run it again to continue."""

    def go():
        saved = {}
        if resume is not None:
            if config is not None:
                raise FtcliError("sweep: give --config FILE to start or continue a sweep, or --resume DIR to continue "
                                 "one with its saved config, not both")
            from ftcli.sweeps import load_sweep

            cfg, saved = load_sweep(resume, set_ or [])
        elif config is None:
            raise FtcliError("sweep: give --config FILE, or --resume DIR to continue a sweep")
        else:
            cfg = _load(config, set_)
        from ftcli.runtime import tune_process_for_training
        from ftcli.sweeps import sweep as sweep_fn

        tune_process_for_training(cfg)
        reporter = _reporter(quiet, as_json)
        result = sweep_fn(cfg, trials=trials or saved.get("trials"), timeout_s=timeout or saved.get("timeout_s"),
                          storage=storage or saved.get("storage"), study_name=study or saved.get("study_name"),
                          reporter=reporter)
        if as_json and reporter.enabled:  # enabled: this is the main process
            _print_json(result)

    _run(go, as_json=as_json)


@app.command()
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A train.output_dir (also of a run in progress).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="PNG to write "
                      "(default: RUN_DIR/learning_curves.png).", show_default=False)] = None,
) -> None:
    """Draw the learning curves (loss per step, validation metrics) from a run's metrics.jsonl."""

    def go():
        from ftcli.plot import plot_run

        typer.echo(str(plot_run(run_dir, output)))

    _run(go)


@config_app.command("show")
def config_show(config: ConfigOpt, set_: SetOpt = None, as_json: JsonOpt = False) -> None:
    """Print the fully resolved config, each value marked with where it came from (default, file, --set)."""

    def go():
        from ftcli.config import render_with_origins

        cfg = _load(config, set_)
        if as_json:
            from ftcli.config import flatten

            _print_json({"config": cfg.to_dict(), "origins": {k: cfg.origin(k) for k in flatten(cfg.to_dict())}})
        else:
            typer.echo(render_with_origins(cfg), nl=False)

    _run(go, as_json=as_json)


@config_app.command("schema")
def config_schema(
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="File to write (default: stdout).",
                                                   show_default=False)] = None,
) -> None:
    """Write the JSON Schema of ftcli configs, for editors to complete and check YAML files."""

    def go():
        from ftcli.config import json_schema

        text = json.dumps(json_schema(), indent=2) + "\n"
        if output is None:
            sys.stdout.write(text)
        else:
            output.write_text(text)
            typer.echo(f"wrote {output}", err=True)

    _run(go)
