"""Training metrics Parquet (MetricsLog) and the training report page (inline SVG plots)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipelines import storage
from pipelines.train_report import (
    PLOT,
    MetricsLog,
    PlotBox,
    plot_points,
    read_metrics,
    render_train_report,
    svg_line_plot,
    write_train_report,
)


@pytest.fixture
def out() -> Iterator[str]:
    url = f"memory://report-{uuid.uuid4().hex}"
    yield url
    storage.remove(url)


def _row(step: int, loss: float) -> dict:
    return {
        "step": step,
        "loss": loss,
        "loss_mse": loss / 2,
        "lr": 1e-4 * step,
        "samples_per_s": 2,
        "data_time_s": 0.5,
        "step_time_s": 2.0,
        "uids": [f"u{step}a", f"u{step}b"],
    }


def test_metrics_parquet_holds_the_appended_rows(out: str) -> None:
    log = MetricsLog(out)
    log.append(_row(1, 3.0))
    log.append({**_row(2, 2.5), "loss": np.float32(2.5), "lr": torch.tensor(2e-4)})
    log.flush()
    table = read_metrics(storage.join(out, "metrics.parquet"))
    assert table.schema.field("step").type == pa.int64()
    assert table.schema.field("uids").type == pa.string()
    for name in ("loss", "loss_mse", "lr", "samples_per_s", "data_time_s", "step_time_s"):
        assert table.schema.field(name).type == pa.float64(), name
    rows = table.to_pylist()
    assert rows == [
        {
            "step": 1,
            "loss": 3.0,
            "loss_mse": 1.5,
            "lr": 1e-4,
            "samples_per_s": 2.0,
            "data_time_s": 0.5,
            "step_time_s": 2.0,
            "uids": "u1a,u1b",
        },
        {
            "step": 2,
            "loss": 2.5,
            "loss_mse": 1.25,
            "lr": pytest.approx(2e-4, rel=1e-7),  # a float32 tensor, widened
            "samples_per_s": 2.0,
            "data_time_s": 0.5,
            "step_time_s": 2.0,
            "uids": "u2a,u2b",
        },
    ]
    assert rows == log.rows
    # a column that appears later is null before it
    log.append({**_row(3, 2.0), "loss_lpips": 0.7})
    log.flush()
    assert read_metrics(log.url).column("loss_lpips").to_pylist() == [None, None, 0.7]
    fs, path = storage.filesystem(out)
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)] == ["metrics.parquet"]


def test_resume_drops_rows_after_the_checkpoint(out: str) -> None:
    log = MetricsLog(out)
    for step in range(1, 6):
        log.append(_row(step, float(10 - step)))
    log.flush()
    resumed = MetricsLog(out, resume_from_step=3)
    assert [r["step"] for r in resumed.rows] == [1, 2, 3]
    resumed.append(_row(4, 0.25))
    resumed.flush()
    table = read_metrics(storage.join(out, "metrics.parquet"))
    assert table.column("step").to_pylist() == [1, 2, 3, 4]
    assert table.column("loss").to_pylist() == [9.0, 8.0, 7.0, 0.25]
    assert MetricsLog(out).rows == []  # no resume step: a fresh log


def test_bad_rows_are_refused(out: str) -> None:
    log = MetricsLog(out)
    with pytest.raises(ValueError, match="integer 'step'"):
        log.append({"loss": 1.0})
    with pytest.raises(ValueError, match="integer 'step'"):
        log.append({"step": 1.5})
    with pytest.raises(TypeError, match="'loss': not a single number"):
        log.append({"step": 1, "loss": np.zeros(2)})
    with pytest.raises(TypeError, match="'uids': a list must hold strings"):
        log.append({"step": 1, "uids": [1, 2]})
    log.append({"step": 1, "note": "a"})
    log.append({"step": 2, "note": 1.0})
    with pytest.raises(TypeError, match="'note' mixes numbers and strings"):
        log.flush()


def test_polyline_points_are_the_hand_computed_coordinates() -> None:
    # default box: data area x 58..346 (288 px), y 26..156 (130 px)
    assert (PLOT.left, PLOT.plot_width, PLOT.top, PLOT.plot_height) == (58, 288, 26, 130)
    # log y: 1, 10, 100 are equally spaced: bottom, middle, top
    assert plot_points([0, 10, 20], [1.0, 10.0, 100.0], log_y=True) == [
        (58.0, 156.0),
        (202.0, 91.0),
        (346.0, 26.0),
    ]
    # linear: steps 0, 5, 20 -> fractions 0, 1/4, 1; values 2, 4, 3 -> 0, 1, 1/2
    assert plot_points([0, 5, 20], [2.0, 4.0, 3.0], log_y=False) == [
        (58.0, 156.0),
        (130.0, 26.0),
        (346.0, 91.0),
    ]
    # one point / a constant: the middle of the range
    assert plot_points([7], [3.0], log_y=False) == [(202.0, 91.0)]
    assert plot_points([1, 3], [5.0, 5.0], log_y=True) == [(58.0, 91.0), (346.0, 91.0)]
    # another box
    box = PlotBox(width=110, height=70, left=10, right=0, top=10, bottom=10)
    assert plot_points([0, 1], [0.0, 1.0], log_y=False, box=box) == [(10.0, 60.0), (110.0, 10.0)]
    # long series: means of consecutive points (steps 0.5, 2.5, 4.5, 6.5: thirds of the range)
    pts = plot_points(np.arange(8), np.arange(8.0), log_y=False, max_points=4)
    third = 130 / 3
    expected = [(58.0, 156.0), (154.0, 156 - third), (250.0, 156 - 2 * third), (346.0, 26.0)]
    np.testing.assert_allclose(pts, expected, rtol=0, atol=1e-9)


def _polyline(svg: str) -> list[tuple[float, float]]:
    match = re.search(r'<polyline [^>]*points="([^"]*)"', svg)
    assert match, svg
    return [tuple(map(float, p.split(","))) for p in match.group(1).split()]


def test_svg_plot_scale_and_skipped_values() -> None:
    svg = svg_line_plot([0, 10, 20], [1.0, 10.0, 100.0], "loss")
    assert _polyline(svg) == [(58.0, 156.0), (202.0, 91.0), (346.0, 26.0)]
    assert "log y" in svg and "3 point(s)" in svg
    # a zero forbids the log axis (auto); then the values are linear
    svg = svg_line_plot([0, 10, 20], [0.0, 5.0, 10.0], "lr")
    assert "log y" not in svg
    assert _polyline(svg) == [(58.0, 156.0), (202.0, 91.0), (346.0, 26.0)]
    # non-finite values are not drawn and counted
    svg = svg_line_plot([0, 10, 20], [1.0, float("nan"), 100.0], "loss")
    assert _polyline(svg) == [(58.0, 156.0), (346.0, 26.0)]
    assert "1 not drawn" in svg
    # an explicit log axis drops non-positive values
    svg = svg_line_plot([0, 1, 2], [-1.0, 1.0, 10.0], "x", log_y=True)
    assert _polyline(svg) == [(58.0, 156.0), (346.0, 26.0)]
    assert "1 not drawn (non-positive or non-finite)" in svg
    assert "no values to draw" in svg_line_plot([], [], "empty")
    assert 'aria-label="a&lt;b&gt;&amp;&quot;c"' in svg_line_plot([0], [1.0], 'a<b>&"c')


def test_report_page(out: str) -> None:
    log = MetricsLog(out)
    for step, loss in ((1, 4.0), (2, 1.0), (3, 2.0)):
        log.append({**_row(step, loss), "loss_<i>": 0.5, "uids": ["<script>alert(1)</script>"]})
    log.flush()
    storage.atomic_write_text(
        storage.join(out, "config.yaml"),
        "stage: nerf\nmodel:\n  variant: tiny-nerf\nname: '<b>run</b>'\n",
    )
    url = write_train_report(out)
    assert url == storage.join(out, "report.html")
    text = storage.read_text(url)
    # self-contained and escaped
    assert "<script" not in text and "src=" not in text and "href=" not in text
    assert "&lt;b&gt;run&lt;/b&gt;" in text and "<b>run" not in text
    assert "<dt>model.variant</dt><dd>tiny-nerf</dd>" in text
    assert "loss_&lt;i&gt;" in text
    # summary: last and minimum of the loss (min 1 at step 2)
    row = re.search(r"<tr><td>loss</td>(.*?)</tr>", text)
    assert row is not None
    assert re.findall(r'<td class="num">([^<]*)</td>', row.group(1)) == ["2", "1", "2"]
    # plots: loss (log y), each term, samples/s, loader share 0.5 / 2, lr
    svgs = re.findall(r"<svg .*?</svg>", text)
    titles = [re.search(r'aria-label="([^"]*)"', s).group(1) for s in svgs]  # type: ignore[union-attr]
    assert titles == [
        "loss",
        "loss_mse",
        "loss_&lt;i&gt;",
        "samples/s",
        "data loader share of step time",
        "lr",
    ]
    top_of_2 = 26 + 130 * (1 - np.log10(2) / np.log10(4))  # log axis from 1 (bottom) to 4 (top)
    expected = [(58.0, 26.0), (202.0, 156.0), (346.0, round(top_of_2, 2))]
    np.testing.assert_allclose(_polyline(svgs[0]), expected, rtol=0, atol=1e-9)
    assert ">2</text>" in svgs[3] and ">0.25</text>" in svgs[4]
    assert "Data loader share of all step time: 25.0 % (1.5 s of 6 s)" in text


def test_report_without_config_or_timings(out: str) -> None:
    with pytest.raises(FileNotFoundError, match="no training metrics"):
        write_train_report(out)
    log = MetricsLog(out)
    log.append({"step": 0, "loss": 1.0})
    log.flush()
    text = storage.read_text(write_train_report(out))
    assert "no config.yaml beside the metrics" in text
    assert "No timing columns." in text and "No learning-rate column." in text
    with pytest.raises(ValueError, match="no 'step' column"):
        render_train_report(pa.table({"loss": [1.0]}))
