"""The ``imesh`` command line: one entry point, one subcommand per job.

Every subcommand is generated from its job's config dataclass (field docstrings become the
``--help`` text). ``--config FILE.yaml`` loads a config file first; options given on the command
line override it. The resolved config is written next to the job's outputs.

Exit codes: 0 success (per-item failures are status rows, not job failures), 1 unexpected
error, 2 bad usage or bad input (the one-line cause is printed). ``IMESH_DEBUG=1`` prints the
traceback of unexpected errors.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from tyro.conf import Positional, arg

from pipelines import __version__


@dataclass
class StatusConfig:
    """Summarise a stage's compiled status table: counts, failures by cause and the failed
    objects with their full cause."""

    path: Annotated[Positional[str], arg(metavar="PATH")]
    """A `status.parquet` URL, or a stage directory that holds one (e.g. `demo_out/inspect`)."""
    all: bool = False
    """List every failed object (default: the first 20, and how many more there are)."""


@dataclass(frozen=True)
class Command:
    config: Callable[[], type]
    run: Callable[[Any], int | None]
    help: str


def _fixtures() -> type:
    from pipelines.fixtures import FixturesConfig

    return FixturesConfig


def _run_fixtures(cfg: Any) -> int:
    from pipelines.fixtures import make_fixtures
    from pipelines.summary import make_console

    record = make_fixtures(cfg)
    n_kept = sum(o["expected_kept"] for o in record["objaverse"])
    make_console().print(
        f"fixtures in {cfg.out}: {len(record['objaverse'])} Objaverse-shaped objects "
        f"({n_kept} built to pass the filter), {len(record['gso'])} GSO-shaped, "
        f"{len(record['omni3d'])} Omni3D-shaped"
    )
    return 0


def _ingest() -> type:
    from pipelines.ingest import IngestConfig

    return IngestConfig


def _run_ingest(cfg: Any) -> int:
    from pipelines.ingest import run_ingest
    from pipelines.summary import make_console

    table = run_ingest(cfg)
    make_console().print(f"manifest: {table.num_rows} objects -> {cfg.out}")
    return 0


def _inspect() -> type:
    from pipelines.inspect_meshes import InspectConfig

    return InspectConfig


def _run_inspect(cfg: Any) -> int:
    from pipelines.inspect_meshes import run_inspect
    from pipelines.ray_session import ray_session
    from pipelines.schema import read_manifest

    manifest = read_manifest(cfg.manifest)  # bad input fails before Ray starts
    with ray_session(cfg.address):
        report = run_inspect(cfg, manifest)
    _print_reports([report])
    return 0


def _status() -> type:
    return StatusConfig


def _run_status(cfg: StatusConfig) -> int:
    from pipelines import storage
    from pipelines.configs import ConfigError
    from pipelines.schema import read_parquet
    from pipelines.summary import FAILED_SHOWN, print_status

    path = cfg.path
    if not path.endswith(".parquet"):
        path = storage.join(path, "status.parquet")
        if not storage.exists(path) and storage.exists(cfg.path):
            stages = _stage_dirs(cfg.path)
            hint = (
                f"; stage folders under it: {', '.join(stages)}"
                if stages
                else "; point it at a stage folder (<out>/<stage>)"
            )
            raise ConfigError(f"no stage status table at {path}{hint}")
    table = read_parquet(path)
    if "status" not in table.column_names or "uid" not in table.column_names:
        raise ConfigError(
            f"{path} is not a stage status table (no uid/status columns); point imesh status "
            "at a stage folder (<out>/<stage>) or its status.parquet"
        )
    where = cfg.path.removesuffix("/status.parquet") if cfg.path.endswith(".parquet") else cfg.path
    print_status(table, limit=None if cfg.all else FAILED_SHOWN, where=where)
    return 0


def _stage_dirs(url: str) -> list[str]:
    """Sub-folders of ``url`` up to three levels down (shallower first) that hold a stage
    status table: a run folder's stages, or every stage of an output root such as the demo's
    (``inspect``, ``filter/filter-files``, ``runs/oracle/predict-gso``, ...)."""
    from pipelines import storage

    fs, root = storage.filesystem(url)
    found = []
    for depth in ("*", "*/*", "*/*/*"):
        for p in sorted(fs.glob(f"{root.rstrip('/')}/{depth}/status.parquet")):
            found.append(p[len(root.rstrip("/")) + 1 : -len("/status.parquet")])
    return found


def _demo() -> type:
    from pipelines.demo import DemoConfig

    return DemoConfig


def _run_demo(cfg: Any) -> int:
    from pipelines.demo import run_demo

    run_demo(cfg)
    return 0


def _lazy(module: str, attr: str) -> Callable[[], Any]:
    """A loader for ``module.attr`` imported on first use (keeps ``imesh --help`` fast)."""

    def load() -> Any:
        import importlib

        return getattr(importlib.import_module(module), attr)

    return load


def _run_render(cfg: Any) -> int:
    from pipelines.ray_session import ray_session
    from pipelines.render import check_render_config, run_render
    from pipelines.summary import make_console
    from rendering.output_layouts import LAYOUT_DIRS

    manifest = check_render_config(cfg)  # bad input fails before Ray starts
    with ray_session(cfg.address):
        report = run_render(cfg, manifest)
    _print_reports([report])
    make_console().print(
        f"renders: {cfg.out}/{LAYOUT_DIRS[cfg.layout]}/<uid>/  status: {report.status_uri}"
    )
    return 0


def _run_filter(cfg: Any) -> int:
    from rich.markdown import Markdown

    from pipelines import storage
    from pipelines.filter import check_filter_config, run_filter
    from pipelines.ray_session import ray_session
    from pipelines.summary import make_console

    table = check_filter_config(cfg)  # bad input fails before Ray starts, nothing written
    with ray_session(cfg.address):
        result = run_filter(cfg, table)
    console = make_console()
    console.print(Markdown(storage.read_text(storage.join(cfg.out, "funnel.md"))))
    console.print(
        f"kept {result.kept} of {result.decisions.num_rows}: {cfg.out}/filtered_obj_name.json"
    )
    return 0


def _print_reports(reports: Sequence[Any]) -> None:
    from pipelines.summary import make_console, print_report_failures, stage_table

    console = make_console()
    console.print(stage_table(list(reports)))
    print_report_failures(reports, console)  # failures by cause, then the failed objects


def _run_evalset(cfg: Any) -> int:
    from pipelines.evalset import check_evalset_config, run_evalset
    from pipelines.ray_session import ray_session
    from rendering.backends import BackendUnavailable, unavailable_reason

    reason = unavailable_reason(cfg.backend)  # a backend that cannot run here: before Ray
    if reason is not None:
        raise BackendUnavailable(reason)
    selection = check_evalset_config(cfg)  # bad root / list: before Ray, nothing written
    with ray_session(cfg.address):
        report = run_evalset(cfg, selection)
    _print_reports([report])
    print(f"evaluation set: {cfg.set_dir}  (objects/, manifest.parquet, selection.json)")
    return 0


def _run_predict(cfg: Any) -> int:
    from pipelines.benchmark import check_predict_config, run_predict
    from pipelines.ray_session import ray_session

    # not an evaluation set, predictor options missing or pointing nowhere: before Ray
    check_predict_config(cfg, cfg.evalset)
    with ray_session(cfg.address):
        report = run_predict(cfg)
    _print_reports([report])
    print(
        f"predictions: {cfg.out}/predictions/  next: imesh evaluate --evalset {cfg.evalset} --out {cfg.out}"
    )
    return 0


def _run_evaluate(cfg: Any) -> int:
    from pipelines.benchmark import check_evaluate_config, check_predictions, run_evaluate
    from pipelines.ray_session import ray_session

    # not an evaluation set, render settings unlike its own, backend missing, no predictions:
    # before Ray
    check_evaluate_config(cfg, cfg.evalset)
    check_predictions(cfg.out, cfg.evalset)
    with ray_session(cfg.address):
        report, _ = run_evaluate(cfg)
    _print_reports([report])
    print(
        f"run records: {cfg.out}/metrics/*.parquet, {cfg.out}/run.json  next: imesh report --runs {cfg.out} --out ..."
    )
    return 0


def _run_benchmark(cfg: Any) -> int:
    from pipelines.benchmark import check_evaluate_config, check_predict_config, run_benchmark
    from pipelines.ray_session import ray_session

    for evalset in cfg.evalsets:
        # not an evaluation set, predictor options, render settings unlike its own, backend
        # missing: before Ray
        check_predict_config(cfg, evalset)
        check_evaluate_config(cfg, evalset)
    with ray_session(cfg.address):
        reports, _ = run_benchmark(cfg)
    _print_reports(reports)
    print(f"run: {cfg.out}  report: {cfg.out}/report/report.html")
    return 0


def _run_nightly(cfg: Any) -> int:
    from rich.markdown import Markdown

    from pipelines.nightly import check_nightly_config, run_nightly
    from pipelines.ray_session import ray_session
    from pipelines.summary import make_console

    check_nightly_config(cfg)  # bad evaluation sets, predictor, thresholds, baseline: before Ray
    with ray_session(cfg.address):
        code, summary = run_nightly(cfg)
    make_console().print(Markdown(summary))
    return code


def _run_generate(cfg: Any) -> int:
    from pipelines.generate import run_generate
    from pipelines.summary import make_console

    for record in run_generate(cfg):
        make_console().print(
            f"{record['name']}: {record['faces']} faces -> {cfg.out}/{record['name']}/ "
            f"({', '.join(record['files'])})"
        )
    return 0


def _run_module(module: str, attr: str) -> Callable[[Any], int | None]:
    def run(cfg: Any) -> int | None:
        fn: Callable[[Any], int | None] = _lazy(module, attr)()
        return fn(cfg)

    return run


COMMANDS: dict[str, Command] = {
    "demo": Command(_demo, _run_demo, "Run the demo chain on procedural objects (CPU, local Ray)."),
    "fixtures": Command(
        _fixtures, _run_fixtures, "Write procedural Objaverse/Cap3D/GSO/Omni3D-shaped datasets."
    ),
    "ingest": Command(_ingest, _run_ingest, "Objaverse cache (+ Cap3D captions) -> manifest."),
    "inspect": Command(
        _inspect, _run_inspect, "Validate meshes and record statistics on Ray (resumable)."
    ),
    "status": Command(
        _status, _run_status, "Summarise a stage's status table (failed objects and causes)."
    ),
    "filter": Command(
        _lazy("pipelines.filter", "FilterConfig"),
        _run_filter,
        "Five-criteria Objaverse filter (cascade on Ray) -> filtered_obj_name.json + funnel.",
    ),
    "render": Command(
        _lazy("pipelines.render", "RenderConfig"),
        _run_render,
        "Render objects: 32 training views / Zero123++ / eval views, with a registered --backend.",
    ),
    "shards": Command(
        _lazy("pipelines.shards", "ShardsConfig"),
        _run_module("pipelines.shards", "main_shards"),
        "Pack a finished render stage into WebDataset tar shards + index (resumable, on Ray).",
    ),
    "evalset": Command(
        _lazy("pipelines.evalset", "EvalsetConfig"),
        _run_evalset,
        "Build a GSO / OmniObject3D evaluation set (selection, GT meshes, GT views) on Ray.",
    ),
    "predict": Command(
        _lazy("pipelines.benchmark", "PredictConfig"),
        _run_predict,
        "Run a predictor (actor pool) over an evaluation set -> predicted meshes.",
    ),
    "evaluate": Command(
        _lazy("pipelines.benchmark", "EvaluateConfig"),
        _run_evaluate,
        "Render + score a run's predictions -> per-view/per-object Parquet run records.",
    ),
    "benchmark": Command(
        _lazy("pipelines.benchmark", "BenchmarkConfig"),
        _run_benchmark,
        "predict + evaluate on one or more evaluation sets, then the report.",
    ),
    "nightly": Command(
        _lazy("pipelines.nightly", "NightlyConfig"),
        _run_nightly,
        "Nightly regression: evaluation subset -> run -> compare with baseline; exit 3 on regression.",
    ),
    "generate": Command(
        _lazy("pipelines.generate", "GenerateConfig"),
        _run_generate,
        "Image(s) -> Zero123++ six views -> LRM -> mesh + turntable (local, GPU if present).",
    ),
    "report": Command(
        _lazy("pipelines.report", "ReportConfig"),
        _run_module("pipelines.report", "run_report"),
        "Paper tables (markdown + LaTeX) and an HTML report from evaluation runs.",
    ),
    "compare": Command(
        _lazy("pipelines.compare", "CompareConfig"),
        _run_module("pipelines.compare", "run_compare"),
        "Compare two evaluation runs; exit 3 on a regression (the nightly check).",
    ),
    "train": Command(
        _lazy("pipelines.train", "TrainConfig"),
        _run_module("pipelines.train", "main_train"),
        "Train the LRM (stage nerf, then mesh) on instantmesh32 renders/shards with Ray Train.",
    ),
    "plan": Command(
        _lazy("pipelines.plan", "PlanConfig"),
        _run_module("pipelines.plan", "run_plan"),
        "Wall time, worker-hours and cost of a target from a finished stage's timings (no Ray).",
    ),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        f"imesh {__version__}: InstantMesh data-and-evaluation pipeline",
        "",
        "usage: imesh <command> [--config FILE.yaml] [options]   (imesh <command> --help)",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {cmd.help}" for name, cmd in COMMANDS.items()]
    lines += [
        "",
        "Options given on the command line override values from --config. Paths are local",
        "directories or fsspec URLs (s3://bucket/prefix). RAY_ADDRESS or --address sends Ray",
        "jobs to a cluster; the default is a local embedded Ray.",
    ]
    return "\n".join(lines)


def _pop_config(args: list[str]) -> tuple[str | None, list[str]]:
    rest: list[str] = []
    path = None
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--config":
            if i + 1 >= len(args):
                raise SystemExit("imesh: error: --config needs a file path")
            path = args[i + 1]
            i += 2
            continue
        if a.startswith("--config="):
            path = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return path, rest


def parse(name: str, args: Sequence[str]) -> Any:
    """Parse a subcommand's arguments into its config (``--config`` first, then overrides)."""
    import tyro

    from pipelines.configs import check_ranges, load_config

    cmd = COMMANDS[name]
    cls = cmd.config()
    config_path, rest = _pop_config(list(args))
    default = load_config(cls, config_path) if config_path else None
    description = (
        f"{cmd.help}\n\nAlso: --config FILE.yaml loads options from a YAML file "
        "(keys = option names); command-line options override it."
    )
    cfg = tyro.cli(cls, args=rest, default=default, prog=f"imesh {name}", description=description)
    check_ranges(cfg)
    return cfg


def root_cause(e: BaseException) -> BaseException:
    """The innermost exception behind ``e`` (Ray wraps worker errors in several layers)."""
    seen: set[int] = set()
    while id(e) not in seen:
        seen.add(id(e))
        inner = getattr(e, "cause", None) or e.__cause__
        if not isinstance(inner, BaseException):
            break
        e = inner
    return e


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's exit-time flush of a closed pipe stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        print(__version__)
        return 0
    name = args[0]
    if name not in COMMANDS:
        print(
            f"imesh: error: unknown command {name!r}; choose from {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    from pipelines.errors import user_errors

    try:
        cfg = parse(name, args[1:])
        rc = COMMANDS[name].run(cfg)
    except SystemExit as e:  # tyro's --help / usage errors
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    except KeyboardInterrupt:
        print(f"imesh {name}: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed by the reader (e.g. `imesh render --help | head`)
        _silence_stdout()
        return 0
    except user_errors() as e:  # evaluated only when an exception arrives
        print(f"imesh {name}: error: {e}", file=sys.stderr)
        return 2
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        # An output or input path the user gave is of the wrong kind (a file where a folder is
        # needed, or the reverse) or not writable.
        paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p)
        print(f"imesh {name}: error: {e.strerror or e}: {paths}", file=sys.stderr)
        return 2
    except Exception as e:
        if os.environ.get("IMESH_DEBUG"):
            traceback.print_exc()
        from pipelines.storage import storage_fault

        fault = storage_fault(e)  # a full / read-only disk: the machine's fault, named (exit 2)
        if fault is not None:
            print(f"imesh {name}: error: {fault}", file=sys.stderr)
            return 2
        cause = root_cause(e)
        first = (str(cause).strip().splitlines() or [""])[0]
        print(
            f"imesh {name}: error: {type(cause).__name__}: {first} "
            "(IMESH_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1
    return int(rc or 0)


def entry() -> None:
    """Console-script entry point (``imesh``): run ``main`` and exit with its code.

    Ray 2.60 occasionally aborts (SIGABRT) in its C++ teardown at interpreter exit even after a
    clean ``ray.shutdown()`` (seen here about 1 run in 7), turning a finished job's exit code into
    134. By the time ``main`` returns every output is published and flushed, so when Ray was used
    we flush the streams and leave without interpreter finalization.
    """
    rc = main()
    if "ray" in sys.modules:
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    raise SystemExit(rc)


if __name__ == "__main__":
    entry()
