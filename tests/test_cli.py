from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli import COMMANDS, main, parse
from pipelines.fixtures import FixturesConfig


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("demo", "fixtures", "ingest", "inspect", "status"):
        assert name in COMMANDS
        assert f"  {name}" in out
    # backend names come from the registry (imesh render --help), never a hand-kept list here
    from rendering.backends import BACKENDS

    (render,) = [line for line in out.splitlines() if line.startswith("  render ")]
    assert not [name for name in BACKENDS if name in render], render


def test_subcommand_help_explains_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--manifest" in out and "Object manifest" in out
    assert "--run.workers" in out and "--config" in out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_help_works(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each command's options resolve (a field shadowing a type once broke `evalset`)."""
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: imesh " + command in out
    assert "``" not in out  # option docs are plain text, not reStructuredText
    usage = out.split("\n\n", 1)[0]
    assert "STR" not in usage, usage  # positionals are named (PATH, IMAGE), not typed


def test_unknown_command_and_bad_input_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["renderz"]) == 2
    assert "unknown command 'renderz'" in capsys.readouterr().err
    rc = main(["inspect", "--manifest", str(tmp_path / "nope.parquet"), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and "no Parquet file" in err


def test_yaml_config_then_command_line_overrides(tmp_path: Path) -> None:
    cfg_file = tmp_path / "fx.yaml"
    cfg_file.write_text("out: /tmp/a\nseed: 5\ngso_objects: 2\n")
    cfg = parse("fixtures", ["--config", str(cfg_file), "--seed", "7"])
    assert cfg == FixturesConfig(out="/tmp/a", seed=7, gso_objects=2)


def test_bad_yaml_key_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_file = tmp_path / "fx.yaml"
    cfg_file.write_text("out: /tmp/a\nsede: 5\n")
    assert main(["fixtures", "--config", str(cfg_file)]) == 2
    assert "unknown key(s) sede" in capsys.readouterr().err


def test_root_cause_unwraps_chained_errors() -> None:
    from pipelines.cli import root_cause

    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise RuntimeError("wrapper\nwith a long traceback") from inner
    except RuntimeError as outer:
        assert isinstance(root_cause(outer), KeyError)


def test_cluster_yaml_declares_cpu_render_and_gpu_inference_workers() -> None:
    import yaml

    cfg = yaml.safe_load((Path(__file__).parent.parent / "cluster.yaml").read_text())
    nodes = cfg["available_node_types"]
    assert cfg["head_node_type"] in nodes
    assert (
        nodes["render_cpu"]["resources"]["CPU"] > 0
        and "GPU" not in nodes["render_cpu"]["resources"]
    )
    assert nodes["inference_gpu"]["resources"]["GPU"] >= 1
    assert all(n["max_workers"] >= n["min_workers"] for n in nodes.values())
    assert any("[render,gpu]" in c for c in cfg["setup_commands"])


def test_yaml_keys_types_and_lists_are_checked(tmp_path: Path) -> None:
    from pipelines.benchmark import BenchmarkConfig
    from pipelines.configs import ConfigError, load_config

    cfg_file = tmp_path / "b.yaml"
    # Option spelling accepted; a single path where a list is expected is a one-element list.
    cfg_file.write_text("evalsets: sets/gso\nout: r\nlpips-net: alex\nn_points: 100\n")
    cfg = load_config(BenchmarkConfig, cfg_file)
    assert cfg.evalsets == ["sets/gso"] and cfg.lpips_net == "alex" and cfg.n_points == 100
    for bad, message in (
        ("resolution: high", r"resolution: expected int, got 'high'"),
        ("predictor: magic", r"predictor: expected one of \['oracle'"),
        ("icp: 3", r"icp: expected bool, got 3"),
        ("n_points: true", r"n_points: expected int, got True"),
    ):
        cfg_file.write_text(f"evalsets: [a]\nout: r\n{bad}\n")
        with pytest.raises(ConfigError, match=message):
            load_config(BenchmarkConfig, cfg_file)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["render", "--input", "x.glb", "--out", "o", "--size", "-5"], "--size must be >= 1"),
        (["render", "--input", "x.glb", "--out", "o", "--run.workers", "-3"], "--run.workers"),
        (["demo", "--out", "o", "--render-size", "0"], "--render-size must be >= 1"),
        (["fixtures", "--out", "o", "--n-positives", "-2"], "--n-positives must be >= 0"),
        (["filter", "--cache", "c", "--out", "o", "--coverage-threshold", "2"], "in [0, 1]"),
    ],
)
def test_out_of_range_options_exit_2_before_any_work(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_path_of_the_wrong_kind_and_non_parquet_inputs_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    assert main(["fixtures", "--out", str(a_file / "sub")]) == 2
    err = capsys.readouterr().err
    assert ("File exists" in err or "Not a directory" in err) and str(a_file) in err
    assert err.count("\n") == 1
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    assert main(["inspect", "--manifest", str(junk), "--out", str(tmp_path / "o")]) == 2
    assert "not a readable Parquet file" in capsys.readouterr().err


def test_status_points_at_stage_folders_and_refuses_other_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow as pa

    from pipelines.schema import write_parquet

    for stage in ("filter-files", "filter/filter-coverage", "runs/oracle/predict-gso"):
        (tmp_path / "job" / stage).mkdir(parents=True)
        status = pa.table({"uid": ["a"], "status": ["ok"], "stage": [stage.split("/")[-1]]})
        write_parquet(status, str(tmp_path / "job" / stage / "status.parquet"))
    assert main(["status", str(tmp_path / "job")]) == 2
    err = capsys.readouterr().err  # every stage of an output root, shallower first
    assert "folders under it: filter-files, filter/filter-coverage, runs/oracle/predict-gso" in err
    other = tmp_path / "manifest.parquet"
    write_parquet(pa.table({"uid": ["a"], "path": ["p"]}), str(other))
    assert main(["status", str(other)]) == 2
    assert "not a stage status table" in capsys.readouterr().err


def test_tables_are_not_squeezed_to_80_columns_in_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.summary import LOG_WIDTH, make_console

    monkeypatch.delenv("COLUMNS", raising=False)
    assert make_console().width == LOG_WIDTH  # pytest's captured stdout is not a terminal
    monkeypatch.setenv("COLUMNS", "97")
    assert make_console().width == 97


def test_example_nightly_config_parses() -> None:
    """The README points users at examples/nightly.yaml: it must stay valid."""
    example = Path(__file__).resolve().parents[1] / "examples" / "nightly.yaml"
    cfg = parse("nightly", ["--config", str(example)])
    assert cfg.evalsets == ["evalsets/gso", "evalsets/omni3d"]
    assert cfg.predictor == "instantmesh" and cfg.lpips_net == "vgg" and cfg.device == "auto"


def test_render_input_refuses_a_gso_root_with_the_command_that_handles_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.fixtures import fixture_paths, make_fixtures

    make_fixtures(FixturesConfig(out=str(tmp_path / "fx"), gso_objects=1, n_positives=0))
    gso_root = fixture_paths(str(tmp_path / "fx"))["gso"]
    rc = main(["render", "--input", str(gso_root), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "Google Scanned Objects" in err and "imesh evalset --dataset gso" in err


def test_stage_table_tells_equal_stage_names_apart() -> None:
    from rich.console import Console

    from pipelines.runner import StageReport
    from pipelines.summary import stage_table

    def report(stage: str, out: str) -> StageReport:
        counts = {"ok": 2}
        return StageReport(stage, out, 2, 0, 2, counts, [], 1.0, out + "/s", out + "/r")

    table = stage_table(
        [
            report("evalset-build", "/data/demo/evalsets/gso"),
            report("evalset-build", "/data/demo/evalsets/omni3d"),
            report("predict-gso", "/data/demo/runs/visual-hull"),
        ]
    )
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "evalsets/gso" in text and "evalsets/omni3d" in text and "runs/visual-hull" in text


def test_unreachable_ray_address_fails_fast() -> None:
    import socket
    import time

    from pipelines.configs import ConfigError
    from pipelines.ray_session import check_reachable

    with socket.socket() as s:  # a port nobody listens on: bind, then close
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}")
    assert time.perf_counter() - start < 10
    check_reachable("auto")  # left to Ray


def test_parent_of_evaluation_sets_is_named_with_its_sets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("gso", "omni3d"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "evalset.json").write_text(json.dumps({"dataset": name}))
    rc = main(["predict", "--evalset", str(tmp_path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "holds the evaluation sets gso, omni3d" in err


def test_help_into_a_closed_pipe_is_not_an_error() -> None:
    """`imesh render --help | head -1`: the reader closes the pipe before we write."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pipelines.cli import main; sys.exit(main())",
            "render",
            "--help",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the help text is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert err == ""
