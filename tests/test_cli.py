from __future__ import annotations

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


def test_subcommand_help_explains_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--manifest" in out and "Object manifest" in out
    assert "--run.workers" in out and "--config" in out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_help_works(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each command's options resolve (a field shadowing a type once broke `evalset`)."""
    assert main([command, "--help"]) == 0
    assert "usage: imesh " + command in capsys.readouterr().out


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
