"""Plots of a walker run (protomodels.plots), on a tiny hand-written run directory."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from protomodels import plots  # noqa: E402
from protomodels.exceptions import ProtomodelsError, RunError  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

COMBINATION = [{"analysis_id": "CMS-SUS-21-002", "dataset": "combined", "type": "combined",
                "sqrts": 13},
               {"analysis_id": "ATLAS-SUSY-2016-07", "dataset": "(UL)", "type": "UL",
                "sqrts": 13}]

MODEL_A = {"masses": {"XZ1": 163.0, "Xt": 1166.0, "Xb": 1180.0, "XW1": 400.0},
           "decays": {"Xt": {"(1000022, 6)": 1.0}, "Xb": {"(1000022, 5)": 1.0},
                      "XW1": {"(1000022, 24)": 1.0}},
           "ssm": [[1000006, -1000006, 1.0]]}
MODEL_B = {"masses": {"XZ1": 240.0, "Xg": 1800.0, "Xe": 560.0},
           "decays": {"Xg": {"(1000022, 1, -1)": 1.0}, "Xe": {"(1000022, 11)": 1.0}},
           "ssm": [[1000021, 1000021, 0.8]]}


def _step(step: int, k: float, model: dict, accepted: bool = True) -> dict:
    return {"step": step, "move": "mass", "accepted": accepted, "K": k, "TL": k + 1.0,
            "mu_hat": 0.6, "mu_max": 2.0 if step % 2 else None,
            "combination": COMBINATION, "model": model}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """2 walkers x 5 steps and a hiscores file with 2 entries."""
    run = tmp_path / "run"
    traces = {0: [0.0, 0.5, 0.5, 1.2, 2.1], 1: [0.0, 0.0, 0.8, 0.8, 1.5]}
    for walker, ks in traces.items():
        folder = run / f"walker-{walker}"
        folder.mkdir(parents=True)
        lines = [json.dumps(_step(i + 1, k, MODEL_A if walker == 0 else MODEL_B))
                 for i, k in enumerate(ks)]
        (folder / "history.jsonl").write_text("\n".join(lines) + "\n")
    entries = [
        {"rank": 1, "K": 2.1, "TL": 3.1, "mu_hat": 0.6, "walker": 0, "step": 5,
         "model": MODEL_A, "combination": COMBINATION},
        {"rank": 2, "K": 1.5, "TL": 2.5, "mu_hat": 0.6, "walker": 1, "step": 5,
         "model": MODEL_B, "combination": COMBINATION},
    ]
    (run / "hiscores.json").write_text(json.dumps(
        {"schema": "protomodels.hiscores/1", "entries": entries}))
    return run


def gaussian(center: float, width: float):
    return lambda mu: 0.5 * ((np.asarray(mu) - center) / width) ** 2


MEMBERS = [("CMS-SUS-21-002", gaussian(0.8, 0.4)), ("ATLAS-SUSY-2016-07", gaussian(0.2, 0.5))]


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0 and path.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_run_writes_all_pngs(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "plots" / "nested"
    written = plots.plot_run(run_dir, out, likelihood_members=MEMBERS, mu_hat=0.6, mu_max=1.8)
    assert [p.name for p in written] == ["k_trace.png", "mass_spectrum.png", "likelihoods.png"]
    for path in written:
        assert path.parent == out
        assert _is_png(path), path


def test_plot_run_without_likelihoods(run_dir: Path, tmp_path: Path) -> None:
    written = plots.plot_run(run_dir, tmp_path / "out")
    assert [p.name for p in written] == ["k_trace.png", "mass_spectrum.png"]
    assert not (tmp_path / "out" / "likelihoods.png").exists()
    assert all(_is_png(p) for p in written)


def test_plot_run_takes_mu_from_best_hiscore(run_dir: Path, tmp_path: Path) -> None:
    written = plots.plot_run(run_dir, tmp_path / "out", likelihood_members=MEMBERS)
    assert _is_png(written[-1])
    assert plots._best_mu(run_dir) == (0.6, 2.0)  # mu_max from walker-0's step 5


def test_k_trace_has_one_line_per_walker(run_dir: Path, tmp_path: Path) -> None:
    fig = plots.plot_k_trace(run_dir, tmp_path / "k.png")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2
    assert list(lines[0].get_ydata()) == [0.0, 0.5, 0.5, 1.2, 2.1]
    assert list(lines[1].get_xdata()) == [1, 2, 3, 4, 5]
    assert fig.axes[0].get_xlabel() == "step" and fig.axes[0].get_ylabel() == "K"
    assert fig.axes[0].get_legend() is not None
    assert _is_png(tmp_path / "k.png")


def test_k_trace_orders_walkers_numerically(run_dir: Path, tmp_path: Path) -> None:
    (run_dir / "walker-10").mkdir()
    (run_dir / "walker-10" / "history.jsonl").write_text(json.dumps(_step(1, 0.3, MODEL_A)) + "\n")
    (run_dir / "walker-x").mkdir()  # not a walker folder: ignored
    fig = plots.plot_k_trace(run_dir, tmp_path / "k.png")
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["walker 0", "walker 1", "walker 10"]


def test_mass_spectrum_labels_every_particle(run_dir: Path, tmp_path: Path) -> None:
    fig = plots.plot_mass_spectrum(run_dir, tmp_path / "m.png", top=5)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sorted(texts) == sorted(["XZ1 163", "XW1 400", "Xt 1166", "Xb 1180",
                                    "XZ1 240", "Xe 560", "Xg 1800"])
    assert "2.10" in fig.axes[0].get_title() and "1.50" in fig.axes[0].get_title()
    assert _is_png(tmp_path / "m.png")


def test_mass_spectrum_top_limits_entries(run_dir: Path, tmp_path: Path) -> None:
    fig = plots.plot_mass_spectrum(run_dir, tmp_path / "m.png", top=1)
    assert len(fig.axes[0].texts) == len(MODEL_A["masses"])


def test_likelihoods_unbounded_mu_max(tmp_path: Path) -> None:
    fig = plots.plot_likelihoods(MEMBERS, 0.5, float("inf"), tmp_path / "l.png")
    ax = fig.axes[0]
    assert ax.get_xlim() == pytest.approx((0.0, 1.5))  # 3 * mu_hat
    curves = [line for line in ax.get_lines() if len(line.get_xdata()) > 2]
    assert [c.get_label() for c in curves] == ["CMS-SUS-21-002", "ATLAS-SUSY-2016-07", "sum"]
    for curve in curves:
        assert min(curve.get_ydata()) == pytest.approx(0.0, abs=1e-9)
    assert _is_png(tmp_path / "l.png")


def test_likelihoods_accept_scalar_nll(tmp_path: Path) -> None:
    members = [("scalar", lambda mu: 0.5 * (float(mu) - 1.0) ** 2 if np.ndim(mu) == 0
                else math.nan)]
    fig = plots.plot_likelihoods(members, None, None, tmp_path / "l.png")
    assert fig.axes[0].get_xlim() == pytest.approx((0.0, 1.0))


def test_likelihoods_need_members(tmp_path: Path) -> None:
    with pytest.raises(ProtomodelsError, match="no likelihood members"):
        plots.plot_likelihoods([], 0.5, 1.0, tmp_path / "l.png")


def test_missing_run_pieces_are_run_errors(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="no walker"):
        plots.plot_k_trace(tmp_path, tmp_path / "k.png")
    with pytest.raises(RunError, match="no hiscore entries"):
        plots.plot_mass_spectrum(tmp_path, tmp_path / "m.png")


def test_corrupt_history_names_the_line(run_dir: Path, tmp_path: Path) -> None:
    with open(run_dir / "walker-1" / "history.jsonl", "a") as handle:
        handle.write("{not json\n")
    with pytest.raises(RunError, match=r"walker-1/history.jsonl:6"):
        plots.plot_k_trace(run_dir, tmp_path / "k.png")


def test_missing_matplotlib_is_explained(run_dir: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ProtomodelsError, match=r"pip install 'protomodels\[plots\]'"):
        plots.plot_k_trace(run_dir, tmp_path / "k.png")


def test_save_figure_is_atomic_one_png_path_and_format_by_suffix(tmp_path: Path) -> None:
    """A file from ``save_figure`` is the in-memory rendering (``figure_png`` for .png),
    written atomically (no temporary file left, the folder created); .pdf and .svg are
    rendered as such; an unwritable path is a one-line error naming it."""
    fig = plots.figure(2.0, 1.5)
    fig.add_subplot().plot([0, 1], [0, 1])
    plots.save_figure(fig, None)  # in memory only: nothing to write
    plots.save_figure(fig, tmp_path / "new" / "a.png")
    assert (tmp_path / "new" / "a.png").read_bytes() == plots.figure_png(fig)
    plots.save_figure(fig, tmp_path / "new" / "a.pdf")
    plots.save_figure(fig, tmp_path / "new" / "a.svg")
    assert (tmp_path / "new" / "a.pdf").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in (tmp_path / "new" / "a.svg").read_bytes()[:2000]
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["a.pdf", "a.png", "a.svg"]
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(ProtomodelsError, match=rf"^{blocker / 'a.png'}: cannot write the plot"):
        plots.save_figure(fig, blocker / "a.png")
