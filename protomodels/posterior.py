"""The posterior of a run, from its T = 1 chains (``protomodels posterior RUN``).

With replica exchange (``protomodels.tempering``) every chain at T = 1 is an exact
Metropolis-Hastings chain on exp(K / 2) times the moves' reference measure, so its
states after burn-in are (correlated) draws from the posterior.  ``posterior`` reads
them from the run's histories (``walker-<i>/history.jsonl``: the chain's state after
each step) and reports:

* the probability of each particle content (the set of particle names of a state, e.g.
  ``"XZ1 XZ2 Xt"``) and of each particle's presence: the fraction of the samples, over
  all T = 1 chains pooled;
* per particle, a histogram (counts in equal-width bins) and quantiles of its mass, over
  the samples in which it is present (the mass distribution *given* the particle);
* diagnostics on scalar traces (K, the number of particles, each particle's presence
  indicator): the integrated autocorrelation time tau, the effective sample size
  ESS = samples / tau, and the rank-normalised split R-hat across the T = 1 chains.

tau is ``emcee.autocorr.integrated_time`` (the chains' autocorrelation functions
averaged, then Sokal's automated window with c = 5) when emcee is installed; emcee is
not a dependency of protomodels, so otherwise the same estimator is computed here
(``integrated_time``): the two agree to rounding.  R-hat is Vehtari, Gelman, Simpson,
Carpenter & Buerkner (2021), "Rank-normalization, folding, and localization: an
improved R-hat", Bayesian Analysis 16(2), 667: the larger of the bulk (rank-normalised)
and the tail (folded, rank-normalised) split R-hat; the plain split R-hat of Gelman et
al. (2013), Bayesian Data Analysis 3rd ed., eq. 11.4, is reported beside it.

The mass histograms can be drawn as a PNG (``plot_masses``); matplotlib is optional, as
for ``protomodels.plots``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from . import __version__
from .exceptions import RunError
from .runs import chain_folder, read_history, read_run_config
from .schemas import schema_id
from .tempering import Ladder

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

SCHEMA = schema_id("posterior")
#: Sokal's window constant (emcee's default): the window is the smallest M >= c tau(M).
WINDOW_C = 5.0
#: emcee's reliability rule: tau is trusted when the chains are longer than 50 tau.
RELIABLE_TOL = 50.0
#: Thresholds of the report's warnings (Vehtari et al. 2021: R-hat < 1.01, ESS > 100).
RHAT_WARN = 1.01
ESS_WARN = 100.0
QUANTILES = (0.025, 0.16, 0.5, 0.84, 0.975)

TAU_EMCEE = "emcee.autocorr.integrated_time (c = 5, ACFs averaged over the T = 1 chains)"
TAU_OWN = ("Sokal's automated windowing (c = 5, ACFs averaged over the T = 1 chains), "
           "as emcee.autocorr.integrated_time (emcee not installed)")
RHAT_METHOD = ("rank-normalised split R-hat, max of bulk and tail (Vehtari et al. 2021); "
               "rhat_split: plain split R-hat (Gelman et al. 2013)")


# ---------------------------------------------------------------- autocorrelation

def _acf(x: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation function of a 1-D series, by FFT (as emcee's
    ``autocorr.function_1d``)."""
    n = 1 << max(0, int(len(x) - 1).bit_length())  # next power of two >= len(x)
    f = np.fft.fft(x - np.mean(x), n=2 * n)
    acf = np.fft.ifft(f * np.conjugate(f))[: len(x)].real
    return acf / acf[0]


def integrated_time(chains: np.ndarray, c: float = WINDOW_C) -> float:
    """Integrated autocorrelation time of ``chains`` (shape (chains, steps), each chain
    non-constant): tau(M) = 1 + 2 sum_{t=1..M} rho(t) with rho the chains' mean
    autocorrelation function, at Sokal's automated window, the smallest M with
    M >= c tau(M) (Sokal 1997, "Monte Carlo methods in statistical mechanics:
    foundations and new algorithms", section 3; emcee's docs, "Autocorrelation analysis
    & convergence").  The same estimator as ``emcee.autocorr.integrated_time``."""
    rho = np.mean([_acf(np.asarray(chain, dtype=float)) for chain in chains], axis=0)
    taus = 2.0 * np.cumsum(rho) - 1.0
    inside = np.arange(len(taus)) < c * taus
    window = int(np.argmin(inside)) if np.any(inside) else len(taus) - 1
    return float(taus[window])


def _tau(chains: np.ndarray) -> Tuple[float, str]:
    """(tau, method): emcee's estimate when emcee is installed, else ours."""
    try:
        from emcee.autocorr import integrated_time as emcee_time
    except ImportError:
        return integrated_time(chains), TAU_OWN
    # emcee wants (steps, walkers, dimensions).  quiet: a chain shorter than 50 tau logs
    # a warning instead of raising; silenced here, as ``reliable`` and the report say it.
    emcee_logger = logging.getLogger("emcee.autocorr")
    level = emcee_logger.level
    emcee_logger.setLevel(logging.ERROR)
    try:
        tau = emcee_time(chains.T[:, :, None], c=WINDOW_C, tol=RELIABLE_TOL, quiet=True)
    finally:
        emcee_logger.setLevel(level)
    return float(tau[0]), TAU_EMCEE


def tau_method() -> str:
    """Which estimator of tau this installation uses."""
    from importlib.util import find_spec

    return TAU_EMCEE if find_spec("emcee") is not None else TAU_OWN


# ---------------------------------------------------------------- R-hat

def _split(chains: np.ndarray) -> np.ndarray:
    """Each chain cut in its first and last half (the middle step dropped if odd)."""
    half = chains.shape[1] // 2
    return np.concatenate([chains[:, :half], chains[:, chains.shape[1] - half:]])


def _rhat(chains: np.ndarray) -> float:
    """Potential scale reduction of ``chains`` (m, n): sqrt(((n-1)/n W + B/n) / W) with W
    the mean within-chain variance and B/n the variance of the chain means."""
    n = chains.shape[1]
    within = float(np.mean(np.var(chains, axis=1, ddof=1)))
    between = float(np.var(np.mean(chains, axis=1), ddof=1))
    if within == 0.0:
        return math.inf if between > 0 else math.nan
    return math.sqrt(((n - 1) / n * within + between) / within)


def _rank_normal(chains: np.ndarray) -> np.ndarray:
    """Ranks over all draws (ties averaged) mapped to normal scores (Blom's offsets)."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    ranks = rankdata(chains, method="average").reshape(chains.shape)
    return ndtri((ranks - 0.375) / (chains.size + 0.25))


def split_rhat(chains: np.ndarray) -> float:
    """Plain split R-hat (Gelman et al. 2013, BDA3 eq. 11.4) of ``chains`` (m, n)."""
    return _rhat(_split(np.asarray(chains, dtype=float)))


def rank_rhat(chains: np.ndarray) -> float:
    """Rank-normalised split R-hat (Vehtari et al. 2021): the larger of the bulk R-hat
    (split chains, rank-normalised) and the tail R-hat (of |x - median|, likewise)."""
    split = _split(np.asarray(chains, dtype=float))
    bulk = _rhat(_rank_normal(split))
    tail = _rhat(_rank_normal(np.abs(split - np.median(split))))
    values = [v for v in (bulk, tail) if not math.isnan(v)]
    return max(values) if values else math.nan


def trace_diagnostics(chains: np.ndarray) -> Dict[str, Any]:
    """tau, ESS, R-hat and mean of one scalar trace, ``chains`` of shape (chains, steps).

    ``tau``: integrated autocorrelation time in steps (module docstring); ``ess``: the
    number of samples (chains x steps) over tau; ``reliable``: whether the chains are
    longer than 50 tau (emcee's rule); ``rhat``: rank-normalised split R-hat, ``rhat_split``
    the plain one.  A quantity that cannot be estimated is None with a ``note``: a trace
    constant in some chain (a particle never or always present there) has no
    autocorrelation; a trace constant within each chain but different between them has an
    infinite R-hat (the chains do not mix)."""
    chains = np.asarray(chains, dtype=float)
    m, n = chains.shape
    out: Dict[str, Any] = {"mean": None, "tau": None, "ess": None, "reliable": False,
                           "rhat": None, "rhat_split": None, "note": None}
    if not np.all(np.isfinite(chains)):
        out["note"] = "non-finite values"
        return out
    out["mean"] = float(np.mean(chains))
    constant = [i for i in range(m) if np.ptp(chains[i]) == 0.0]
    if len(constant) == m and np.ptp(chains) == 0.0:
        out["note"] = "constant"
        return out
    if constant:
        out["note"] = (f"constant in {len(constant)} of {m} chains: tau not estimable"
                       + ("; the chains do not mix" if len(constant) == m else ""))
    else:
        tau, _ = _tau(chains)
        out.update(tau=tau, ess=m * n / tau if tau > 0 else None,
                   reliable=bool(tau > 0 and n > RELIABLE_TOL * tau))
    if n >= 4:
        for key, value in (("rhat", rank_rhat(chains)), ("rhat_split", split_rhat(chains))):
            out[key] = value if math.isfinite(value) else None
        if out["rhat"] is None and not out["note"]:
            out["note"] = "R-hat not estimable"
    return out


# ---------------------------------------------------------------- the posterior

def content_of(entry: Dict[str, Any]) -> str:
    """A history entry's particle content: its particle names, sorted, space-separated."""
    return " ".join(sorted(entry["model"]["masses"]))


def _t1_chains(run_dir: Path) -> Tuple[Ladder, List[int]]:
    """(ladder, T = 1 chains) of a run; ``RunError`` without run.json or T = 1."""
    if not (run_dir / "run.json").is_file():
        raise RunError(f"{run_dir}: not a run directory (no run.json)")
    config = read_run_config(run_dir)
    if "ladder" not in config:
        raise RunError(f"{run_dir / 'run.json'}: unreadable run configuration")
    try:
        ladder = Ladder.for_walkers(config["ladder"], int(config.get("walkers", 1)))
    except (ValueError, TypeError) as error:
        raise RunError(f"{run_dir / 'run.json'}: {error}") from None
    chains = ladder.at(1.0)
    if not chains:
        raise RunError(f"{run_dir}: no chain at T = 1 in its ladder "
                       f"{', '.join(f'{t:g}' for t in ladder.temperatures)}: "
                       "the posterior is sampled only at T = 1")
    return ladder, chains


def posterior(run_dir: Path, burn_in: Optional[int] = None, bins: int = 20) -> Dict[str, Any]:
    """The posterior of the run in ``run_dir`` from its T = 1 chains (module docstring).

    ``burn_in``: steps dropped from the start of each chain (default: half of the steps
    the T = 1 chains have in common, and at least up to a screened run's last training
    of its learned K).  Chains of unequal length (a crashed or interrupted
    one) are cut to the shortest, so that every chain gives the same steps.  ``bins``:
    equal-width bins of each mass histogram, between the smallest and largest sample.

    Returns a JSON-ready dict (schema ``protomodels.posterior/1``): ``chains`` used,
    ``steps`` (per chain), ``burn_in``, ``samples`` (all chains), ``contents`` (each with
    ``count`` and ``probability``, most probable first), ``presence`` (per particle:
    ``probability`` and its Monte-Carlo error ``mcse`` = sqrt(p (1 - p) / ESS)),
    ``histograms`` (per particle: ``edges_GeV``, ``counts``, mean, std, quantiles) and
    ``diagnostics`` (``trace_diagnostics`` of K, of the number of particles and of each
    presence indicator, plus ``warnings``).  ``RunError`` (one line) for a directory
    that is not a run, a ladder without T = 1, or no samples left after burn-in."""
    run_dir = Path(run_dir)
    if bins < 1:
        raise ValueError(f"bins = {bins}: need at least one")
    ladder, chain_ids = _t1_chains(run_dir)
    histories = {c: read_history(chain_folder(run_dir, c)) for c in chain_ids}
    lengths = {c: max((int(e["step"]) for e in h), default=0) for c, h in histories.items()}
    steps = min(lengths.values())
    if steps == 0:
        empty = [f"walker-{c}" for c, n in lengths.items() if n == 0]
        raise RunError(f"{run_dir}: T = 1 chain(s) {', '.join(empty)} have no steps yet")
    if max(lengths.values()) > steps:
        logger.warning("%s: the T = 1 chains have %s steps: using the first %d of each",
                       run_dir, ", ".join(f"walker-{c} {n}" for c, n in lengths.items()), steps)
    default_burn_in = burn_in is None
    adapted = max(read_run_config(run_dir).get("screen_train_at") or [0])
    if burn_in is None:  # a screened chain adapts up to its last training: not exact before
        if adapted >= steps:
            raise RunError(f"{run_dir}: the learned K of this screened run is retrained up to "
                           f"step {adapted} and the T = 1 chains have {steps} steps: no exact "
                           "samples yet (walk on, or give --burn-in to look at the adaptive part)")
        burn_in = max(steps // 2, adapted)
    elif burn_in < adapted:
        logger.warning("%s: --burn-in %d keeps steps before the screen's last training "
                       "(step %d), which are not exact samples", run_dir, burn_in, adapted)
    if burn_in < 0:
        raise RunError(f"--burn-in {burn_in}: must not be negative")
    if burn_in >= steps:
        raise RunError(f"{run_dir}: burn-in {burn_in} leaves no samples (the T = 1 chains "
                       f"have {steps} steps)")
    kept: Dict[int, List[Dict[str, Any]]] = {}
    for c, history in histories.items():
        by_step = {int(e["step"]): e for e in history}
        missing = [s for s in range(burn_in + 1, steps + 1) if s not in by_step]
        if missing:
            raise RunError(f"{run_dir / f'walker-{c}' / 'history.jsonl'}: step {missing[0]} "
                           "missing")
        kept[c] = [by_step[s] for s in range(burn_in + 1, steps + 1)]
    per_chain = steps - burn_in
    samples = [e for c in chain_ids for e in kept[c]]
    total = len(samples)
    logger.info("%s: %d samples from T = 1 chains %s (steps %d-%d)", run_dir, total,
                chain_ids, burn_in + 1, steps)

    contents = Counter(content_of(e) for e in samples)
    content_rows = [{"content": name, "particles": name.split(), "count": count,
                     "probability": count / total}
                    for name, count in sorted(contents.items(), key=lambda kv: (-kv[1], kv[0]))]
    particles = sorted({p for e in samples for p in e["model"]["masses"]})

    def traces(value) -> np.ndarray:
        return np.array([[value(e) for e in kept[c]] for c in chain_ids], dtype=float)

    diagnostics: Dict[str, Any] = {
        "tau_method": tau_method(), "rhat_method": RHAT_METHOD,
        "K": trace_diagnostics(traces(lambda e: e["K"])),
        "n_particles": trace_diagnostics(traces(lambda e: len(e["model"]["masses"]))),
        "presence": {}}
    presence_rows = []
    histograms: Dict[str, Any] = {}
    for name in particles:
        indicator = traces(lambda e: name in e["model"]["masses"])
        diag = trace_diagnostics(indicator)
        diagnostics["presence"][name] = diag
        count = int(indicator.sum())
        p = count / total
        presence_rows.append({"particle": name, "count": count, "probability": p,
                              "mcse": math.sqrt(p * (1 - p) / diag["ess"]) if diag["ess"] else None})
        masses = np.array([e["model"]["masses"][name] for e in samples
                           if name in e["model"]["masses"]], dtype=float)
        counts, edges = np.histogram(masses, bins=bins)
        histograms[name] = {"samples": int(masses.size), "edges_GeV": edges.tolist(),
                            "counts": counts.tolist(), "mean_GeV": float(masses.mean()),
                            "std_GeV": float(masses.std()),
                            "quantiles_GeV": {f"{q:g}": float(v) for q, v in
                                              zip(QUANTILES, np.quantile(masses, QUANTILES))}}
    presence_rows.sort(key=lambda r: (-r["probability"], r["particle"]))
    diagnostics["warnings"] = _warnings(diagnostics)
    return {
        "schema": SCHEMA, "protomodels_version": __version__, "run": str(run_dir),
        "ladder": list(ladder.temperatures), "columns": ladder.columns,
        "chains": [{"chain": c, "folder": f"walker-{c}", "steps": lengths[c]} for c in chain_ids],
        "steps": steps, "burn_in": burn_in, "burn_in_default": default_burn_in,
        "samples_per_chain": per_chain, "samples": total, "bins": bins,
        "contents": content_rows, "presence": presence_rows, "histograms": histograms,
        "diagnostics": diagnostics,
    }


def _warnings(diagnostics: Dict[str, Any]) -> List[str]:
    """One line per trace whose R-hat is over 1.01, ESS under 100, or tau unreliable."""
    named = [("K", diagnostics["K"]), ("number of particles", diagnostics["n_particles"])]
    named += [(f"presence of {p}", d) for p, d in diagnostics["presence"].items()]
    out = []
    for label, d in named:
        problems = []
        if d["rhat"] is not None and d["rhat"] > RHAT_WARN:
            problems.append(f"R-hat {d['rhat']:.3f} > {RHAT_WARN}")
        if d["ess"] is not None and d["ess"] < ESS_WARN:
            problems.append(f"ESS {d['ess']:.0f} < {ESS_WARN:.0f}")
        if d["tau"] is not None and not d["reliable"]:
            problems.append(f"chains shorter than {RELIABLE_TOL:.0f} tau (tau {d['tau']:.1f})")
        if d["note"] and d["note"] != "constant":
            problems.append(d["note"])
        if problems:
            out.append(f"{label}: " + "; ".join(problems))
    return out


# ---------------------------------------------------------------- output

def _num(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_report(result: Dict[str, Any], top: int = 20) -> str:
    """Plain-text tables of ``posterior``'s result: the ``top`` most probable contents,
    presence and masses per particle, diagnostics and warnings (all in the JSON)."""
    chains = ", ".join(c["folder"] for c in result["chains"])
    ladder = ", ".join(f"{t:g}" for t in result["ladder"])
    lines = [
        f"posterior of {result['run']}: T = 1 chains {chains} "
        f"(ladder {ladder}, {result['columns']} column{'s' if result['columns'] > 1 else ''})",
        f"steps {result['burn_in'] + 1}-{result['steps']} of each chain after a burn-in of "
        f"{result['burn_in']}{' (default: half, or up to the last training of a screen)' if result['burn_in_default'] else ''}: "
        f"{result['samples']} samples ({result['samples_per_chain']} per chain)",
        "",
        f"particle contents ({len(result['contents'])}):",
        f"  {'P':>6} {'count':>7}  content",
    ]
    for row in result["contents"][:top]:
        lines.append(f"  {row['probability']:>6.3f} {row['count']:>7}  {row['content']}")
    rest = result["contents"][top:]
    if rest:
        lines.append(f"  {sum(r['probability'] for r in rest):>6.3f} {sum(r['count'] for r in rest):>7}"
                     f"  ({len(rest)} more contents)")
    lines += ["", "particles (masses given the particle is present, GeV):",
              f"  {'particle':<8} {'P':>6} {'MCSE':>6} {'mean':>8} {'std':>7} "
              f"{'2.5%':>8} {'median':>8} {'97.5%':>8}"]
    for row in result["presence"]:
        h = result["histograms"][row["particle"]]
        q = h["quantiles_GeV"]
        lines.append(f"  {row['particle']:<8} {row['probability']:>6.3f} {_num(row['mcse'], '.3f'):>6} "
                     f"{h['mean_GeV']:>8.1f} {h['std_GeV']:>7.1f} {q['0.025']:>8.1f} "
                     f"{q['0.5']:>8.1f} {q['0.975']:>8.1f}")
    diag = result["diagnostics"]
    lines += ["", f"diagnostics (ESS = samples / tau; warnings at R-hat > {RHAT_WARN}, "
                  f"ESS < {ESS_WARN:.0f}):",
              f"  tau: {diag['tau_method']}",
              f"  R-hat: {diag['rhat_method']}",
              f"  {'trace':<20} {'mean':>8} {'tau':>7} {'ESS':>8} {'R-hat':>7} {'split':>7}"]
    rows = [("K", diag["K"]), ("number of particles", diag["n_particles"])]
    rows += [(f"presence {r['particle']}", diag["presence"][r["particle"]])
             for r in result["presence"]]
    for label, d in rows:
        lines.append(f"  {label:<20} {_num(d['mean'], '.3f'):>8} {_num(d['tau'], '.1f'):>7} "
                     f"{_num(d['ess'], '.0f'):>8} {_num(d['rhat'], '.3f'):>7} "
                     f"{_num(d['rhat_split'], '.3f'):>7}" + (f"  ({d['note']})" if d["note"] else ""))
    if diag["warnings"]:
        lines += ["", "warnings:"] + [f"  {w}" for w in diag["warnings"]]
    lines += ["", "(mass histograms: --json, or --plot FILE.png)"]
    return "\n".join(lines) + "\n"


def plot_masses(result: Dict[str, Any], path: Path) -> "Figure":
    """The mass histogram of every particle (given it is present) as a PNG at ``path``,
    one panel each, titled with the particle's presence probability.  Needs matplotlib
    (``ProtomodelsError`` naming the install command otherwise), as ``protomodels.plots``."""
    from .plots import _family_colour, figure, save_figure

    names = [row["particle"] for row in result["presence"]]
    probability = {row["particle"]: row["probability"] for row in result["presence"]}
    cols = min(4, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = figure(3.2 * cols, 2.6 * rows + 0.4)
    for i, name in enumerate(names):
        h = result["histograms"][name]
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.stairs(h["counts"], h["edges_GeV"], fill=True, alpha=0.6, color=_family_colour(name))
        ax.set_title(f"{name}: P = {probability[name]:.3f}", fontsize="medium")
        ax.set_xlabel("mass (GeV)", fontsize="small")
        ax.tick_params(labelsize="x-small")
    fig.suptitle(f"posterior masses: {Path(result['run']).name or result['run']} "
                 f"({result['samples']} samples at T = 1)", fontsize="medium")
    fig.tight_layout()
    save_figure(fig, Path(path))
    return fig
