"""``imesh report``: paper tables (Markdown + LaTeX) and an HTML report from evaluation runs.

Reads one or more run directories (the run-records layout of :mod:`evaluation.run_records`),
aggregates them into the InstantMesh paper's Tables 2-4 beside the reference numbers
(:mod:`evaluation.tables`), and writes into ``out``:

- ``tables.md``   Markdown tables (also printed to the terminal),
- ``tables.tex``  LaTeX tables (booktabs; best value per column in bold),
- ``report.html`` a self-contained HTML report (:mod:`evaluation.html_report`),
- ``report_config.yaml`` the resolved config with provenance.

When a run's LPIPS column reads ``n/a`` for lack of backbone weights, the tables' notes and the
terminal say which file is needed, where it goes and the command that installs it from a local
copy (:func:`evaluation.metrics.lpips_install_hint`).

Exit code 0. Bad input (a missing run directory, a malformed run, a bad reference file) raises
an :class:`evaluation.run_records.EvaluationInputError` (a ``ValueError``) naming the problem;
the CLI reports it as a one-line error with exit 2 once ``pipelines.errors.USER_ERRORS`` lists it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipelines import storage
from pipelines.configs import NO_HASH, ConfigError, write_resolved_config

Format = Literal["md", "tex", "html"]
FORMATS: tuple[str, ...] = ("md", "tex", "html")


@dataclass
class ReportConfig:
    """Paper tables (Markdown, LaTeX) and an HTML report from one or more evaluation runs."""

    runs: list[str]
    """Run directories (URLs) to report, each holding run.json and metrics/*.parquet; every run becomes one row per predictor in each table whose dataset and view set it has."""
    out: str
    """Output directory (URL) for tables.md, tables.tex, report.html and report_config.yaml."""
    reference: str | None = None
    """Reference-numbers YAML (URL); default: the packaged evaluation/data/paper_reference.yaml (InstantMesh arXiv 2404.07191; unverified cells are empty)."""
    formats: tuple[Format, ...] = ("md", "tex", "html")
    """Which outputs to write: md (tables.md), tex (tables.tex), html (report.html)."""
    worst_k: int = 5
    """HTML report: objects shown per 'worst' list (lowest PSNR, highest Chamfer Distance)."""
    print_tables: bool = field(default=True, metadata=NO_HASH)
    """Print the Markdown tables to the terminal."""


def _validate(cfg: ReportConfig) -> None:
    if not cfg.runs:
        raise ConfigError("report: give at least one run directory (--runs URL [URL ...])")
    bad = sorted(set(cfg.formats) - set(FORMATS))
    if bad:
        raise ConfigError(f"report: unknown format(s) {bad}; choose from {list(FORMATS)}")
    if cfg.worst_k < 0:
        raise ConfigError(f"report: worst_k must be >= 0, got {cfg.worst_k}")


def run_report(cfg: ReportConfig) -> int:
    """Write the requested outputs into ``cfg.out`` and print the tables; returns 0."""
    from evaluation.html_report import write_html_report
    from evaluation.run_records import read_run
    from evaluation.tables import load_reference, paper_tables, tables_to_latex, tables_to_markdown

    _validate(cfg)
    reference = load_reference(cfg.reference)
    runs = [read_run(url) for url in cfg.runs]
    tables = paper_tables(runs, reference)
    markdown = tables_to_markdown(tables)
    storage.makedirs(cfg.out)
    written = []
    if "md" in cfg.formats:
        url = storage.join(cfg.out, "tables.md")
        storage.atomic_write_text(url, markdown)
        written.append(url)
    if "tex" in cfg.formats:
        url = storage.join(cfg.out, "tables.tex")
        storage.atomic_write_text(url, tables_to_latex(tables))
        written.append(url)
    if "html" in cfg.formats:
        written.append(write_html_report(runs, cfg.out, cfg.worst_k, tables=tables))
    write_resolved_config(cfg, storage.join(cfg.out, "report_config.yaml"))

    from rich.markdown import Markdown

    from pipelines.summary import make_console, print_lpips_hints

    console = make_console()
    if cfg.print_tables:
        console.print(Markdown(markdown))
    print_lpips_hints(runs, console)
    console.print(f"report: {len(runs)} run(s), {len(tables)} table(s) -> " + ", ".join(written))
    return 0
