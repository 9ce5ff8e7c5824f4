"""``imesh compare``: compare a new evaluation run with a baseline run (nightly regression).

Pairs objects by uid, computes per-metric paired deltas with bootstrap confidence intervals
and verdicts against thresholds (:mod:`evaluation.compare`), prints the Markdown summary and,
with ``out``, writes ``compare.md``, ``compare.json`` and ``compare_config.yaml`` there.

Exit codes: **0** no regression; **3** regression (a metric regressed beyond its threshold with
its confidence interval below zero, or more objects newly failed than ``max_new_failures``);
2 bad input (missing/malformed run directory or thresholds file: an
:class:`evaluation.run_records.EvaluationInputError`, a ``ValueError``, reported as exit 2
once ``pipelines.errors.USER_ERRORS`` lists it); 1 unexpected error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import tyro

from pipelines import storage
from pipelines.configs import NO_HASH, write_resolved_config

REGRESSION_EXIT_CODE = 3
"""Exit code of ``imesh compare`` when the new run regressed (distinct from 1 and 2)."""


def thresholds_help() -> str:
    """Help of ``--thresholds``: the metric keys and their defaults, read from the registry."""
    from evaluation.metric_registry import METRICS

    defaults = ", ".join(
        f"{m.name} {m.max_drop:g}" + (f" {m.unit}" if m.unit == "dB" else "")
        for m in METRICS.values()
    )
    return (
        "Thresholds YAML (URL): '{metric: {max_drop: x}}' per metric, 'max_new_failures: n', "
        "optional 'bootstrap: {resamples, confidence, seed}'. Keys it omits keep the defaults "
        f"of the metric registry ({defaults}; max_new_failures 0), written out in "
        "evaluation/data/default_thresholds.yaml (a copy to start from)."
    )


@dataclass
class CompareConfig:
    """Compare a new evaluation run with a baseline run; exit 3 on regression, else 0."""

    baseline: str
    """Baseline run directory (URL) with run.json and metrics/*.parquet."""
    new: str
    """New run directory (URL) to check against the baseline."""
    thresholds: Annotated[str | None, tyro.conf.arg(help=thresholds_help())] = None
    """Thresholds YAML (URL) overriding the metric registry's defaults key by key (help text:
    :func:`thresholds_help`)."""
    out: str | None = None
    """Directory (URL) to write compare.md, compare.json and compare_config.yaml; default: print only."""
    print_summary: bool = field(default=True, metadata=NO_HASH)
    """Print the Markdown summary to the terminal."""


def run_compare(cfg: CompareConfig) -> int:
    """Compare the runs; returns 0 (no regression) or 3 (:data:`REGRESSION_EXIT_CODE`)."""
    from evaluation.compare import compare_runs, load_thresholds
    from evaluation.run_records import read_run

    thresholds = load_thresholds(cfg.thresholds)
    baseline = read_run(cfg.baseline)
    new = read_run(cfg.new)
    result = compare_runs(baseline, new, thresholds)
    markdown = result.to_markdown()
    if cfg.out:
        storage.makedirs(cfg.out)
        storage.atomic_write_text(storage.join(cfg.out, "compare.md"), markdown)
        storage.atomic_write_text(storage.join(cfg.out, "compare.json"), result.to_json())
        write_resolved_config(cfg, storage.join(cfg.out, "compare_config.yaml"))

    from rich.markdown import Markdown

    from pipelines.summary import make_console

    console = make_console()
    if cfg.print_summary:
        console.print(Markdown(markdown))
    if result.regressed:
        console.print(
            f"[bold red]compare: REGRESSION[/] ({len(result.regressions)} metric(s), "
            f"{result.n_new_failures} newly failed or missing object(s)); exit "
            f"{REGRESSION_EXIT_CODE}"
        )
        return REGRESSION_EXIT_CODE
    console.print("compare: no regression")
    return 0
