"""Bad inputs fail before Ray starts: every command given a path that does not exist exits 2
with one line naming that path, starts no Ray and writes nothing under ``--out``."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipelines.cli import main
from pipelines.schema import manifest_from_rows, write_parquet


class RayStarted(AssertionError):
    pass


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace the Ray session by a tripwire; the list records every attempt to start one."""
    import pipelines.ray_session

    calls: list[Any] = []

    @contextlib.contextmanager
    def tripwire(*args: Any, **kwargs: Any) -> Iterator[None]:
        calls.append((args, kwargs))
        raise RayStarted("the command started Ray")
        yield  # pragma: no cover

    monkeypatch.setattr(pipelines.ray_session, "ray_session", tripwire)
    return calls


@pytest.fixture
def evalset(tmp_path: Path) -> Path:
    """A folder that passes as an evaluation set up to its objects (evalset.json + manifest)."""
    root = tmp_path / "set"
    root.mkdir()
    info = {"dataset": "gso", "backend": "cpu", "shading": "unlit", "size": 320, "samples": 16}
    (root / "evalset.json").write_text(json.dumps(info))
    rows = [{"uid": "a", "source": "gso", "mesh_uri": str(root / "a.obj"), "sha256": None}]
    write_parquet(manifest_from_rows(rows), str(root / "manifest.parquet"))
    return root


# command line (placeholders: {missing} a path that does not exist, {out} the output root,
# {set} a folder that passes as an evaluation set, {dir} an empty folder) -> the path the
# one-line cause must name
CASES: dict[str, tuple[str, str]] = {
    "filter --cache": ("filter --cache {missing} --out {out}", "{missing}"),
    "filter --captions": ("filter --cache {dir} --captions {missing} --out {out}", "{missing}"),
    "filter --manifest": ("filter --manifest {missing} --out {out}", "{missing}"),
    "filter --renders": (
        "filter --cache {dir} --coverage renders --renders {missing} --out {out}",
        "{missing}",
    ),
    "evalset --root gso": ("evalset --dataset gso --root {missing} --out {out}", "{missing}"),
    "evalset --root omni3d": ("evalset --dataset omni3d --root {missing} --out {out}", "{missing}"),
    "evalset --list": (
        "evalset --dataset gso --root {dir} --list {missing} --out {out}",
        "{missing}",
    ),
    "inspect --manifest": ("inspect --manifest {missing} --out {out}", "{missing}"),
    "render --manifest": ("render --manifest {missing} --out {out}", "{missing}"),
    "render --input": ("render --input {missing} --out {out}", "{missing}"),
    "predict --evalset": (
        "predict --evalset {missing} --out {out} --predictor oracle",
        "{missing}",
    ),
    "predict --mesh-dir": (
        "predict --evalset {set} --out {out} --predictor mesh-dir --mesh-dir {missing}",
        "{missing}",
    ),
    "predict --checkpoint": (
        "predict --evalset {set} --out {out} --predictor instantmesh --checkpoint {missing} "
        "--views ground-truth",
        "{missing}",
    ),
    "evaluate --evalset": ("evaluate --evalset {missing} --out {out}", "{missing}"),
    "evaluate without predictions": ("evaluate --evalset {set} --out {out}", "{out}"),
    "benchmark --evalsets": ("benchmark --evalsets {missing} --out {out}", "{missing}"),
    "benchmark --mesh-dir": (
        "benchmark --evalsets {set} --out {out} --predictor mesh-dir --mesh-dir {missing}",
        "{missing}",
    ),
    "evalset --shading lit": (  # cpu renders unlit: evalset.json would record a lie
        "evalset --dataset gso --root {dir} --backend cpu --shading lit --out {out}",
        "--shading lit: the cpu backend renders unlit base colour only; lit views need "
        "--backend blender",
    ),
    "evaluate --shading lit": (
        "evaluate --evalset {set} --out {out} --shading lit --force-render-settings",
        "--shading lit: the cpu backend renders unlit base colour only",
    ),
    "evaluate --lpips-net": (
        "evaluate --evalset {set} --out {out} --lpips-net nope",
        "lpips_net: unknown backbone 'nope'; expected one of",
    ),
    "benchmark --variant": (
        "benchmark --evalsets {set} --out {out} --predictor instantmesh --checkpoint {dir} "
        "--variant nope --views ground-truth",
        "unknown --variant 'nope'; choose one of instant-nerf-base",
    ),
    "report --runs": ("report --runs {missing} --out {out}", "{missing}"),
    "report --reference": ("report --runs {dir} --out {out} --reference {missing}", "{missing}"),
    "compare --baseline": ("compare --baseline {missing} --new {dir} --out {out}", "{missing}"),
    "compare --thresholds": (
        "compare --baseline {dir} --new {dir} --thresholds {missing} --out {out}",
        "{missing}",
    ),
    "nightly --evalsets": ("nightly --evalsets {missing} --out {out}", "{missing}"),
    "nightly --baseline": (
        "nightly --evalsets {set} --out {out} --baseline {missing}",
        "{missing}",
    ),
    "nightly --thresholds": (
        "nightly --evalsets {set} --out {out} --thresholds {missing}",
        "{missing}",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_missing_input_fails_before_ray_and_writes_nothing(
    case: str,
    tmp_path: Path,
    evalset: Path,
    no_ray: list[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    command, named = CASES[case]
    args = command.split()
    where = {
        "{missing}": str(tmp_path / "nope"),
        "{out}": str(tmp_path / "out"),
        "{set}": str(evalset),
        "{dir}": str(tmp_path / "empty"),
    }
    (tmp_path / "empty").mkdir()

    def fill(text: str) -> str:
        for key, value in where.items():
            text = text.replace(key, value)
        return text

    rc = main([fill(a) for a in args])
    err = capsys.readouterr().err
    assert no_ray == [], f"{case}: Ray was started"
    assert rc == 2, (case, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"imesh {args[0]}: error: "), err
    assert fill(named) in lines[0], (case, lines[0])
    assert not (tmp_path / "out").exists(), sorted((tmp_path / "out").rglob("*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "set"]


def test_run_functions_check_inputs_before_writing(tmp_path: Path) -> None:
    """The library entry points check too: nothing is written under --out for a bad input."""
    from pipelines.configs import ConfigError
    from pipelines.evalset import EvalsetConfig, run_evalset
    from pipelines.filter import FilterConfig, run_filter

    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=str(missing)):
        run_filter(FilterConfig(out=str(tmp_path / "f"), cache=str(missing)))
    with pytest.raises(ConfigError, match=str(missing)):
        run_evalset(EvalsetConfig(dataset="gso", root=str(missing), out=str(tmp_path / "e")))
    assert list(tmp_path.iterdir()) == []


def test_bad_path_fails_without_importing_torch_or_ray(tmp_path: Path) -> None:
    """`imesh filter --cache <missing>` and `imesh evalset --root <missing>` exit 2 without
    importing torch (seconds) or Ray: the user errors of the model code are matched lazily."""
    missing, out = tmp_path / "nope", tmp_path / "out"
    code = (
        "import sys\n"
        "from pipelines.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "heavy = sorted(m for m in ('torch', 'ray') if m in sys.modules)\n"
        "print(rc, heavy)\n"
    )
    for args in (
        ["filter", "--cache", str(missing), "--out", str(out)],
        ["evalset", "--dataset", "gso", "--root", str(missing), "--out", str(out)],
    ):
        done = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
        )
        assert done.stdout.strip() == "2 []", (args, done.stdout, done.stderr[-2000:])
        assert done.stderr.strip().count("\n") == 0 and str(missing) in done.stderr
    assert not out.exists()


def test_model_errors_are_user_errors_once_their_module_is_loaded() -> None:
    from instantmesh.checkpoint import CheckpointError
    from pipelines.errors import USER_ERRORS, user_errors

    assert CheckpointError in user_errors()
    assert set(USER_ERRORS) < set(user_errors())
