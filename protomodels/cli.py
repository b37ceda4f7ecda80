"""The ``protomodels`` command: a thin layer over the public Python API.

Results go to stdout (text, or JSON with ``--json``) or to ``--output-file``; logs go to
stderr.  Errors the user can fix print one line and exit 1; ``-v`` adds tracebacks.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import click

from . import __version__
from .exceptions import ProtomodelsError
from .schemas import schema_id
from .statistics.workspaces import DEFAULT_LIKELIHOOD, LIKELIHOODS

#: ``significance --likelihood surrogate`` when no prediction could use one at all
_NO_SURROGATE = "none (no prediction in a result with a full pyhf workspace)"

logger = logging.getLogger("protomodels")


def _configure_logging(verbose: int, quiet: bool = False) -> None:
    """INFO by default: progress and what was written (``protomodels.progress``); -q
    warnings only, -v DEBUG."""
    from .progress import LogHandler

    # -vv and more stay DEBUG: 0 (NOTSET) would defer to the root logger's WARNING
    level = logging.WARNING if quiet else max(logging.DEBUG, logging.INFO - 10 * verbose)
    root = logging.getLogger("protomodels")
    root.handlers[:] = [LogHandler()]
    root.propagate = False
    root.setLevel(level)
    from smodels.base.smodelsLogging import setLogLevel
    setLogLevel("info" if verbose >= 2 else "error")


def _handle_errors(func: Callable) -> Callable:
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        try:
            return func(*args, **kwargs)
        except ProtomodelsError as error:
            if ctx.obj.get("verbose"):
                logger.exception("error")
            click.echo("Error: " + " ".join(str(error).split("\n")), err=True)  # one line
            ctx.exit(1)
    return wrapper


def _emit(text: str, output_file: Optional[str]) -> None:
    if output_file:
        from .atomic import write_text_atomic
        write_text_atomic(Path(output_file), text)
        logger.info("wrote %s", output_file)
    else:
        click.echo(text, nl=not text.endswith("\n"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="protomodels")
@click.option("-v", "--verbose", count=True, help="More logging (-vv: SModelS too); tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only: no progress.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Proto-models: minimal new-physics models confronted with LHC results via SModelS."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    _configure_logging(verbose, quiet)


database_option = click.option(
    "--database", "database_path", default=None, metavar="PATH",
    help="SModelS database: tarball, text folder, .pcl or URL "
         "[default: $PROTOMODELS_DATABASE, else ../shared/smodels-database-3.0.0.tar.xz].")

likelihood_option = click.option(
    "--likelihood", type=click.Choice(LIKELIHOODS), default=DEFAULT_LIKELIHOOD,
    show_default=True,
    help="Statistical model of pyhf results: 'simplified' (ATLAS' simplified workspace "
         "where published, else one built from the full workspace, cached), 'full', or "
         "'surrogate' (the trained surrogates of the full workspaces where the signal is "
         "in their domain, else simplified; see `protomodels surrogate`).")


def cluster_options(what: str) -> Callable:
    """--cluster and --jobs, the same for every command that can use Dask."""
    def decorate(func: Callable) -> Callable:
        func = click.option("--jobs", type=click.IntRange(min=1), default=None,
                            help="With --cluster local: worker processes; with a batch "
                                 "system: jobs.")(func)
        return click.option("--cluster", default=None,
                            metavar="ADDRESS|local|slurm|htcondor|...",
                            help=f"{what} as Dask tasks: a scheduler address, 'local', or a "
                                 "dask-jobqueue batch system (needs protomodels[cluster]).")(func)
    return decorate


run_likelihood_option = click.option(
    "--likelihood", type=click.Choice(LIKELIHOODS), default=None,
    help="Statistical model of pyhf results [default: the run's own].")

run_database_option = click.option(
    "--database", "database_path", default=None, metavar="PATH",
    help="Database to re-evaluate on [default: the run's own].")


def _parse_sqrts(_ctx, _param, value: str):
    try:
        values = tuple(int(float(v)) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected e.g. 8,13") from None
    if not values or any(v not in (8, 13) for v in values):
        raise click.BadParameter(f"{value!r}: only 8 and 13 TeV results exist")
    return values


@cli.command()
@click.argument("slha_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.option("--output-file", default=None, metavar="FILE", help="Write the output here.")
@click.option("--r-limit", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Critic: every r_obs must stay below this (paper: 1.3).")
@click.option("--sqrts", default="8,13", show_default=True, callback=_parse_sqrts,
              help="Centre-of-mass energies (TeV) of the results to use.")
@click.option("--analyses", default="*", show_default=True, metavar="PATTERN",
              help="Comma-separated shell patterns on analysis ids, e.g. 'CMS-*,ATLAS-SUSY-2018-*'.")
@click.option("--superseded", is_flag=True, help="Also use results superseded by newer ones.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, metavar="DIR",
              help="Also write a self-contained HTML page of the model to DIR/index.html "
                   "(needs protomodels[plots]).")
@likelihood_option
@database_option
@_handle_errors
def significance(slha_file: Path, as_json: bool, output_file: Optional[str], r_limit: float,
                 sqrts, analyses: str, superseded: bool, report_dir: Optional[Path],
                 likelihood: str, database_path: Optional[str]) -> None:
    """K, TL, mu_hat and the best combination of the model in SLHA_FILE."""
    from . import significance as sig
    from .general import GeneralModel, load_model
    from .loader import load_database
    from .predictor import Selection

    if report_dir is not None:
        from .report import check_dependencies
        check_dependencies()  # a missing extra fails before the evaluation, not after it
    model = load_model(slha_file)
    db = load_database(database_path, likelihood)
    selection = Selection(sqrts=sqrts, analyses=tuple(a.strip() for a in analyses.split(",")),
                          superseded=superseded)
    t0 = time.perf_counter()
    if isinstance(model, GeneralModel):
        result = sig.evaluate_general(model, db, r_limit=r_limit, selection=selection)
    else:
        result = sig.evaluate(model, db, r_limit=r_limit, selection=selection)
    result.timings["wall"] = time.perf_counter() - t0
    report = sig.significance_report(result, db, slha_file, model)
    _emit(json.dumps(report, indent=2, sort_keys=True) + "\n" if as_json
          else format_significance(report), output_file)
    if report_dir is not None:  # after the output: a page that cannot be written loses nothing
        from .report import model_report
        model_report(slha_file, result, model, report, report_dir)  # logs "wrote PATH"


def format_significance(report: Dict[str, Any]) -> str:
    def num(x, fmt=".3g"):
        return "-" if x is None else format(x, fmt)

    prior = report["prior"]
    lines = [
        f"{report['file']}  (database {report['database']['version']}"
        + (f", FAKE {report['database']['path']} seed {report['database']['fake']['seed']}"
           if report["database"].get("fake") else "") + ")",
        f"  K      = {report['K']:.3f}",
        f"  TL     = {report['TL']:.3f}    2 ln prior = {prior['two_ln_prior']:.3f} "
        f"(particles {prior['particles']}, BRs {prior['brs']}, multipliers {prior['ssms']})",
        f"  mu_hat = {report['mu_hat']:.4g}    mu_max = {num(report['mu_max'], '.4g')} "
        f"(r_limit {report['r_limit']:g}, r_max {report['r_max']:.4g})",
        f"  predictions: {report['n_predictions']} ({report['n_informative']} with a likelihood)",
        f"  likelihood of pyhf results: {report.get('likelihood') or 'as shipped'}",
        *([f"  surrogates used for: {', '.join(report['surrogates']['used']) or _NO_SURROGATE}"
           + "".join(f"; {name}: {why}, simplified used"
                     for name, why in report["surrogates"]["fallbacks"].items())]
          if "surrogates" in report else []),
        "",
        "best combination:" if report["combination"] else "best combination: none (no excess)",
    ]
    general = report.get("model", {})
    if general.get("kind") == "general":
        extra = [f"  general model (not a proto-model): LSP {general['lsp']}; the prior "
                 f"counts {', '.join(map(str, general['prior_counted'])) or 'nothing'} "
                 "(produced or in a produced particle's decay chain)"]
        if general["long_lived"]:
            extra.append("  not prompt: " + ", ".join(f"{p} ({k})" for p, k
                                                      in general["long_lived"].items()))
        if general["without_xsec"]:
            extra.append("  no production cross section: " + ", ".join(
                f"{e['name']} ({e['mass_gev']:.0f} GeV)" for e in general["without_xsec"]))
        extra += [f"  note: {note}" for note in general["notes"]]
        lines[6:6] = extra
    for m in report["combination"]:
        lines.append(f"  {m['analysis_id']:<28} {m['dataset']:<20} {m['type']:<8} "
                     f"{m['sqrts_tev']:>2} TeV  nll(0)={m['nll_0']:.3f}  "
                     f"nll(mu_hat)={m['nll_mu_hat']:.3f}  TL share {100 * m['tl_share']:.0f}%"
                     + (f"  [{m['likelihood']}]" if m.get("likelihood") else ""))
    lines += ["", "top r values:", f"  {'analysis':<28} {'dataset':<20} {'type':<8} {'r_obs':>8} {'r_exp':>8}"]
    for p in report["top_r"]:
        lines.append(f"  {p['analysis_id']:<28} {p['dataset'][:20]:<20} {p['type']:<8} "
                     f"{num(p['r_obs']):>8} {num(p['r_exp']):>8}"
                     + (f"  [{p['likelihood']}]" if p.get("likelihood") else ""))
    return "\n".join(lines) + "\n"


@cli.group(name="database")
def database_group() -> None:
    """The SModelS experimental database."""


@database_group.command()
@database_option
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.option("--output-file", default=None, metavar="FILE", help="Write the output here.")
@click.option("--check-combined", is_flag=True,
              help="Also evaluate every combined result's statistical model (slow).")
@likelihood_option
@_handle_errors
def info(database_path: Optional[str], as_json: bool, output_file: Optional[str],
         check_combined: bool, likelihood: str) -> None:
    """Which database, its version, and counts by experiment, energy and type."""
    from . import database
    from .loader import load_database

    db = load_database(database_path, likelihood)
    report = database.describe(db, check_combined=check_combined)
    _emit(json.dumps(report, indent=2, sort_keys=True) + "\n" if as_json
          else database.format_description(report), output_file)


@database_group.command()
@database_option
@click.option("--validate", is_flag=True,
              help="Also compare with ATLAS' own simplified workspaces, and simplified with "
                   "full likelihoods on real signals (slow: minutes to hours).")
@click.option("--signals", type=click.IntRange(min=1), default=20, show_default=True,
              help="With --validate: signals per workspace.")
@click.option("--costly-signals", type=click.IntRange(min=0), default=5, show_default=True,
              help="With --validate: signals for workspaces whose full fit takes over 10 s.")
@click.option("--only", default="*", metavar="PATTERN",
              help="With --validate: comma-separated shell patterns on analysis ids, or on "
                   "ANALYSIS/FILE for single workspaces.")
@click.option("--backend", type=click.Choice(["numpy", "jax"]), default="numpy", show_default=True,
              help="With --validate: pyhf backend of the full-likelihood evaluations (jax: "
                   "exact gradients, much faster for the large workspaces; needs jax).")
@click.option("--json", "as_json", is_flag=True, help=f"JSON output (schema {schema_id('simplify')}).")
@click.option("--output-file", default=None, metavar="FILE", help="Write the output here.")
@_handle_errors
def simplify(database_path: Optional[str], validate: bool, signals: int, costly_signals: int,
             only: str, backend: str, as_json: bool, output_file: Optional[str]) -> None:
    """Build (once, cached) the simplified likelihood of every full pyhf workspace that
    has no published simplified version (ATL-PHYS-PUB-2021-038), and list what each pyhf
    result uses."""
    from .statistics import validation

    report = validation.simplify_database(database_path)
    if validate:
        report["validation"] = validation.validate(
            database_path, signals=signals, costly_signals=costly_signals,
            patterns=tuple(p.strip() for p in only.split(",")), backend=backend)
    _emit(json.dumps(report, indent=2, sort_keys=True) + "\n" if as_json
          else validation.format_report(report), output_file)


@cli.group(name="surrogate")
def surrogate_group() -> None:
    """Machine-learned surrogates of the full pyhf workspaces (--likelihood surrogate)."""


@surrogate_group.command("train")
@click.argument("analysis")
@click.option("--workspace", default=None, metavar="FILE",
              help="Which full workspace of the analysis (file name) [default: its first].")
@click.option("--samples", type=click.IntRange(min=25), default=5000, show_default=True,
              help="Training signals (four profiled fits each).")
@click.option("--holdout", type=click.IntRange(min=25), default=500, show_default=True,
              help="Held-out signals for `surrogate validate`.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--backend", type=click.Choice(["numpy", "jax"]), default="jax", show_default=True,
              help="pyhf backend of the training fits (jax: compiled once, much faster).")
@cluster_options("Compute the training data")
@database_option
@click.option("--json", "as_json", is_flag=True, help="JSON output (the sidecar).")
@_handle_errors
def surrogate_train(analysis, workspace, samples, holdout, seed, backend, cluster, jobs,
                    database_path, as_json) -> None:
    """Training data from pyhf on the full workspace (resumable), then the network
    (ONNX with a JSON sidecar, in the cache)."""
    from .progress import progress_bar
    from .statistics import surrogate

    with progress_bar(None, f"{analysis}: training data chunks") as bar:
        sidecar = surrogate.train_workspace(
            database_path, analysis, workspace, samples=samples, holdout=holdout, seed=seed,
            backend=backend, cluster=cluster, jobs=jobs, progress=bar.update)
    if as_json:
        _emit(json.dumps({k: v for k, v in sidecar.items() if k != "domain"}, indent=2,
                         sort_keys=True) + "\n", None)
        return
    t = sidecar["training"]
    click.echo(f"{analysis} {sidecar['workspace']}: {t['samples']} training signals "
               f"({t['seconds_per_sample']:.2f} s each; {sidecar['data_chunks_computed']} chunks "
               f"computed now in {sidecar['data_wall_seconds']:.0f} s), network {t['hidden']} "
               f"fitted in {t['fit_seconds']:.1f} s; `protomodels surrogate validate` next")


@surrogate_group.command("validate")
@click.option("--only", default="*", metavar="PATTERN",
              help="Comma-separated shell patterns on analysis ids.")
@click.option("--ul-signals", type=click.IntRange(min=1), default=60, show_default=True,
              help="Held-out signals whose upper limits pyhf computes for comparison.")
@click.option("--backend", type=click.Choice(["numpy", "jax"]), default="jax", show_default=True)
@cluster_options("Compute pyhf's limits")
@database_option
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.option("--output-file", default=None, metavar="FILE", help="Write the output here.")
@_handle_errors
def surrogate_validate(only, ul_signals, backend, cluster, jobs, database_path, as_json,
                       output_file) -> None:
    """Accuracy on held-out signals (by -2 Delta), upper limits against pyhf (kept in the
    cache: computed once per signal), speed."""
    from .progress import progress_bar
    from .statistics import surrogate

    with progress_bar(None, "pyhf upper limits of held-out signals") as bar:
        rows = surrogate.validate_all(database_path, tuple(p.strip() for p in only.split(",")),
                                      ul_signals=ul_signals, backend=backend,
                                      progress=bar.update, cluster=cluster, jobs=jobs)
    _emit(json.dumps(rows, indent=2, sort_keys=True) + "\n" if as_json
          else surrogate.format_validation(rows), output_file)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--likelihood", type=click.Choice(LIKELIHOODS), default="full",
              show_default=True, help="Statistical model to re-score with.")
@click.option("--top", type=click.IntRange(min=1), default=None,
              help="Only the best N hiscores [default: all].")
@run_database_option
@_handle_errors
def rescore(run_dir: Path, likelihood: str, top: Optional[int], database_path) -> None:
    """Re-evaluate a run's hiscores with another likelihood (e.g. the full pyhf ones);
    hiscores and show then give both K values."""
    from . import rescore as rescoring

    db = _run_database(run_dir, database_path, likelihood)
    path, rows = rescoring.rescore(run_dir, db, _entries(run_dir)[:top] if top else _entries(run_dir))
    for row in rows:
        click.echo(f"rank {row['rank']:>2}: K {row['K_run']:.3f} ({row['likelihood_run']}) -> "
                   f"{row['K']:.3f} ({likelihood}) in {row['seconds']:.1f} s")
    click.echo(f"wrote {path}")


def screen_options(func: Callable) -> Callable:
    """--screen and --screen-train-at, for walk and fakes alike."""
    func = click.option("--screen-train-at", default=None, metavar="S1,S2,...",
                        help="--screen with these training steps instead.")(func)
    return click.option("--screen", is_flag=True, default=False,
                        help="Screen proposals with a learned K (exact delayed acceptance), "
                             "retrained after steps 100, 200, 400, 800, then frozen.")(func)


def _screen_schedule(screen: bool, train_at: Optional[str]) -> Optional[List[int]]:
    """walk's screening schedule from --screen / --screen-train-at (None: neither given)."""
    from .screening import DEFAULT_TRAIN_AT

    if train_at is None:
        return list(DEFAULT_TRAIN_AT) if screen else None
    try:
        steps = sorted({int(t) for t in train_at.split(",")})
    except ValueError:
        steps = []
    if not steps or steps[0] < 1:
        raise click.UsageError(f"--screen-train-at {train_at!r}: expected step numbers >= 1, "
                               "e.g. 100,200,400")
    return steps


@cli.command()
@click.option("--walkers", type=click.IntRange(min=1), default=None,
              help="Chains, rounded up to whole ladders [default: the number of cores].")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Steps per chain (with --resume: more steps) [default: 100].")
@click.option("--seed", type=int, default=None, help="Seed of the run's SeedSequence [default: 0].")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None, help="Run directory.")
@click.option("--resume", "resume", type=click.Path(file_okay=False, exists=True), default=None,
              help="Continue the run in this directory from its checkpoints.")
@click.option("--ladder", default=None, metavar="T1,T2,...",
              help="Temperatures of the replica-exchange ladder, ascending [default: "
                   "0.1,0.16,0.25,0.4,0.63,1]; one temperature: plain Metropolis-Hastings chains.")
@click.option("--swap-every", type=click.IntRange(min=1), default=None,
              help="Steps between swap sweeps [default: 10].")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Shorthand for --ladder T (one rung, no swaps).")
@click.option("--processes", type=click.IntRange(min=1), default=None,
              help="Local worker processes [default: min(walkers, cores)].")
@click.option("--r-limit", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Largest r allowed of any result (the critic) [default: 1].")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=None,
              help="Steps between checkpoints (a killed chain redoes at most these) [default: 10].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="TOML or YAML file with any of these options (flags win).")
@cluster_options("Run the walkers")
@click.option("--likelihood", type=click.Choice(LIKELIHOODS), default=None,
              help="Statistical model of pyhf results [default: simplified; a resumed run "
                   "keeps its own].")
@click.option("--analyses", default=None, metavar="PATTERN",
              help="Comma-separated shell patterns on analysis ids [default: *].")
@click.option("--sqrts", default=None, callback=lambda c, p, v: None if v is None else _parse_sqrts(c, p, v),
              help="Centre-of-mass energies (TeV) of the results used [default: 8,13].")
@screen_options
@database_option
@_handle_errors
def walk(walkers, steps, seed, out, resume, ladder, swap_every, temperature, processes, r_limit,
         checkpoint_every, config_file, cluster, jobs, likelihood, analyses, sqrts, screen,
         screen_train_at, database_path) -> None:
    """Run replica-exchange Metropolis-Hastings chains over proto-models (or --resume a run)."""
    from .runs import WalkConfig, load_config, walk as run_walk

    values: Dict[str, Any] = load_config(Path(config_file)) if config_file else {}
    if "temperature" in values:  # a config file in the old terms; flags still win
        values["ladder"] = [values.pop("temperature")]
    temperatures = _temperatures(ladder, temperature)
    flags = {"walkers": walkers, "steps": steps, "seed": seed, "out": resume or out,
             "ladder": temperatures, "swap_every": swap_every, "r_limit": r_limit,
             "checkpoint_every": checkpoint_every, "database": database_path,
             "likelihood": likelihood, "screen_train_at": _screen_schedule(screen, screen_train_at),
             "analyses": None if analyses is None else [a.strip() for a in analyses.split(",")],
             "sqrts": None if sqrts is None else list(sqrts)}
    if resume is not None:  # the run fixes everything but how far and on what it runs
        fixed = sorted(k for k, v in flags.items() if v is not None and k not in ("steps", "out"))
        if fixed or config_file or out:
            typed = {"screen_train_at": "screen" if screen and screen_train_at is None else None}
            given = ["--" + (typed.get(k) or k).replace("_", "-") for k in fixed] \
                + (["--config"] if config_file else []) \
                + (["--out"] if out else [])
            raise click.UsageError(f"{', '.join(given)}: a resumed run keeps the settings in "
                                   f"{Path(resume) / 'run.json'}; with --resume give only --steps, "
                                   "--processes, --cluster, --jobs")
    values.update({k: v for k, v in flags.items() if v is not None})
    if not values.get("out"):
        raise click.UsageError("give --out DIR for a new run, or --resume DIR")
    runner = None
    if cluster:
        from .cluster import DaskRunner
        runner = DaskRunner(cluster, jobs)
    summary = run_walk(WalkConfig(**values, processes=processes), resume=resume is not None,
                       runner=runner)
    for state, T in zip(summary["progress"], summary["temperatures"]):
        best = "none" if state["best_K"] is None else f"{state['best_K']:.3f}"
        screened = (f", screened out {100 * state['screened']:.0f}% of its steps unscored"
                    if summary["screened"] else "")
        click.echo(f"walker {state['walker']} (T = {T:g}): {state['steps']} steps, acceptance "
                   f"{100 * state['acceptance']:.0f}%, best K {best}{screened}")
    for pair in summary["swaps"]:
        rate = "-" if pair["acceptance"] is None else f"{100 * pair['acceptance']:.0f}%"
        click.echo(f"swaps T {pair['T'][0]:g} <-> {pair['T'][1]:g}: {pair['accepted']}/"
                   f"{pair['proposed']} accepted ({rate})")
    if summary["crashed"]:
        click.echo(f"Error: walkers {summary['crashed']} crashed; --resume {summary['out']} "
                   "continues them", err=True)
        sys.exit(1)
    if summary["interrupted"]:
        sys.exit(130)


def _run_database(run_dir: Path, database_path: Optional[str], likelihood: Optional[str]):
    """The database to re-evaluate a run's models on: the run's own unless overridden."""
    from .loader import load_database
    from .runs import read_run_config
    config = read_run_config(run_dir)
    return load_database(database_path or config.get("database"),
                         likelihood or config["likelihood"])


def _entries(run_dir: Path):
    from . import hiscores
    entries = hiscores.read(run_dir / "hiscores.json")
    if not entries:
        raise ProtomodelsError(f"{run_dir / 'hiscores.json'}: no hiscores yet")
    return entries


@cli.command(name="hiscores")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@_handle_errors
def hiscores_command(run_dir: Path, as_json: bool) -> None:
    """The best distinct models of a run: rank, K, TL, particles and masses, combination."""
    from . import rescore as rescoring
    from .model import ProtoModel
    from .runs import read_run_config

    entries = _entries(run_dir)
    own = read_run_config(run_dir)["likelihood"]
    others = rescoring.rescored_likelihoods(run_dir, exclude=own)
    for e, k_by_likelihood in zip(entries, rescoring.k_values(run_dir, entries)):
        e["K_by_likelihood"] = k_by_likelihood
    if as_json:
        click.echo(json.dumps(entries, indent=2, sort_keys=True))
        return
    click.echo(f"{'rank':>4} {'K':>7} {'TL':>7}  " + "".join(f"{'K ' + o:>14}" for o in others)
               + f"  {'T':>5}  {'walker/step':<12} particles (GeV); combination")
    for e in entries:
        model = ProtoModel.from_dict(e["model"])
        combo = ", ".join(f"{c['analysis_id']}:{c['dataset']}" for c in e.get("combination", []))
        rescored = "".join(f"{e['K_by_likelihood'].get(o, float('nan')):>14.3f}" for o in others)
        rung = f"{e['temperature']:>5g}" if "temperature" in e else f"{'-':>5}"
        origin = f"{e['walker']}/{e['step']}" + ("*" if e.get("polished") else "")
        click.echo(f"{e['rank']:>4} {e['K']:>7.3f} {e.get('TL', 0.0):>7.3f}  {rescored}  {rung}  "
                   f"{origin:<12} {model.describe()}; {combo or '-'}")
    click.echo(f"(K, TL: the run's own {own} likelihood, which ranks the models"
               + (f"; re-scored with: {', '.join(others)}" if others else "")
               + "; T: the temperature of the chain that found the model"
               + ("; *: polished (protomodels polish), from the model the chain found)"
                  if any(e.get("polished") for e in entries) else ")"))


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--rank", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--slha", "slha_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the best-fit model as SLHA here.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@run_likelihood_option
@run_database_option
@_handle_errors
def show(run_dir: Path, rank: int, slha_out, as_json: bool, likelihood, database_path) -> None:
    """One hiscore model in full, re-evaluated: masses, BRs, multipliers, cross sections,
    combination and top r values of its best fit (multipliers scaled by mu_hat)."""
    from . import hiscores
    from .model import NAMES
    from .slha import write_slha

    entries = {e["rank"]: e for e in _entries(run_dir)}
    if rank not in entries:
        raise ProtomodelsError(f"{run_dir}: no hiscore of rank {rank} (have 1-{len(entries)})")
    entry = entries[rank]
    model, xsecs = hiscores.best_fit_model(entry)
    if slha_out:
        write_slha(model, xsecs, Path(slha_out))
    db = _run_database(run_dir, database_path, likelihood)
    _, report = hiscores.evaluate_entry(run_dir, entry, db)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    lines = [f"rank {rank} of {run_dir} (walker {entry['walker']}, step {entry['step']})",
             "K by likelihood: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                             sorted(report["K_by_likelihood"].items())),
             "masses: " + model.describe()]
    for pid, brs in sorted(model.decays.items()):
        lines.append(f"  {NAMES[pid]} -> " + ", ".join(f"{c} {b:.3f}" for c, b in sorted(brs.items())))
    lines.append("cross sections (fb), multipliers applied:")
    for (s, (a, b)), v in sorted(xsecs.items()):
        lines.append(f"  {s:>2} TeV  {NAMES[abs(a)]} {NAMES[abs(b)]}: {1000.0 * v:.4g} "
                     f"(multiplier {model.multiplier((a, b)):.3g})")
    click.echo("\n".join(lines) + "\n\n" + format_significance(report), nl=False)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@run_likelihood_option
@run_database_option
@_handle_errors
def plot(run_dir: Path, out_dir: Path, likelihood, database_path) -> None:
    """PNGs: K trace per walker, mass spectra of the best models, and the best model's
    likelihoods vs mu for each member of its combination."""
    from . import hiscores, plots

    entry = _entries(run_dir)[0]
    result, _ = hiscores.evaluate_entry(run_dir, entry,
                                        _run_database(run_dir, database_path, likelihood))
    members = plots.combination_curves(result)
    for path in plots.plot_run(run_dir, out_dir, likelihood_members=members or None,
                               mu_hat=result.mu_hat, mu_max=result.mu_max):
        click.echo(str(path))


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the page, index.html [default: RUN_DIR/report].")
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True,
              help="Hiscores shown in full (each re-evaluated: about a second).")
@click.option("--fakes", "fakes_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=None, metavar="BATCH",
              help="A batch of runs on fake databases (`protomodels fakes --out BATCH`): add "
                   "the global p-value of this run's best K.")
@run_likelihood_option
@run_database_option
@_handle_errors
def report(run_dir: Path, out_dir: Optional[Path], top: int, fakes_dir: Optional[Path],
           likelihood, database_path) -> None:
    """A self-contained HTML page of a run (index.html, images and SLHA files inlined; opens
    offline): configuration, K traces, hiscores, and the best models re-evaluated: spectra,
    decay graphs, combinations, likelihoods, top r values."""
    from .report import build_report

    page = build_report(run_dir, out_dir or run_dir / "report", top=top, database=database_path,
                        likelihood=likelihood, fakes=fakes_dir)
    click.echo(str(page))


noise_option = click.option(
    "--noise", type=click.Choice(["poisson", "fixed"]), default="poisson", show_default=True,
    help="poisson: background and signal counts drawn; fixed: no draws at all "
         "(n_obs = b + s, UL_obs = UL_exp), an Asimov database.")
fudge_option = click.option(
    "--fudge", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
    help="Scale the background uncertainties of the draws (paper: 0.65 for injection).")
inject_option = click.option(
    "--inject", type=click.Path(dir_okay=False, exists=True), default=None, metavar="MODEL.slha",
    help="Add this proto-model's expected signal to the fake observations.")


@cli.command()
@click.option("--seed", type=int, required=True, help="Seed of every draw (recorded).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the fake database (its fakedb.json).")
@inject_option
@fudge_option
@noise_option
@click.option("--json", "as_json", is_flag=True, help="JSON summary output.")
@database_option
@_handle_errors
def fakedb(seed: int, out: Path, inject, fudge: float, noise: str, as_json: bool,
           database_path: Optional[str]) -> None:
    """A fake database: every observation redrawn from its background model (plus an
    injected signal); use it with --database OUT."""
    from . import fakedb as fake

    record = fake.generate(out, seed=seed, base=database_path, inject=inject, fudge=fudge,
                           noise=noise)
    ems = record["efficiency_maps"]
    summary = {"out": str(out), "seed": seed, "noise": noise, "fudge": fudge, "inject": inject,
               "base": record["base"], "seconds": record["seconds"],
               "signal_regions": len(ems),
               "signal_regions_changed": sum(r["n_obs"] != r["n_obs_real"] for r in ems),
               "ul_maps_shifted": sum(r["x"] is not None for r in record["upper_limit_maps"]),
               "ul_maps_with_signal": sum(bool(r["signal_points"]) for r in record["upper_limit_maps"]),
               "pyhf_regions": len(record["pyhf"]),
               "signal_events": (record["injected"] or {}).get("signal_events")}
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    click.echo(f"fake database {out} (seed {seed}, noise {noise}, fudge {fudge}) from "
               f"{record['base']['version']} in {record['seconds']:.1f} s: "
               f"{summary['signal_regions_changed']}/{len(ems)} signal-region counts changed, "
               f"{summary['ul_maps_shifted']} UL maps shifted, {summary['pyhf_regions']} pyhf regions set"
               + (f"; injected {inject}: {summary['signal_events']:.1f} signal events, "
                  f"{summary['ul_maps_with_signal']} UL maps" if inject else ""))
    click.echo(f"use it with: --database {out}")


@cli.command()
@click.argument("real_run", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("fake_runs", nargs=-1, required=True,
                type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG of the distribution [default: REAL_RUN/pvalue.png].")
@click.option("--json", "as_json", is_flag=True, help=f"JSON output (schema {schema_id('pvalue')}).")
@click.option("--output-file", default=None, metavar="FILE", help="Write the output here.")
@_handle_errors
def pvalue(real_run: Path, fake_runs, plot_path: Optional[Path], as_json: bool,
           output_file: Optional[str]) -> None:
    """Global p-value of REAL_RUN's best K against the best K of FAKE_RUNS (runs on fake
    SM-only databases), with a plot of the distribution."""
    from . import plots, pvalue as pv

    report = pv.compare_runs(real_run, fake_runs)
    report["plot"] = str(plots.plot_pvalue(report, plot_path or real_run / "pvalue.png"))
    _emit(json.dumps(report, indent=2, sort_keys=True) + "\n" if as_json
          else pv.format_report(report) + f"plot: {report['plot']}\n", output_file)


@cli.command()
@click.argument("runs", nargs=-1, required=True,
                type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--injected", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, metavar="MODEL.slha",
              help="The injected model [default: the one each run's fake database records].")
@click.option("--window", type=click.FloatRange(min=0, min_open=True), default=200.0,
              show_default=True, help="GeV: how close a partner's mass must be.")
@click.option("--reference-fits", "fits", is_flag=True,
              help="Also ask which injected particles K itself prefers on each run's fake "
                   "database: the injected model and the same model without each particle "
                   "are each polished there, and a particle is preferred when K is higher "
                   "with it (undecided within 0.1).  The search gap is the walk's best K "
                   "minus the injected model's, as injected / polished (negative: the walk "
                   "fell short).  About 2 minutes a run.")
@click.option("--expected", is_flag=True,
              help="Also the same fits on the batch's Asimov fake database (no draws: "
                   "n_obs = b + s, UL_obs = UL_exp plus the signal), built once beside the "
                   "runs as asimov-<digest>/: the K each particle gains without noise, with "
                   "the best combinations with and without it (indicative: not the median "
                   "fake).  Uses the model the fakes recorded, so --injected must be that "
                   "model or left out.  About 2-3 minutes.")
@click.option("--max-evaluations", type=click.IntRange(min=1), default=150,
              show_default=True, help="K evaluations per reference fit.")
@click.option("--json", "as_json", is_flag=True, help=f"JSON output (schema {schema_id('closure')}).")
@click.option("--output-file", default=None, metavar="FILE", help="Write the output here.")
@_handle_errors
def closure(runs, injected: Optional[Path], window: float, fits: bool, expected: bool,
            max_evaluations: int, as_json: bool, output_file: Optional[str]) -> None:
    """Injection closure: did the runs on fake databases with an injected model (e.g.
    `fakes --inject paper_best.slha --fudge 0.65`) find its particles, and only them?
    With --reference-fits: should they have, i.e. does K prefer each particle there?
    With --expected: how much K each particle gains without noise."""
    from . import closure as study

    report = study.closure(runs, injected=injected, window=window, fits=fits,
                           max_evaluations=max_evaluations, expected=expected)
    _emit(json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n" if as_json
          else study.format_closure(report) + "\n", output_file)


def _temperatures(ladder: Optional[str], temperature: Optional[float]) -> Optional[List[float]]:
    """The ladder of --ladder or --temperature (None if neither); a UsageError for both."""
    if ladder is not None and temperature is not None:
        raise click.UsageError("give --ladder or --temperature, not both")
    if ladder is not None:
        return _ladder(ladder)
    return None if temperature is None else [temperature]


def _ladder(text: str) -> List[float]:
    """--ladder T1,T2,...: a one-line UsageError for anything but positive ascending numbers."""
    from .tempering import Ladder

    try:
        return list(Ladder(tuple(float(t) for t in text.split(","))).temperatures)
    except ValueError as error:
        raise click.UsageError(f"--ladder {text!r}: {error}") from None


@cli.command()
@click.option("--count", type=click.IntRange(min=1), required=True, help="Number of fake databases.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the SeedSequence that gives each fake its database and walker seeds.")
@click.option("--walkers", type=click.IntRange(min=1), required=True)
@click.option("--steps", type=click.IntRange(min=1), required=True, help="Steps per walker.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for db-<i>/ and run-<i>/ (run again to continue).")
@click.option("--ladder", default=None, metavar="T1,T2,...",
              help="Temperatures of each fake's ladder, as for walk [default: walk's].")
@click.option("--swap-every", type=click.IntRange(min=1), default=None,
              help="Steps between swap sweeps [default: 10].")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=None,
              help="One temperature, no replica exchange [default: walk's ladder].")
@click.option("--r-limit", type=click.FloatRange(min=0, min_open=True), default=None)
@inject_option
@fudge_option
@noise_option
@cluster_options("Run each fake's walkers")
@likelihood_option
@screen_options
@database_option
@_handle_errors
def fakes(count, seed, walkers, steps, out, ladder, swap_every, temperature, r_limit, inject,
          fudge, noise, cluster, jobs, likelihood, screen, screen_train_at,
          database_path) -> None:
    """Batch: COUNT fake databases and a walker run on each; then
    `protomodels pvalue REAL_RUN OUT/run-*` (or `protomodels closure OUT/run-*` with --inject)."""
    from .pvalue import run_fakes, run_summary

    temperatures = _temperatures(ladder, temperature)
    options = {k: v for k, v in (("ladder", temperatures), ("swap_every", swap_every),
                                 ("r_limit", r_limit),
                                 ("screen_train_at", _screen_schedule(screen, screen_train_at)))
               if v is not None}
    options["likelihood"] = likelihood
    runs = run_fakes(out, count=count, seed=seed, walkers=walkers, steps=steps,
                     base=database_path, inject=inject, fudge=fudge, noise=noise,
                     cluster=cluster, jobs=jobs, walk_options=options)
    for run in runs:
        summary = run_summary(run)
        click.echo(f"{run}: best K {summary['best_K']:.3f} ({', '.join(summary['particles'])})")


@cli.command()
@click.option("--models", type=click.IntRange(min=1), default=20, show_default=True,
              help="Models drawn from the walker's proposals for (a) and (b).")
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True,
              help="Walker steps per walker for (c).")
@click.option("--walkers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Forked walkers for (c) and the memory figures.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help=f"JSON output (schema {schema_id('bench')}).")
@click.option("--output-file", default=None, metavar="FILE", help="Write the output here.")
@likelihood_option
@database_option
@_handle_errors
def bench(models: int, steps: int, walkers: int, seed: int, as_json: bool,
          output_file: Optional[str], likelihood: str, database_path: Optional[str]) -> None:
    """Time (a) SModelS' own pipeline, (b) our cold evaluation and (c) warm walker steps
    on the full database, with load time and memory, and one CLs evaluation of each pyhf
    workspace in both likelihoods (see protomodels/bench.py)."""
    from . import bench as benchmark
    from .loader import load_database

    db = load_database(database_path, likelihood)
    result = benchmark.run(db, models=models, seed=seed, steps=steps, walkers=walkers,
                           database=database_path)
    _emit(json.dumps(result, indent=2, sort_keys=True) + "\n" if as_json
          else benchmark.format_report(result) + "\n", output_file)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True,
              help="Polish the best N (unpolished) hiscores.")
@click.option("--max-evaluations", type=click.IntRange(min=1), default=150, show_default=True,
              help="K evaluations per model (about 0.2-1 s each on the real database).")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@run_database_option
@_handle_errors
def polish(run_dir: Path, top: int, max_evaluations: int, as_json: bool,
           database_path: Optional[str]) -> None:
    """Locally optimise K (Nelder-Mead, deterministic) over the masses, continuous
    multipliers and BRs of the run's best hiscores, particles and channels fixed; add the
    improved models to its hiscores (marked polished) and export them as SLHA."""
    from . import polish as polishing

    _entries(run_dir)  # no hiscores: say so before loading the database
    score = polishing.run_score(run_dir, database_path)

    def report(row: Dict[str, Any]) -> None:
        if not as_json:
            again = ("" if abs(row["K_start"] - row["K_before"]) <= 1e-6
                     else f" (re-evaluated {row['K_start']:.3f})")
            click.echo(f"rank {row['rank_before']:>2} (walker {row['walker']}, step {row['step']}): "
                       f"K {row['K_before']:.3f}{again} -> {row['K_after']:.3f}"
                       + ("" if row["improved"] else " (not better: no new entry)")
                       + f", {row['evaluations']} evaluations, {row['seconds']:.1f} s")

    rows = polishing.polish(run_dir, top=top, max_evaluations=max_evaluations, score=score,
                            report=report)
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    for row in rows:
        if row["improved"]:
            click.echo(f"rank {row['rank_before']} polished: now rank {row['rank']}, {row['slha']}")


def _scan_option(parser: str) -> Callable:
    """A click callback applying ``protomodels.scan``'s function ``parser`` (None passes),
    its ValueError a BadParameter."""
    def callback(_ctx, _param, value):
        from . import scan as scanning

        if value is None:
            return None
        try:
            return getattr(scanning, parser)(value)
        except ValueError as error:
            raise click.BadParameter(str(error)) from None
    return callback


@cli.command(name="scan")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--rank", type=click.IntRange(min=1), default=1, show_default=True,
              help="The hiscore whose best fit is scanned.")
@click.option("--x", "x_param", required=True, metavar="PARAMETER",
              help="A particle of the model (its mass, GeV), e.g. Xt, or a multiplier "
                   "ssm:A,B, e.g. ssm:Xt,Xt (~A: antiparticle, where both pairs exist).")
@click.option("--y", "y_param", required=True, metavar="PARAMETER", help="As --x.")
@click.option("--points", default="20x20", show_default=True, metavar="NxM",
              callback=_scan_option("parse_points"),
              help="Grid points along x and y.")
@click.option("--x-range", default=None, metavar="LO:HI",
              callback=_scan_option("parse_range"),
              help="Range of --x [default: mass +- max(40%, 100 GeV) within the walks' range; "
                   "multiplier /3 to x3, log].")
@click.option("--y-range", default=None, metavar="LO:HI",
              callback=_scan_option("parse_range"),
              help="Range of --y [default: as --x-range].")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Scan file; run again to continue it [default: "
                   "RUN_DIR/scans/rank<R>-<x>-<y>-<key>.json].")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG of the K map [default: the scan file with .png].")
@click.option("--processes", type=click.IntRange(min=1), default=None,
              help="Local worker processes [default: min(chunks, cores)].")
@cluster_options("Evaluate the points")
@click.option("--json", "as_json", is_flag=True, help="JSON output (the summary).")
@run_database_option
@_handle_errors
def scan_command(run_dir: Path, rank: int, x_param: str, y_param: str, points, x_range, y_range,
                 out_file: Optional[Path], plot_path: Optional[Path], processes: Optional[int],
                 cluster: Optional[str], jobs: Optional[int], as_json: bool,
                 database_path: Optional[str]) -> None:
    """K (and TL, mu_hat, r_max) on a grid of two parameters of a hiscore's best fit,
    everything else fixed, with the run's own score; resumable; plotted as a K map."""
    from . import scan as scanning

    if (processes is not None) and cluster:
        raise click.UsageError("give --processes (local) or --cluster (Dask), not both")
    try:
        summary = scanning.scan(run_dir, x_param, y_param, rank=rank, points=points,
                                x_range=x_range, y_range=y_range, out=out_file,
                                database=database_path, cluster=cluster, jobs=jobs,
                                processes=processes)
    except KeyboardInterrupt:
        click.echo("interrupted: the finished points are kept; run the same command again "
                   "to continue", err=True)
        sys.exit(130)
    document = scanning.read_scan(Path(summary["file"]))
    target = plot_path or scanning.default_plot_path(Path(summary["file"]))
    scanning.plot_scan(document, target)
    summary["plot"] = str(target)
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    click.echo(scanning.format_summary(summary) + f"  plot: {target}")


@cli.command(name="posterior")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--burn-in", type=click.IntRange(min=0), default=None,
              help="Steps dropped from the start of each T = 1 chain [default: half of its steps, "
                   "and at least up to a --screen run's last training].")
@click.option("--bins", type=click.IntRange(min=1), default=20, show_default=True,
              help="Bins of each particle's mass histogram.")
@click.option("--json", "as_json", is_flag=True, help=f"JSON output (schema {schema_id('posterior')}).")
@click.option("--output-file", default=None, metavar="FILE", help="Write the output here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw the mass histograms as a PNG here (needs matplotlib).")
@_handle_errors
def posterior(run_dir: Path, burn_in: Optional[int], bins: int, as_json: bool,
              output_file: Optional[str], plot_path: Optional[Path]) -> None:
    """The posterior from the T = 1 chains of a run, after burn-in: probability of each
    particle content and particle, mass histograms, and tau, ESS and R-hat of K, the
    number of particles and each particle's presence."""
    from . import posterior as post

    report = post.posterior(run_dir, burn_in=burn_in, bins=bins)
    if plot_path is not None:
        post.plot_masses(report, plot_path)
        report["plot"] = str(plot_path)
    _emit(json.dumps(report, indent=2, sort_keys=True) + "\n" if as_json
          else post.format_report(report) + (f"plot: {plot_path}\n" if plot_path else ""),
          output_file)


def main() -> None:  # console-script entry point
    from .runs import one_blas_thread

    one_blas_thread()
    cli(obj={})


if __name__ == "__main__":
    main()
