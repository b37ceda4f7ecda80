"""Static HTML reports: one page for a walker run (``protomodels report RUN --out DIR``)
or for one model (``protomodels significance MODEL.slha --report DIR``).

The page is one self-contained ``index.html``: the figures (``protomodels.plots``,
rendered in memory) are inlined as ``data:`` PNGs and each model's SLHA file as a
``data:`` download link, the stylesheet is inline and there is no script, so it opens
from ``file://`` with no network, keeps working when copied elsewhere, and a browser
never asks for another file (which a ``file://`` page may not read anyway).

A run's page holds its configuration and versions (run.json), the ladder and swap rates,
K traces (all chains, and per temperature when the run has a ladder), the hiscores, the
spectra of the best ``top`` models side by side (annotated with the analyses of each
model's combination), and for each of them, re-evaluated on the run's own database with
its likelihood, r_limit and results (``hiscores.evaluate_entry``, what ``show --json``
prints): its decay graph, the combination with each member's contribution to TL, the
likelihood curves, the largest r values with r_exp and its SLHA file.  A p-value plot is
added from a ``--fakes`` batch (``pvalue.compare_runs`` against its runs) or from the
``pvalue.png`` that ``protomodels pvalue`` left in the run folder; a run on a fake
database says so in a banner.

The HTML comes from the jinja2 template ``protomodels/templates/report.html.j2``; like
the plots it needs the ``plots`` extra (matplotlib, jinja2).
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from . import __version__
from .exceptions import ProtomodelsError, RunError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import networkx

logger = logging.getLogger(__name__)

TEMPLATE = "report.html.j2"
MISSING = "report needs matplotlib and jinja2: pip install 'protomodels[plots]'"
DEFAULT_TOP = 3
TOP_R = 10
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: SM particles by |PDG id|, for the decay graph of a general model (proto-models name
#: their channels themselves).
SM_NAMES: Dict[int, str] = {1: "d", 2: "u", 3: "s", 4: "c", 5: "b", 6: "t", 11: "e",
                            12: "nu", 13: "mu", 14: "nu", 15: "tau", 16: "nu", 21: "g",
                            22: "gamma", 23: "Z", 24: "W", 25: "h"}


def check_dependencies() -> None:
    """``ProtomodelsError`` (one line naming the ``plots`` extra) when jinja2 or matplotlib
    is missing (both are optional dependencies): call it before any costly work whose
    result a page shows."""
    try:
        import jinja2  # noqa: F401
        import matplotlib  # noqa: F401
    except ImportError:
        raise ProtomodelsError(MISSING) from None


def _environment():
    """The jinja2 environment of the shipped template (``check_dependencies`` first)."""
    check_dependencies()
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("protomodels", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["num"] = _num
    return env


def _num(value: Any, fmt: str = ".3g") -> str:
    """A number for a table cell: '-' for None, 'inf' spelled out, else ``fmt``."""
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return format(value, fmt)


def data_uri(payload: bytes, mime: str) -> str:
    """``payload`` as a base64 ``data:`` URI: how every image and file is inlined."""
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def _png(fig) -> str:
    from .plots import figure_png

    return data_uri(figure_png(fig), "image/png")


# ------------------------------------------------------------------ decay graphs

def _add_channel(graph: "networkx.DiGraph", parent: str, daughter: str, sm: str,
                 br: float) -> None:
    """Add BR ``br`` of ``parent -> daughter + sm`` to the graph, summing repeats (SLHA
    lines of one channel, charge conjugates)."""
    if not graph.has_edge(parent, daughter):
        graph.add_edge(parent, daughter, channels={})
    channels = graph.edges[parent, daughter]["channels"]
    channels[sm] = channels.get(sm, 0.0) + br


def decay_graph(model: Any) -> "networkx.DiGraph":
    """The decays of a proto-model or a ``general.GeneralModel`` as a directed graph:
    nodes are the BSM particles (attribute ``mass``, GeV), an edge joins a parent to each
    BSM daughter, its ``channels`` listing (SM products, BR) as ``plots.plot_decay_graph``
    draws them.  A general model shows only the particles that are produced or in a
    produced particle's decay chain (a spectrum generator's file holds dozens of
    decoupled states), and its LSP."""
    import networkx as nx

    from .general import GeneralModel
    from .model import NAMES, channel_spec

    graph = nx.DiGraph()
    if isinstance(model, GeneralModel):
        keep = model.in_chains() | {model.lsp}
        for pid in sorted(keep):
            graph.add_node(NAMES.get(pid, str(pid)), mass=model.masses[pid])
        for pid in sorted(keep):
            for br, daughters in model.channels(pid):
                bsm = [abs(d) for d in daughters if abs(d) in model.masses]
                if br <= 0 or not bsm:
                    continue
                sm = " ".join(SM_NAMES.get(abs(d), str(abs(d))) for d in daughters
                              if abs(d) not in model.masses)
                for daughter in bsm:
                    if daughter in keep:
                        _add_channel(graph, NAMES.get(pid, str(pid)),
                                     NAMES.get(daughter, str(daughter)), sm or "-",
                                     br / len(bsm))
    else:
        for pid, mass in sorted(model.masses.items()):
            graph.add_node(NAMES[pid], mass=mass)
        for pid, brs in sorted(model.decays.items()):
            for channel, br in sorted(brs.items()):
                if br <= 0:
                    continue
                spec = channel_spec(pid, channel)
                sm = " ".join(t for t in channel.split() if not t.startswith("X")) or "-"
                for line in spec.lines:  # lines to frozen daughters carry no BR
                    for daughter in (abs(d) for d in line if abs(d) in model.masses):
                        _add_channel(graph, NAMES[pid], NAMES[daughter], sm, br / len(spec.lines))
    for _, _, data in graph.edges(data=True):
        data["channels"] = sorted(data["channels"].items(), key=lambda item: -item[1])
    return graph


# ------------------------------------------------------------------ one model

def _model_masses(model: Any) -> Dict[str, float]:
    """Name -> mass of the particles a model's spectrum shows (see ``decay_graph``)."""
    return {node: mass for node, mass in decay_graph(model).nodes(data="mass")}


def model_section(anchor: str, title: str, result: Any, report: Dict[str, Any], model: Any,
                  slha_name: str, slha_text: str,
                  facts: Sequence[Tuple[str, str]] = ()) -> Dict[str, Any]:
    """What the template shows of one evaluated model, as a dict for ``report.html.j2``:
    ``facts`` ((label, text) pairs: ``facts`` first, then K, TL, 2 ln prior, mu_hat,
    mu_max, r_max, r_limit, the predictions), ``decay_graph`` and ``likelihoods`` (PNG
    ``data:`` URIs; ``likelihoods`` None without a combination), ``decays`` (per parent,
    heaviest first: mass in GeV and channels with BRs), ``combination`` and ``top_r``
    (the document's rows, at most ``TOP_R``; cross sections in fb), ``slha`` (file name
    and ``data:`` URI of ``slha_text``) and ``xsecs`` (sqrts TeV, process, fb).
    ``anchor``: the section's HTML id; ``title``: its heading.  ``result``: the
    ``significance.Significance``; ``report``: its ``significance.significance_report``
    document (with ``xsecs_fb`` where known); ``model``: the proto-model or
    ``general.GeneralModel`` evaluated.  ``ProtomodelsError`` without matplotlib."""
    from . import plots
    from .model import NAMES

    graph = decay_graph(model)
    section: Dict[str, Any] = {
        "anchor": anchor, "title": title, "report": report,
        "facts": list(facts) + [
            ("K", _num(report["K"], ".3f")), ("TL", _num(report["TL"], ".3f")),
            ("2 ln prior", _num(report["prior"]["two_ln_prior"], ".3f")),
            ("mu_hat", _num(report["mu_hat"], ".4g")), ("mu_max", _num(report["mu_max"], ".4g")),
            ("r_max", _num(report["r_max"], ".4g")), ("r_limit", _num(report["r_limit"], "g")),
            ("predictions", f"{report['n_predictions']} ({report['n_informative']} with a "
                            "likelihood)")],
        "decay_graph": _png(plots.plot_decay_graph(graph, title=f"{title}: decays")),
        "decays": [{"parent": parent, "mass": graph.nodes[parent]["mass"],
                    "channels": ", ".join(f"{daughter} {sm} {br:.3f}"
                                          for _, daughter, data in graph.out_edges(parent, data=True)
                                          for sm, br in data["channels"])}
                   for parent in sorted(graph.nodes, key=lambda n: -graph.nodes[n]["mass"])],
        "combination": report["combination"],
        "likelihoods": None,
        "top_r": report["top_r"][:TOP_R],
        "slha": {"name": slha_name, "href": data_uri(slha_text.encode(), "text/plain")},
        "xsecs": [{"sqrts": s, "process": f"{NAMES.get(abs(a), a)} {NAMES.get(abs(b), b)}",
                   "fb": fb} for s, a, b, fb in report.get("xsecs_fb", [])],
    }
    members = plots.combination_curves(result)
    if members:
        section["likelihoods"] = _png(plots.plot_likelihoods(members, result.mu_hat,
                                                             result.mu_max, size=(6.0, 4.4)))
    return section


def _annotation(report: Dict[str, Any]) -> List[str]:
    """The lines under a model's column of the spectrum: its combination's analyses and
    their share of TL."""
    lines = [f"{m['analysis_id']} {100 * m['tl_share']:.0f}%" for m in report["combination"]]
    return lines or ["no combination"]


# ------------------------------------------------------------------ writing

def _write(out_dir: Path, context: Dict[str, Any]) -> Path:
    """Render ``context`` (every variable ``report.html.j2`` uses) into
    ``out_dir/index.html``, creating the folder; the page is written atomically with the
    permissions a plain file gets (``atomic.write_text_atomic``: 0666 less the umask, a
    page to share), and its path returned.  ``ProtomodelsError`` naming the folder or
    file when it cannot be created or written, or (``_environment``) without jinja2 or
    matplotlib; a previous page stays intact then."""
    from .atomic import write_text_atomic

    html = _environment().get_template(TEMPLATE).render(**context)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ProtomodelsError(f"{out_dir}: cannot create the report folder "
                               f"({error.strerror or error})") from None
    target = out_dir / "index.html"
    try:
        write_text_atomic(target, html)
    except OSError as error:
        raise ProtomodelsError(f"{target}: cannot write the report "
                               f"({error.strerror or error})") from None
    logger.info("wrote %s (%.1f MB)", target, len(html) / 1e6)
    return target


def _common(title: str) -> Dict[str, Any]:
    return {"title": title, "version": __version__,
            "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def model_report(slha_file: Path, result: Any, model: Any, report: Dict[str, Any],
                 out_dir: Path) -> Path:
    """The page of ``significance SLHA_FILE --report OUT_DIR``: one evaluated model
    (``report``: its ``significance.significance_report`` document) with its spectrum,
    decay graph, combination, likelihoods, top r values and the input file; returns
    index.html.  ``ProtomodelsError`` without jinja2 or matplotlib or when the page
    cannot be written (``_write``)."""
    from . import plots

    check_dependencies()  # fail on a missing extra before drawing anything
    slha_file = Path(slha_file)
    name = slha_file.name
    section = model_section("model", name, result, report, model, name,
                            slha_file.read_text(errors="replace"))
    entry = {"label": name, "K": report["K"],
             "model": {"masses": _model_masses(model)}}
    spectrum = _png(plots.plot_spectra([entry], annotations=[_annotation(report)],
                                       title="Spectrum"))
    general = report.get("model", {})
    context = {**_common(f"protomodels: {name}"), "kind": "model",
               "config": [("file", str(slha_file)),
                          ("model", "proto-model" if general.get("kind") != "general"
                           else "general model (not a proto-model)"),
                          ("likelihood of pyhf results", report.get("likelihood") or "as shipped"),
                          ("r_limit", _num(report["r_limit"], "g"))],
               "versions": _database_rows(report["database"]),
               "fake": report["database"].get("fake"),
               "notes": general.get("notes", []) if general.get("kind") == "general" else [],
               "spectrum": spectrum, "models": [section],
               "run": None, "tempering": None, "k_trace": None, "k_by_temperature": None,
               "hiscores": [], "pvalue": None}
    return _write(out_dir, context)


def _database_rows(database: Dict[str, Any]) -> List[Tuple[str, str]]:
    rows = [("protomodels", __version__), ("database", str(database.get("version"))),
            ("database path", str(database.get("path"))),
            ("database sha256", str(database.get("sha256")))]
    if database.get("fake"):
        rows.append(("fake database", json.dumps(database["fake"], sort_keys=True)))
    return rows


# ------------------------------------------------------------------ a run

def _run_record(run_dir: Path) -> Dict[str, Any]:
    """run.json of ``run_dir`` (``runs.read_run``: checked against its schema); a batch of
    fakes or a folder that is no run is a one-line error saying what to give instead."""
    from .runs import read_run

    if not (run_dir / "run.json").is_file() and (run_dir / "fakes.json").is_file():
        raise RunError(f"{run_dir}: a batch of fake runs, not a run; report one of its "
                       f"runs ({run_dir}/run-000), or the real run with "
                       f"--fakes {run_dir} for the p-value")
    return read_run(run_dir)


def _tempering(run_dir: Path, config: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The ladder, each chain's temperature and the swap acceptance per rung pair; None
    for a run of plain chains (one rung)."""
    from .tempering import Ladder, TemperingStore, acceptance_by_pair

    try:
        ladder = Ladder.for_walkers(config["ladder"], config["walkers"])
    except (KeyError, TypeError, ValueError) as error:
        raise RunError(f"{run_dir / 'run.json'}: field 'config.ladder' is unusable ({error})") from None
    chains = {c: ladder.temperature(c) for c in range(ladder.chains)}
    if ladder.rungs < 2:
        return {"ladder": list(ladder.temperatures), "chains": chains, "pairs": []}
    return {"ladder": list(ladder.temperatures), "chains": chains,
            "pairs": acceptance_by_pair(TemperingStore(run_dir).read_swaps(), ladder)}


def fake_runs(batch: Path) -> List[Path]:
    """The runs of a batch of fakes (``protomodels fakes --out BATCH``) that have started,
    from its ``fakes.json``; a one-line error naming the folder when there are none."""
    from .atomic import read_json_record
    from .pvalue import FAKES_SCHEMA

    batch = Path(batch)
    manifest = read_json_record(batch / "fakes.json", FAKES_SCHEMA, RunError, "batch of fakes")
    runs = [batch / fake["run"] for fake in manifest["fakes"]
            if (batch / fake["run"] / "run.json").is_file()]
    if not runs:
        raise RunError(f"--fakes {batch}: none of its {len(manifest['fakes'])} runs has started")
    return runs


def _pvalue(run_dir: Path, fakes: Optional[Path],
            runs: Sequence[Path]) -> Optional[Dict[str, Any]]:
    """The p-value section: computed from ``runs``, the runs of the batch of fakes
    ``fakes``, else the ``pvalue.png`` that ``protomodels pvalue`` wrote into the run,
    else None."""
    from . import plots, pvalue as pv

    if fakes is not None:
        result = pv.compare_runs(run_dir, list(runs))
        return {"image": _png(plots.pvalue_figure(result)),
                "text": pv.format_report(result).strip().splitlines(),
                "source": f"the {len(runs)} runs on fake databases in {fakes}"}
    stored = run_dir / "pvalue.png"
    if stored.is_file():
        payload = stored.read_bytes()
        if payload[:8] != PNG_SIGNATURE:
            raise RunError(f"{stored}: not a PNG file")
        return {"image": data_uri(payload, "image/png"), "text": [],
                "source": f"{stored.name}, written by protomodels pvalue"}
    return None


def build_report(run_dir: Path, out_dir: Path, top: int = DEFAULT_TOP,
                 database: Optional[str] = None, likelihood: Optional[str] = None,
                 fakes: Optional[Path] = None, db: Any = None) -> Path:
    """Write the page of the run in ``run_dir`` to ``out_dir/index.html`` and return it.

    The best ``top`` hiscores are re-evaluated on the run's database with its likelihood
    (``database``, ``likelihood`` replace them; ``db``: an already loaded database, used
    as is), loaded once.  ``fakes``: a batch of runs on fake databases (``protomodels
    fakes --out``) for a p-value section, computed before anything is re-evaluated.

    Errors, all before the database is loaded unless the page itself cannot be written:
    ``ProtomodelsError`` (``top`` < 1; jinja2 or matplotlib missing; ``_write``: the
    folder or page cannot be written), ``RunError`` (no run.json or a batch of fakes
    given as the run, no hiscores, an unusable ladder; ``fakes`` without started runs or
    whose runs' settings differ from this run's: ``pvalue.compare_runs``), and the
    database's errors from ``loader.load_database``."""
    from . import hiscores, plots, rescore as rescoring
    from .loader import load_database
    from .model import ProtoModel
    from .runs import legacy_config, run_steps
    from .slha import to_slha

    if top < 1:
        raise ProtomodelsError(f"--top {top}: must be at least 1")
    check_dependencies()
    run_dir = Path(run_dir)
    record = _run_record(run_dir)
    config = legacy_config(dict(record["config"]))  # as runs.read_run_config, read once
    entries = sorted(hiscores.read(run_dir / "hiscores.json"), key=lambda e: e["rank"])
    if not entries:
        raise RunError(f"{run_dir / 'hiscores.json'}: no hiscores yet")
    tempering = _tempering(run_dir, config)
    # bad input and a p-value that cannot be computed (other settings): before the load
    pvalue = _pvalue(run_dir, fakes, fake_runs(fakes) if fakes is not None else [])
    if db is None:
        db = load_database(database or config.get("database"), likelihood or config["likelihood"])
    own = config["likelihood"]
    others = rescoring.rescored_likelihoods(run_dir, exclude=own)
    k_values = rescoring.k_values(run_dir, entries)

    sections, annotations = [], []
    for entry, k_by in zip(entries[:top], k_values):
        logger.info("report: re-evaluating rank %d", entry["rank"])
        result, report = hiscores.evaluate_entry(run_dir, entry, db, config=config,
                                                 k_by_likelihood=k_by)
        model, xsecs = hiscores.best_fit_model(entry)
        facts = [("walker / step", f"{entry.get('walker', '-')} / {entry.get('step', '-')}"),
                 ("temperature", _num(entry.get("temperature"), "g")),
                 ("polished", "yes (protomodels polish)" if entry.get("polished") else "no"),
                 ("K in the run", _num(entry["K"], ".3f")),
                 ("best fit", f"multipliers x {_num(entry.get('mu_hat') or 1.0, '.4g')} "
                              "(the run's mu_hat)")]
        facts += [(f"K ({name} likelihood)", _num(value, ".3f"))
                  for name, value in sorted(report["K_by_likelihood"].items()) if name != own]
        sections.append(model_section(f"rank-{entry['rank']}", f"#{entry['rank']}", result,
                                      report, model, f"rank-{entry['rank']}.slha",
                                      to_slha(model, xsecs), facts))
        annotations.append(_annotation(report))

    detailed = {entry["rank"] for entry in entries[:top]}
    rows = []
    for entry, k_by in zip(entries, k_values):
        model = ProtoModel.from_dict(entry["model"])
        rows.append({"rank": entry["rank"], "K": entry["K"], "TL": entry.get("TL"),
                     "others": [k_by.get(o) for o in others],
                     "temperature": entry.get("temperature"), "walker": entry.get("walker"),
                     "step": entry.get("step"), "polished": bool(entry.get("polished")),
                     "particles": model.describe(), "detailed": entry["rank"] in detailed,
                     "combination": ", ".join(f"{c['analysis_id']}:{c['dataset']}"
                                              for c in entry.get("combination", [])) or "-"})

    chain_temperatures = tempering["chains"]
    by_temperature = None
    if len(tempering["ladder"]) > 1:
        by_temperature = _png(plots.plot_k_trace_by_temperature(run_dir, chain_temperatures))
    versions = record.get("versions", {})
    done = run_steps(run_dir)
    context = {
        **_common(f"protomodels run {run_dir.resolve().name}"), "kind": "run",
        "run": {"path": str(run_dir.resolve()), "name": run_dir.resolve().name,
                "steps_done": done, "segments": record.get("segments", []),
                "seeds": record.get("seeds", {}),
                "reevaluated": f"{db.path} ({db.version}), likelihood {db.likelihood or 'as shipped'}"},
        "config": [(key, json.dumps(value) if isinstance(value, (list, dict)) else str(value))
                   for key, value in sorted(record["config"].items())],
        "versions": [(key, "-" if value is None else
                      (json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)))
                     for key, value in sorted(versions.items())],
        "fake": versions.get("database_fake"), "notes": [],
        "likelihood": own, "others": others,
        "tempering": tempering,
        "k_trace": _png(plots.plot_k_trace(run_dir)),
        "k_by_temperature": by_temperature,
        "hiscores": rows,
        "spectrum": _png(plots.plot_spectra(entries[:top], annotations=annotations)),
        "models": sections,
        "pvalue": pvalue,
    }
    return _write(out_dir, context)
