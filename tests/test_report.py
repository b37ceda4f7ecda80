"""The static HTML report (issue 15): the page of a tiny run and of one model has every
section, inlines everything (no file or network fetches), and loads in a real headless
browser without console errors and with every image drawn."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("jinja2")

from protomodels import hiscores, plots  # noqa: E402
from protomodels.exceptions import ProtomodelsError  # noqa: E402
from protomodels.report import build_report, decay_graph  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "protomodels" / "examples"
PNG = b"\x89PNG\r\n\x1a\n"


def _entry(model, result, **extra) -> Dict[str, Any]:
    """A hiscore entry for ``model`` as the walker records it."""
    return {"K": result.K, "TL": result.TL, "mu_hat": result.mu_hat,
            "combination": [{"analysis_id": m.prediction.analysis_id,
                             "dataset": m.prediction.dataset_id, "type": m.prediction.data_type,
                             "sqrts": m.prediction.sqrts} for m in result.combination],
            "model": model.to_dict(), **extra}


def low_score(model):
    """The walk's fake score: below the crafted entries, so that they rank first."""
    return {"K": -1e-3 * model.masses[1000022], "TL": 0.0, "mu_hat": 1.0}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, subset_db) -> Path:
    """A 2-rung run of 10 steps (fake score, so the walk costs nothing) whose hiscores
    hold the paper's best model (scored on the test database: a 3-member combination)
    and a polished variant of it, plus a pvalue.png as `protomodels pvalue` leaves it."""
    from protomodels import significance as sig
    from protomodels.general import load_model
    from protomodels.runs import WalkConfig, export_hiscores, walk

    out = tmp_path_factory.mktemp("report") / "run"
    walk(WalkConfig(out=str(out), ladder=[0.5, 1.0], walkers=1, steps=10, seed=3, swap_every=5),
         score_factory=lambda: low_score)
    best = load_model(EXAMPLES / "paper_best.slha")
    best.xsecs = None  # as a walker's model: reference cross sections
    variant = best.copy()
    variant.masses[1000001] = 760.0
    candidates = [_entry(best, sig.evaluate(best, subset_db), walker=1, step=10, temperature=1.0),
                  _entry(variant, sig.evaluate(variant, subset_db), walker=1, step=10,
                         temperature=1.0, polished=True)]
    hiscores.update(out / "hiscores.json", candidates)
    export_hiscores(out)
    fig = plots.figure(2.0, 1.5)
    fig.add_subplot().plot([0, 1], [0, 1])
    (out / "pvalue.png").write_bytes(plots.figure_png(fig))
    return out


@pytest.fixture(scope="module")
def page(tiny_run, subset_db) -> Path:
    return build_report(tiny_run, tiny_run / "report", top=2, db=subset_db)


def _html(path: Path) -> str:
    return path.read_text()


def test_report_of_a_tiny_run_has_every_section(page, tiny_run):
    html = _html(page)
    assert page == tiny_run / "report" / "index.html"
    for anchor in ("configuration", "tempering", "k-traces", "hiscores", "spectrum",
                   "rank-1", "rank-2", "pvalue"):
        assert f'id="{anchor}"' in html, anchor
    assert "Configuration (run.json)" in html and "swap_every" in html and "smodels" in html
    assert "T 0.5 &harr; 1.0" in html  # the swap acceptance of the one rung pair
    assert 'alt="K against step, every chain"' in html
    assert 'alt="K against step per temperature"' in html
    assert 'alt="mass spectrum"' in html
    for rank in (1, 2):
        assert f'alt="decay graph of #{rank}"' in html
        assert f'alt="likelihood curves of #{rank}"' in html
        assert f'download="rank-{rank}.slha"' in html
    assert "Best combination and contributions to TL" in html and "share of TL" in html
    assert "ATLAS-SUSY-2016-07" in html and "2j_Meff_1200" in html  # a combination member
    assert "Largest r values" in html and "r_exp" in html and "CMS-SUS-16-033" in html
    assert "yes (protomodels polish)" in html  # the polished entry is marked
    assert "pvalue.png, written by protomodels pvalue" in html
    assert "Fake database" not in html


def test_pages_and_other_atomic_writes_get_the_umask_mode(page, tiny_run):
    """Atomic writes are not left at the temporary file's 0600: the page, hiscores.json
    and run.json get what a plain open() would give them (0666 less the umask)."""
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (page, tiny_run / "hiscores.json", tiny_run / "run.json"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_report_inlines_everything(page, tiny_run):
    """Nothing is fetched: every src is a data: PNG, every href an in-page anchor or a
    data: SLHA file (which reads back as the hiscore's model), no script, stylesheet
    link or CSS url()."""
    from protomodels.slha import read_slha

    html = _html(page)
    sources = re.findall(r'\bsrc="([^"]*)"', html)
    assert len(sources) == 8  # 2 K traces, spectrum, 2 x (decays, likelihoods), p-value
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG
    links = re.findall(r'\bhref="([^"]*)"', html)
    assert all(h.startswith("#") or h.startswith("data:text/plain;base64,") for h in links), \
        [h[:60] for h in links if not h.startswith(("#", "data:"))]
    assert "<script" not in html and "<link" not in html and "url(" not in html
    assert "http://" not in html and "https://" not in html and "file:" not in html
    slha = next(h for h in links if h.startswith("data:"))
    text = base64.b64decode(slha.split(",", 1)[1]).decode()
    exported = (tiny_run / "hiscores" / "rank-1.slha").read_text()
    assert text == exported  # the file `walk` exported, byte for byte
    assert read_slha(tiny_run / "hiscores" / "rank-1.slha").masses[1000006] == 1166.0


def test_decay_graph_of_a_proto_model():
    from protomodels.model import ProtoModel

    sleptons = (1000011, 1000013, 1000015)
    model = ProtoModel(masses={1000022: 100.0, 1000023: 300.0, 1000021: 1500.0,
                               **{p: 200.0 for p in sleptons}},
                       decays={1000023: {"Xl l": 0.6, "Z XZ1": 0.4},
                               1000021: {"q q XZ1": 0.75, "b b XZ1": 0.25},
                               **{p: {"l XZ1": 1.0} for p in sleptons}})
    model.validate()
    graph = decay_graph(model)
    assert sorted(graph.nodes) == ["XZ1", "XZ2", "Xe", "Xg", "Xmu", "Xtau"]
    for slepton in ("Xe", "Xmu", "Xtau"):  # one BR over the three flavours
        assert graph.edges["XZ2", slepton]["channels"] == [("l", pytest.approx(0.2))]
    assert graph.edges["XZ2", "XZ1"]["channels"] == [("Z", 0.4)]
    assert graph.edges["Xg", "XZ1"]["channels"] == [("q q", 0.75), ("b b", 0.25)]
    assert plots.figure_png(plots.plot_decay_graph(graph))[:8] == PNG


def _chromium():
    """A headless Chromium driven by selenium with the system's chromedriver, both found
    on PATH (chromium, else chromium-browser; chromedriver), so that selenium-manager never
    downloads anything; skipped when missing, except where PROTOMODELS_REQUIRE_BROWSER=1
    (CI installs them, ``.ci/run``): then the test fails."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    missing = [name for name, found in (("chromium (or chromium-browser)", chromium),
                                        ("chromedriver", chromedriver)) if found is None]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package")
    if missing:
        message = f"headless browser test needs {', '.join(missing)}"
        if os.environ.get("PROTOMODELS_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def _open(driver, page: Path, screenshot: Path):
    """Load ``page``, screenshot it whole; (console messages, per image: alt, natural
    width, rendered width and height)."""
    driver.get(page.resolve().as_uri())
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(height + 100, 16000))
    images = driver.execute_script(
        "return Array.from(document.images).map(i => {const r = i.getBoundingClientRect();"
        " return [i.alt, i.complete, i.naturalWidth, r.width, r.height];});")
    driver.save_screenshot(str(screenshot))
    return driver.get_log("browser"), images


def test_report_in_headless_chromium(page, tmp_path):
    driver = _chromium()
    try:
        logs, images = _open(driver, page, tmp_path / "report.png")
    finally:
        driver.quit()
    assert not [m for m in logs if m["level"] == "SEVERE"], logs
    assert len(images) == 8
    for alt, complete, natural, width, height in images:
        assert complete and natural > 0 and width > 0 and height > 0, alt
    assert (tmp_path / "report.png").read_bytes()[:8] == PNG


def test_significance_report_of_one_model(tmp_path, subset_dir, subset_db):
    from click.testing import CliRunner

    from protomodels.cli import cli

    # a page that cannot be written (its folder is a file) loses nothing: the output
    # comes first, then the one-line error
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    result = CliRunner().invoke(cli, ["significance", str(EXAMPLES / "paper_best.slha"), "--json",
                                      "--output-file", str(tmp_path / "pb.json"),
                                      "--report", str(blocker / "pb"),
                                      "--database", str(subset_dir)], obj={})
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].startswith(f"Error: {blocker / 'pb'}: cannot create")
    assert json.loads((tmp_path / "pb.json").read_text())["K"] > 0

    out = tmp_path / "pb"
    result = CliRunner().invoke(cli, ["significance", str(EXAMPLES / "paper_best.slha"), "--json",
                                      "--report", str(out), "--database", str(subset_dir)], obj={})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["K"] > 0  # stdout stays the JSON document
    html = _html(out / "index.html")
    for anchor in ("configuration", "spectrum", "model"):
        assert f'id="{anchor}"' in html
    assert 'id="k-traces"' not in html and 'id="hiscores"' not in html
    assert 'alt="decay graph of paper_best.slha"' in html
    assert 'alt="likelihood curves of paper_best.slha"' in html
    href = re.search(r'download="paper_best.slha" href="data:text/plain;base64,([^"]*)"', html)
    assert base64.b64decode(href.group(1)).decode() == (EXAMPLES / "paper_best.slha").read_text()
    assert all(s.startswith("data:image/png;base64,") for s in re.findall(r'src="([^"]*)"', html))


def test_significance_report_without_the_extra_fails_before_the_evaluation(tmp_path,
                                                                         monkeypatch):
    import sys

    from click.testing import CliRunner

    from protomodels import loader
    from protomodels.cli import cli

    def no_load(*args, **kwargs):
        raise AssertionError("the database was loaded")

    monkeypatch.setattr(loader, "load_database", no_load)
    monkeypatch.setitem(sys.modules, "jinja2", None)
    result = CliRunner().invoke(cli, ["significance", str(EXAMPLES / "paper_best.slha"),
                                      "--report", str(tmp_path / "pb")], obj={})
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [
        "Error: report needs matplotlib and jinja2: pip install 'protomodels[plots]'"]
    assert not (tmp_path / "pb").exists()


def _manifest(runs) -> Dict[str, Any]:
    """fakes.json of a batch (``pvalue.run_fakes``) holding ``runs``."""
    return {"schema": "protomodels.fakes/1", "seed": 1, "count": max(1, len(runs)),
            "walkers": 1, "steps": 3, "inject": None, "fudge": 1.0, "noise": "poisson",
            "fakes": [{"database": f"db-{i:03d}", "run": run, "seeds": {"database": i, "walk": i}}
                      for i, run in enumerate(runs)]}


def test_pvalue_from_a_batch_of_fakes(tmp_path, tiny_run, subset_db):
    """--fakes BATCH: the p-value of the run's best K against the batch's runs (here walks
    with the fake score, whose best K is far below the real run's)."""
    from protomodels.runs import WalkConfig, walk

    batch = tmp_path / "fakes"
    for i in range(2):
        walk(WalkConfig(out=str(batch / f"run-{i:03d}"), ladder=[1.0], walkers=1, steps=3,
                        seed=10 + i), score_factory=lambda: low_score)
    (batch / "fakes.json").write_text(json.dumps(_manifest(["run-000", "run-001", "run-002"])))
    run = tmp_path / "run"  # says it ran on a fake database: the page must say so too
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("report"))
    record = json.loads((run / "run.json").read_text())
    record["versions"]["database_fake"] = {"record": "db/fakedb.json", "seed": 5,
                                           "noise": "poisson", "fudge": 0.65, "injected": None}
    (run / "run.json").write_text(json.dumps(record))
    html = _html(build_report(run, tmp_path / "out", top=1, db=subset_db, fakes=batch))
    assert 'id="pvalue"' in html and f"the 2 runs on fake databases in {batch}" in html
    assert "global p-value = 0/2" in html
    assert len(re.findall(r'\bsrc="data:image/png;base64,', html)) == 6
    assert 'id="fake-database"' in html and "seed 5, noise poisson, fudge 0.65" in html


def test_bad_input_is_a_one_line_error(tmp_path, tiny_run):
    from click.testing import CliRunner

    from protomodels.cli import cli

    def error(*args):
        result = CliRunner().invoke(cli, list(args), obj={})
        assert result.exit_code != 0
        return [line for line in result.stderr.splitlines() if line.startswith("Error")]

    (tmp_path / "empty").mkdir()
    assert error("report", str(tmp_path / "empty")) == [
        f"Error: {tmp_path / 'empty'}: not a run directory (no run.json)"]
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "fakes.json").write_text(json.dumps(_manifest([])))
    [line] = error("report", str(batch))
    assert "a batch of fake runs, not a run" in line and f"--fakes {batch}" in line
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("report"))
    [line] = error("report", str(run), "--fakes", str(tmp_path / "empty"))
    assert str(tmp_path / "empty" / "fakes.json") in line
    with pytest.raises(ProtomodelsError, match="--top 0: must be at least 1"):
        build_report(run, tmp_path / "out", top=0)


def test_a_pvalue_that_cannot_be_computed_fails_before_any_evaluation(tmp_path, tiny_run,
                                                                      subset_db, monkeypatch):
    """--fakes whose runs used another likelihood: the one-line error comes before the
    (costly) re-evaluation of the top models, not after it."""
    from protomodels import significance
    from protomodels.exceptions import RunError

    def no_evaluation(*args, **kwargs):
        raise AssertionError("a model was re-evaluated")

    monkeypatch.setattr(significance, "evaluate", no_evaluation)
    batch = tmp_path / "fakes"
    shutil.copytree(tiny_run, batch / "run-000", ignore=shutil.ignore_patterns("report"))
    record = json.loads((batch / "run-000" / "run.json").read_text())
    record["config"]["likelihood"] = "full" if record["config"]["likelihood"] != "full" \
        else "simplified"
    (batch / "run-000" / "run.json").write_text(json.dumps(record))
    (batch / "fakes.json").write_text(json.dumps(_manifest(["run-000"])))
    with pytest.raises(RunError, match=r"run-000/run.json: field 'config.likelihood' is"):
        build_report(tiny_run, tmp_path / "out", top=1, db=subset_db, fakes=batch)
    assert not (tmp_path / "out").exists()
