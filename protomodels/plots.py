"""Pictures of a walker run: K traces, the best mass spectra, combined likelihoods.

The plots are for looking at a run by eye (did the walkers converge, what do the best
models look like, which results drive the excess), so they read only the files a run
leaves on disk (``walker-<i>/history.jsonl`` and ``hiscores.json``) and can be made
while the walkers are still going.  matplotlib is an optional dependency: it is
imported inside the functions, and figures are drawn on the non-interactive Agg
canvas directly, so no global pyplot state (backend, open figures) is touched.

Every ``plot_*`` function returns its Figure and writes it only when given a path
(``save_figure``: atomically, as PNG unless the suffix names another format), so
``protomodels report`` can inline the same pictures (``figure_png``) instead of reading
files back.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import hiscores
from .exceptions import ProtomodelsError, RunError
from .model import FROZEN_MASS
from .runs import chain_folder, chain_folders, read_history

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

NllFunction = Callable[[np.ndarray], np.ndarray]

MISSING_MATPLOTLIB = "plots need matplotlib: pip install 'protomodels[plots]'"
DPI = 120
GRID_POINTS = 301

#: Particle families (by name prefix) and their colours in the mass spectrum.
FAMILIES: Tuple[Tuple[str, Tuple[str, ...], str], ...] = (
    ("gluino", ("Xg",), "tab:red"),
    ("squarks", ("Xd", "Xu", "Xs", "Xc", "Xb", "Xt"), "tab:blue"),
    ("sleptons", ("Xe", "Xmu", "Xtau", "Xnu"), "tab:green"),
    ("electroweakinos", ("XZ", "XW"), "tab:purple"),
)


def require_matplotlib() -> None:
    """``ProtomodelsError`` naming the ``plots`` extra when matplotlib is missing: call it
    before importing anything from matplotlib (or doing work whose result needs a plot)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ProtomodelsError(MISSING_MATPLOTLIB) from None


def figure(width: float, height: float) -> "Figure":
    """A Figure of ``width`` x ``height`` inches (``DPI`` dots per inch) on an Agg canvas;
    matplotlib is imported here so that it stays optional (``ProtomodelsError`` naming the
    extra without it).  Every plot of the package starts here."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def figure_bytes(fig: "Figure", image_format: str = "png") -> bytes:
    """``fig`` rendered in memory at ``DPI`` as ``image_format`` (png, pdf, svg: any
    format of its canvas)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=image_format, dpi=DPI)
    return buffer.getvalue()


def figure_png(fig: "Figure") -> bytes:
    """The PNG bytes of ``fig``, for pages that inline their images (``report``)."""
    return figure_bytes(fig, "png")


def save_figure(fig: "Figure", path: Optional[Path]) -> None:
    """Write ``fig`` at ``path`` atomically (``atomic.write_bytes_atomic``; its folder is
    created), as the format its suffix names (.pdf, .svg, ...), else PNG; None: keep it
    in memory only.  ``ProtomodelsError`` naming the path when it cannot be written."""
    from .atomic import write_bytes_atomic

    if path is None:
        return
    path = Path(path)
    suffix = path.suffix[1:].lower()
    image_format = suffix if suffix in fig.canvas.get_supported_filetypes() else "png"
    payload = figure_bytes(fig, image_format)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, payload)
    except OSError as error:
        raise ProtomodelsError(f"{path}: cannot write the plot "
                               f"({error.strerror or error})") from None
    logger.info("wrote %s", path)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _k_points(folder: Path) -> List[Tuple[int, float]]:
    """(step, K) of every history line of a chain with a finite K."""
    return [(s["step"], s["K"]) for s in read_history(folder)
            if _finite(s.get("step")) and _finite(s.get("K"))]


def plot_k_trace(run_dir: Path, path: Optional[Path] = None) -> "Figure":
    """K against step for every walker: shows burn-in, mixing and where walkers got stuck.

    K only changes on accepted steps, so each walker is drawn as a step line.
    """
    walkers = chain_folders(run_dir)
    fig = figure(8.0, 4.8)
    ax = fig.add_subplot()
    best: Optional[Tuple[float, int]] = None
    for index, folder in walkers:
        points = _k_points(folder)
        steps = [p[0] for p in points]
        ks = [p[1] for p in points]
        ax.plot(steps, ks, drawstyle="steps-post", linewidth=1.2, label=f"walker {index}")
        for step, k in points:
            if best is None or k > best[0]:
                best = (k, step)
    if best is not None:
        ax.scatter([best[1]], [best[0]], marker="*", s=120, color="gold",
                   edgecolor="black", zorder=5, label=f"best K = {best[0]:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("K")
    ax.set_title(f"K trace: {Path(run_dir).name or run_dir}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small", ncol=1 if len(walkers) <= 8 else 2)
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def plot_k_trace_by_temperature(run_dir: Path, temperatures: Dict[int, float],
                                path: Optional[Path] = None) -> "Figure":
    """One panel of K traces per rung of a replica-exchange ladder (``temperatures``:
    chain -> its fixed temperature), sharing the K axis: the cold rungs should climb and
    settle, the hot ones roam; a rung whose chains never move points at a ladder gap."""
    rungs = sorted(set(temperatures.values()))
    if not rungs:
        raise RunError(f"{run_dir}: no chains to plot by temperature")
    columns = min(3, len(rungs))
    rows = math.ceil(len(rungs) / columns)
    fig = figure(3.4 * columns + 0.6, 2.5 * rows + 0.6)
    axes = fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).ravel()
    folders = dict(chain_folders(run_dir))
    for ax, temperature in zip(axes, rungs):
        for chain in sorted(c for c, t in temperatures.items() if t == temperature):
            if chain not in folders:
                continue
            points = _k_points(folders[chain])
            ax.plot([p[0] for p in points], [p[1] for p in points], drawstyle="steps-post",
                    linewidth=1.0, label=f"chain {chain}")
        ax.set_title(f"T = {temperature:g}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize="x-small")
    for ax in axes[len(rungs):]:
        ax.set_visible(False)
    for ax in axes[::columns]:
        ax.set_ylabel("K")
    for ax in axes[len(rungs) - columns:len(rungs)]:
        ax.set_xlabel("step")
        ax.xaxis.set_tick_params(labelbottom=True)
    fig.suptitle(f"K traces per temperature: {Path(run_dir).name or run_dir}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def _family_colour(name: str) -> str:
    for _, prefixes, colour in FAMILIES:
        if name.startswith(prefixes):
            return colour
    return "black"


def _spread(values: Sequence[float], gap: float, low: float, high: float) -> List[float]:
    """Label heights near ``values`` (sorted ascending) at least ``gap`` apart, in [low, high]."""
    out = list(values)
    for i in range(1, len(out)):
        out[i] = max(out[i], out[i - 1] + gap)
    if out and out[-1] > high:
        out[-1] = high
        for i in range(len(out) - 2, -1, -1):
            out[i] = min(out[i], out[i + 1] - gap)
    return [max(v, low) for v in out]


def plot_mass_spectrum(run_dir: Path, path: Optional[Path] = None, top: int = 5) -> "Figure":
    """Particle masses of the best ``top`` hiscore models side by side, to compare them.

    x is the hiscore rank, y the mass in GeV; each particle is a horizontal tick,
    labelled with its name and coloured by family.
    """
    source = Path(run_dir) / "hiscores.json"
    entries = sorted(hiscores.read(source), key=lambda e: e.get("rank", 0))[:max(top, 0)]
    if not entries:
        raise RunError(f"{source}: no hiscore entries to plot")
    return plot_spectra(entries, path)


def plot_spectra(entries: Sequence[Dict[str, Any]], path: Optional[Path] = None,
                 annotations: Optional[Sequence[Sequence[str]]] = None,
                 title: str = "Best proto-models") -> "Figure":
    """The level plot of ``plot_mass_spectrum`` for the given hiscore entries (each with
    ``model``, ``K`` and optionally ``rank``, ``walker``, or a ``label`` for its column);
    ``annotations``: per entry, lines written under its column (``report``: the analyses
    of its combination and their share of TL, so one sees which results each spectrum
    answers to)."""
    if not entries:
        raise ProtomodelsError("plot_spectra: no models to draw")
    spectra = []
    for entry in entries:
        masses = {name: float(m) for name, m in entry["model"]["masses"].items()
                  if float(m) < FROZEN_MASS}
        spectra.append(sorted(masses.items(), key=lambda item: item[1]))
    all_masses = [m for spectrum in spectra for _, m in spectrum] or [0.0]
    span = max(max(all_masses) - min(all_masses), 100.0)
    low = max(0.0, min(all_masses) - 0.08 * span)
    high = max(all_masses) + 0.08 * span
    gap = 0.035 * (high - low)

    extra = max((len(lines) for lines in annotations or []), default=0)
    fig = figure(max(5.5 if len(entries) == 1 else 7.0,
                      (2.3 if annotations else 1.6) * len(entries) + 3.5),
                  6.0 + 0.13 * extra)
    ax = fig.add_subplot()
    for x, (entry, spectrum) in enumerate(zip(entries, spectra), start=1):
        names = [name for name, _ in spectrum]
        masses = [m for _, m in spectrum]
        label_heights = _spread(masses, gap, low + gap / 2, high - gap / 2)
        for name, mass, y in zip(names, masses, label_heights):
            colour = _family_colour(name)
            ax.plot([x - 0.25, x + 0.25], [mass, mass], color=colour, linewidth=2.5,
                    solid_capstyle="butt")
            if abs(y - mass) > 1e-9:  # label moved off its tick: connect them
                ax.plot([x + 0.25, x + 0.3], [mass, y], color=colour, linewidth=0.6)
            ax.text(x + 0.32, y, f"{name} {mass:.0f}", va="center", ha="left",
                    fontsize=8, color=colour)
    ax.set_xlim(0.4, len(entries) + 0.95)
    ax.set_ylim(low, high)
    ax.set_xticks(range(1, len(entries) + 1))
    labels = [e.get("label") or f"#{e.get('rank', i)}\nwalker {e.get('walker', '?')}"
              for i, e in enumerate(entries, start=1)]
    if annotations:
        labels = [label + "".join(f"\n{line}" for line in lines)
                  for label, lines in zip(labels, annotations)]
    ax.set_xticklabels(labels, fontsize=8 if not annotations else 7)
    if not any("label" in e for e in entries):
        ax.set_xlabel("hiscore rank")
    ax.set_ylabel("mass [GeV]")
    ax.grid(True, axis="y", alpha=0.3)
    ks = ", ".join(("" if "label" in e else f"#{e.get('rank', i)} ") + f"K={e['K']:.2f}"
                   for i, e in enumerate(entries, start=1))
    ax.set_title(f"{title}: {ks}", fontsize=10)
    handles = [ax.plot([], [], color=colour, linewidth=2.5, label=family)[0]
               for family, _, colour in FAMILIES
               if any(_family_colour(n) == colour for s in spectra for n, _ in s)]
    if handles:  # outside the axes: a heavy particle of rank 1 would hide behind it
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  fontsize="small", frameon=False)
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def _mu_range(mu_hat: Optional[float], mu_max: Optional[float]) -> float:
    """Upper end of the mu axis: past mu_max, or around mu_hat when mu_max is unbounded."""
    if _finite(mu_max) and mu_max > 0:
        return 1.5 * mu_max
    if _finite(mu_hat) and mu_hat > 0:
        return 3.0 * mu_hat
    return 1.0


def _evaluate(nll: NllFunction, grid: np.ndarray, label: str) -> np.ndarray:
    """nll on the grid; falls back to point by point for a function that is not vectorised."""
    values = np.asarray(nll(grid), dtype=float)
    if values.shape != grid.shape:
        values = np.array([float(nll(mu)) for mu in grid])
    if not np.isfinite(values).any():
        raise ProtomodelsError(f"likelihood {label!r}: nll is not finite anywhere on the mu grid")
    return values


def _delta(values: np.ndarray) -> np.ndarray:
    return 2.0 * (values - np.nanmin(np.where(np.isfinite(values), values, np.nan)))


def _y_top(grid: np.ndarray, curves: List[np.ndarray], mu_max: Optional[float]) -> float:
    """Show every curve fully up to mu_max (where the physics is), not the steep walls beyond."""
    inside = grid <= mu_max if _finite(mu_max) else np.ones_like(grid, dtype=bool)
    values = np.concatenate([c[inside] for c in curves])
    values = values[np.isfinite(values)]
    top = float(values.max()) if values.size else 1.0
    return max(1.0, min(top, 50.0)) * 1.15


def combination_curves(result: Any) -> List[Tuple[str, NllFunction]]:
    """(label, nll(mu)) of each member of a ``significance.Significance``'s best
    combination, valid up to its mu_max (10 when unbounded): what ``plot_likelihoods``
    draws for ``plot`` and ``report``."""
    end = result.mu_max if math.isfinite(result.mu_max) else 10.0
    return [(f"{m.prediction.analysis_id} {m.prediction.dataset_id}", m.prediction.curve(end))
            for m in result.combination]


def plot_likelihoods(members: List[Tuple[str, NllFunction]], mu_hat: Optional[float],
                     mu_max: Optional[float], path: Optional[Path] = None,
                     size: Tuple[float, float] = (8.0, 5.0)) -> "Figure":
    """-2 Delta ln L of each combined result and of their sum, against the signal strength.

    Shows which results pull mu_hat away from zero and which bound it from above
    (mu_max).  Each curve is relative to its own minimum on mu in [0, 1.5 mu_max].
    ``size``: inches (the report draws it beside a table).
    """
    if not members:
        raise ProtomodelsError("plot_likelihoods: no likelihood members to draw")
    grid = np.linspace(0.0, _mu_range(mu_hat, mu_max), GRID_POINTS)
    fig = figure(*size)
    ax = fig.add_subplot()
    total = np.zeros_like(grid)
    curves = []
    for label, nll in members:
        values = _evaluate(nll, grid, label)
        total = total + values
        curves.append(_delta(values))
        ax.plot(grid, curves[-1], linewidth=1.2, label=label)
    curves.append(_delta(total))
    ax.plot(grid, curves[-1], color="black", linewidth=2.2, label="sum")
    if _finite(mu_hat):
        ax.axvline(mu_hat, color="dimgray", linestyle="--", linewidth=1.2,
                   label=rf"$\hat\mu$ = {mu_hat:.3g}")
    if _finite(mu_max):
        ax.axvline(mu_max, color="dimgray", linestyle=":", linewidth=1.6,
                   label=rf"$\mu_\mathrm{{max}}$ = {mu_max:.3g}")
    ax.set_xlim(grid[0], grid[-1])
    ax.set_ylim(0.0, _y_top(grid, curves, mu_max))
    ax.set_xlabel(r"signal strength $\mu$")
    ax.set_ylabel(r"$-2\,\Delta\ln L$")
    ax.set_title("Likelihoods of the combined results")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def _best_mu(run_dir: Path) -> Tuple[Optional[float], Optional[float]]:
    """mu_hat and mu_max of the top hiscore (mu_max from its walker's history line)."""
    entries = sorted(hiscores.read(Path(run_dir) / "hiscores.json"),
                     key=lambda e: e.get("rank", 0))
    if not entries:
        return None, None
    best = entries[0]
    mu_hat, mu_max = best.get("mu_hat"), best.get("mu_max")
    if mu_max is None and "walker" in best and "step" in best:
        for step in read_history(chain_folder(run_dir, best["walker"])):
            if step.get("step") == best["step"]:
                mu_max = step.get("mu_max")
                break
    return mu_hat, mu_max


def plot_run(run_dir: Path, out_dir: Path,
             likelihood_members: Optional[List[Tuple[str, NllFunction]]] = None,
             mu_hat: Optional[float] = None, mu_max: Optional[float] = None) -> List[Path]:
    """All plots of a run into ``out_dir``; returns the files written.

    The likelihood plot needs the nll functions, which are not stored in the run, so
    it is drawn only when ``likelihood_members`` is given; mu_hat and mu_max default to
    those of the best hiscore model.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "k_trace.png", out_dir / "mass_spectrum.png"]
    plot_k_trace(run_dir, written[0])
    plot_mass_spectrum(run_dir, written[1])
    if likelihood_members:
        if mu_hat is None and mu_max is None:
            mu_hat, mu_max = _best_mu(run_dir)
        target = out_dir / "likelihoods.png"
        plot_likelihoods(likelihood_members, mu_hat, mu_max, target)
        written.append(target)
    return written


def _columns(count: int) -> List[int]:
    """x positions 1, -1, 2, -2, ...: one column per particle on alternating sides of the
    LSP's column 0, so that no decay arrow runs through another particle's box."""
    return [(i // 2 + 1) * (1 if i % 2 == 0 else -1) for i in range(count)]


def _box_exit(box: Any, towards: np.ndarray) -> np.ndarray:
    """Where the ray from the centre of ``box`` (display pixels) to ``towards`` leaves it."""
    centre = np.array([(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2])
    d = towards - centre
    scale = min(box.width / 2 / abs(d[0]) if d[0] else math.inf,
                box.height / 2 / abs(d[1]) if d[1] else math.inf)
    return centre + min(scale, 1.0) * d


def plot_decay_graph(graph: Any, path: Optional[Path] = None,
                     title: str = "Decays") -> "Figure":
    """A model's decays as a graph: particles as boxes at their mass (y, GeV), one arrow
    per parent and BSM daughter, labelled with the SM particles emitted and the BR of each
    channel.  ``graph``: a ``networkx.DiGraph`` whose nodes have ``mass`` and whose edges
    have ``channels`` [(SM products, BR), ...] (``report.decay_graph``).

    Arrows are cut where they leave and enter the boxes (measured after the layout, in
    pixels), so every arrowhead shows, and each label sits on its arrow where it covers
    no box and no other label, if there is such a place."""
    if graph.number_of_nodes() == 0:
        raise ProtomodelsError("plot_decay_graph: no particles to draw")
    masses = {node: float(data["mass"]) for node, data in graph.nodes(data=True)}
    lightest = min(masses, key=masses.get)
    others = sorted((n for n in masses if n != lightest), key=masses.get)
    x = {lightest: 0, **dict(zip(others, _columns(len(others))))}
    low, high = min(masses.values()), max(masses.values())
    pad = max(0.16 * (high - low), 60.0)  # room for the boxes of the lightest and heaviest
    fig = figure(max(4.8, 1.5 * (max(x.values()) - min(x.values()) + 1) + 1.4), 4.8)
    ax = fig.add_subplot()
    nodes = {}
    for node, mass in masses.items():
        colour = _family_colour(str(node))
        nodes[node] = ax.text(x[node], mass, f"{node}\n{mass:.0f} GeV", ha="center",
                              va="center", fontsize=9, fontweight="bold", color=colour, zorder=5,
                              bbox={"boxstyle": "round,pad=0.35", "facecolor": "white",
                                    "edgecolor": colour, "linewidth": 1.5})
    ax.set_xlim(min(x.values()) - 0.8, max(x.values()) + 0.8)
    ax.set_ylim(max(0.0, low - pad), high + pad)
    ax.set_xticks([])
    ax.set_ylabel("mass [GeV]")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()  # the axes are final from here: boxes can be measured in pixels
    renderer = fig.canvas.get_renderer()
    margin = 0.35 * 9 * DPI / 72 + 3  # the box's pad and frame around the text
    boxes = {n: t.get_window_extent(renderer).padded(margin) for n, t in nodes.items()}
    taken = list(boxes.values())
    to_data = ax.transData.inverted()
    for parent, daughter, data in graph.edges(data=True):
        a = ax.transData.transform((x[parent], masses[parent]))
        b = ax.transData.transform((x[daughter], masses[daughter]))
        start, end = _box_exit(boxes[parent], b), _box_exit(boxes[daughter], a)
        ax.annotate("", xy=to_data.transform(end), xytext=to_data.transform(start),
                    arrowprops={"arrowstyle": "-|>", "color": "0.35", "linewidth": 1.2,
                                "shrinkA": 1, "shrinkB": 1})
        text = ax.text(0, 0, "\n".join(f"{sm}  {br:.2f}" for sm, br in data["channels"]),
                       fontsize=8, ha="center", va="center", color="0.15", zorder=4,
                       bbox={"boxstyle": "round,pad=0.2", "facecolor": "white",
                             "edgecolor": "0.8"})
        for fraction in (0.5, 0.35, 0.65, 0.2, 0.8, 0.5):  # the last: no free place
            text.set_position(to_data.transform(start + fraction * (end - start)))
            extent = text.get_window_extent(renderer).padded(3)
            if not any(extent.overlaps(other) for other in taken):
                break
        taken.append(extent)
    save_figure(fig, path)
    return fig


def plot_pvalue(report: Dict[str, Any], path: Path) -> Path:
    """The fakes' best-K distribution (histogram and kernel density estimate) with the
    real best K marked and both p-values written on the plot."""
    save_figure(pvalue_figure(report), Path(path))
    return Path(path)


def pvalue_figure(report: Dict[str, Any]) -> "Figure":
    """The figure of ``plot_pvalue`` for a ``pvalue.compare_runs`` report."""
    from .pvalue import fake_density

    ks = np.array([f["best_K"] for f in report["fakes"]], dtype=float)
    real = report["real"]["best_K"]
    fig = figure(6.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = min(ks.min(), real), max(ks.max(), real)
    pad = 0.15 * (hi - lo) + 1.0
    bins = np.linspace(lo - pad, hi + pad, max(8, min(40, 2 * len(ks))))
    ax.hist(ks, bins=bins, density=True, color="tab:blue", alpha=0.45,
            label=f"fake SM databases (N = {len(ks)})")
    if report["p_value_kde"] is not None:
        grid = np.linspace(bins[0], bins[-1], GRID_POINTS)
        density = fake_density(ks)(grid)
        ax.plot(grid, density, color="tab:blue", label="kernel density estimate")
        tail = grid >= real
        ax.fill_between(grid[tail], density[tail], color="tab:red", alpha=0.3)
    ax.axvline(real, color="tab:red", lw=2, label=f"real data: K = {real:.2f}")
    lo, hi = report["p_value_interval_68"]
    text = (f"p = {report['n_at_or_above']}/{report['n_fakes']} = {report['p_value']:.2f} "
            f"(68% CL {lo:.2f}-{hi:.2f})")
    if report["p_value_kde"] is not None:
        text += f"\nKDE: p = {report['p_value_kde']:.3f}"
    ax.text(0.98, 0.97, text, transform=ax.transAxes, ha="right", va="top", fontsize=9,
            bbox={"facecolor": "white", "edgecolor": "0.8", "alpha": 0.9})
    ax.set_xlabel("best K of a run")
    ax.set_ylabel("density")
    ax.set_title("Global p-value: best K under the Standard Model")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig
