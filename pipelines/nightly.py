"""``imesh nightly``: the regression job. A fixed evaluation subset + a predictor -> a new run ->
compared with the stored baseline run -> a markdown summary and an exit code.

Layout under ``--out`` (the nightly root)::

    runs/<name>/          each night's run (records, renders, report/), name = UTC timestamp
    BASELINE              one line: the URI of the baseline run
    latest.md             the last night's summary (also runs/<name>/nightly.md)

The baseline is ``--baseline`` when given, else the run named in ``<out>/BASELINE``. With no
baseline at all, the first run becomes the baseline (exit 0, said in the summary).
``--update-baseline`` promotes tonight's run when it did not regress. Exit codes: 0 pass,
3 regression (a metric worse beyond its threshold with its bootstrap CI below zero, or new
failures; see ``imesh compare``), 2 bad input, 1 unexpected error.

Typical cron line: ``imesh nightly --config nightly.yaml`` where the YAML names ``evalsets``
(a small fixed subset built once with ``imesh evalset ... --list selection.json``), the
predictor and its checkpoint, and ``out``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pipelines import storage
from pipelines.benchmark import (
    BenchmarkConfig,
    JobOptions,
    MetricOptions,
    PredictorOptions,
    check_evaluate_config,
    check_predict_config,
    run_benchmark,
    subset_config,
)
from pipelines.configs import ConfigError, write_resolved_config

BASELINE_POINTER = "BASELINE"


@dataclass(kw_only=True)
class NightlyConfig(PredictorOptions, MetricOptions, JobOptions):
    """Nightly regression: evaluation subset -> new run -> compare with the baseline -> exit code."""

    evalsets: list[str]
    """Evaluation set directories of the fixed nightly subset."""
    out: str
    """Nightly root: runs/<name>/, BASELINE, latest.md."""
    baseline: str | None = None
    """Baseline run URI (default: the run named in <out>/BASELINE)."""
    thresholds: str | None = None
    """Thresholds YAML for the comparison (default: evaluation/data/default_thresholds.yaml)."""
    name: str | None = None
    """Name of tonight's run (default: UTC timestamp)."""
    update_baseline: bool = False
    """Make tonight's run the baseline when it passes."""


def check_nightly_config(cfg: NightlyConfig) -> None:
    """Everything about a nightly job that can be checked before Ray starts and before the long
    run: every evaluation set with the predictor and render settings, the thresholds file, the
    run name and the baseline run (when given)."""
    from evaluation.compare import load_thresholds
    from evaluation.run_records import read_run

    if not cfg.evalsets:
        raise ConfigError("--evalsets needs at least one evaluation set directory")
    for evalset in cfg.evalsets:
        check_predict_config(cfg, evalset)
        check_evaluate_config(cfg, evalset)
    load_thresholds(cfg.thresholds)
    if cfg.name is not None:
        storage.check_uid(cfg.name)
    if cfg.baseline is not None:
        read_run(cfg.baseline)  # a missing or unfinished run names the missing file


def run_nightly(cfg: NightlyConfig) -> tuple[int, str]:
    """Run the nightly job; returns (exit code, markdown summary). Ray must be initialised."""
    from evaluation.compare import compare_runs, load_thresholds
    from evaluation.run_records import read_run

    thresholds = load_thresholds(cfg.thresholds)  # bad thresholds fail before the long run
    name = cfg.name or dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    run_uri = storage.join(cfg.out, "runs", storage.check_uid(name))
    storage.makedirs(run_uri)
    write_resolved_config(cfg, storage.join(run_uri, "nightly.config.yaml"))
    _, records = run_benchmark(
        subset_config(BenchmarkConfig, cfg, evalsets=cfg.evalsets, out=run_uri, report=True)
    )
    pointer = storage.join(cfg.out, BASELINE_POINTER)
    baseline_uri = cfg.baseline
    if baseline_uri is None and storage.exists(pointer):
        baseline_uri = storage.read_text(pointer).strip()
    lines = [f"# Nightly {name}", "", f"- run: `{run_uri}`", f"- predictor: `{cfg.predictor}`"]
    lines.append(f"- objects: {records.objects.num_rows} ({_failed(records)} failed)")
    code = 0
    if baseline_uri is None:
        storage.atomic_write_text(pointer, run_uri + "\n")
        lines += ["", "No baseline yet: this run is now the baseline.", ""]
    else:
        result = compare_runs(read_run(baseline_uri), records, thresholds)
        code = 3 if result.regressed else 0
        verdict = "**REGRESSION**" if result.regressed else "pass"
        lines += [
            f"- baseline: `{baseline_uri}`",
            f"- verdict: {verdict}",
            "",
            result.to_markdown(),
        ]
        if cfg.update_baseline and not result.regressed:
            storage.atomic_write_text(pointer, run_uri + "\n")
            lines.append(f"\nBaseline updated to `{run_uri}`.")
    summary = "\n".join(lines) + "\n"
    storage.atomic_write_text(storage.join(run_uri, "nightly.md"), summary)
    storage.atomic_write_text(storage.join(cfg.out, "latest.md"), summary)
    return code, summary


def _failed(records: object) -> int:
    objects = records.objects  # type: ignore[attr-defined]
    return sum(1 for s in objects["status"].to_pylist() if s != "ok")
