"""The benchmark command: its model set is fixed by the seed, and one small run on the
subset database produces the documented JSON."""

from __future__ import annotations

from click.testing import CliRunner

from protomodels.bench import (BENCH_SCHEMA, SURROGATE_FAMILIES, benchmark_models, format_report,
                               read_bench, surrogate_models)
from protomodels.cli import cli


def test_benchmark_models_are_seeded_valid_walker_models():
    first = benchmark_models(6, seed=3)
    again = benchmark_models(6, seed=3)
    assert [m.to_dict() for m in first] == [m.to_dict() for m in again]
    assert [m.to_dict() for m in first] != [m.to_dict() for m in benchmark_models(6, seed=4)]
    for model in first:
        model.validate()
        assert 2 <= len(model.masses) <= 10


def test_bench_command_on_the_subset_database(subset_dir, tmp_path, monkeypatch):
    from protomodels.statistics import surrogate

    # (e) runs on the results with a surrogate trained in the project cache: none in a
    # fresh one (CI), but a developer's 2018-31 surrogates made this test take 7 minutes
    # of SModelS' numerical pyhf limits.  The test is the same everywhere without them;
    # (e)'s report is tested below, its figures come from `protomodels bench` (README).
    monkeypatch.setattr(surrogate, "trained", lambda db: [])
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", "--models", "2", "--steps", "3", "--walkers", "2",
                                      "--json", "--output-file", str(out),
                                      "--database", str(subset_dir)])
    assert result.exit_code == 0, result.output
    report = read_bench(out)  # checked against its schema
    assert report["schema"] == BENCH_SCHEMA
    assert len(report["per_model"]) == 2
    assert all(m["a_s"] > 0 and m["b_s"] > 0 for m in report["per_model"])
    steps = report["c_walker_steps"]
    assert steps["completed_walkers"] == 2 and steps["all"]["n"] == 6
    assert sum(p["n"] for p in steps["by_move"].values()) == 6
    assert report["database"]["load_s"] > 0 and steps["memory"]["total_mb"] > 0
    assert set(report["ratios"]) == {"a_over_b_total", "a_over_b_median", "a_over_c_median"}
    assert report["likelihood"] == "simplified" and steps["all"]["p99_s"] <= steps["all"]["max_s"]
    assert report["d_pyhf_cls"] == []  # the subset has none of the large workspaces
    assert report["e_likelihoods"]["analyses"] == []


def test_surrogate_families_draw_valid_models_for_every_seed():
    """(e)'s families: every draw is a valid model (a gap below 2 m_tau between XZ2 and
    XZ1 closed XZ2 -> l l XZ1, and ``validate`` refused seeds 18, 21, 23, ... of 1-100,
    losing the whole benchmark)."""
    for seed in range(1, 101):
        models = surrogate_models(sorted(SURROGATE_FAMILIES), 4, seed)  # validates each
        assert len(models) == 4 * len(SURROGATE_FAMILIES)


def _minimal_result(e):
    times = {"median_s": 1.0, "p90_s": 1.0}
    return {"database": {"load_s": 1.0, "peak_rss_mb": 100.0}, "cpus": 2,
            "a_straightforward": times, "b_evaluation": times,
            "c_walker_steps": {"all": {"n": 0}, "walkers": 1, "steps_per_walker": 1,
                               "acceptance": None, "by_move": {},
                               "memory": {"walkers": [], "total_mb": 1.0}},
            "ratios": {"a_over_b_total": 1.0, "a_over_b_median": 1.0, "a_over_c_median": None},
            "e_likelihoods": e, "likelihood": "simplified", "seconds": 1.0}


def test_report_of_an_e_that_selected_no_model():
    """(e) with no model that has a combined prediction there: the report says so (it used
    to raise on max() of no K differences)."""
    empty = {"n": 0, "K": [], "r_max": []}
    e = {"analyses": ["ATLAS-SUSY-2018-16"], "models": 0, "described": [],
         "modes": {"full": dict(empty), "surrogate": {**empty, "usage": {
             "surrogate": 0, "outside domain": 0, "not trained": 0}}}}
    text = format_report(_minimal_result(e))
    assert "(e) K of 0 models" in text and "no model of these families" in text
    e = {**e, "models": 2, "modes": {"full": {"n": 2, "K": [1.0, 2.0], "r_max": [0.5, 0.0]},
                                     "surrogate": {"n": 2, "K": [1.5, 2.0], "r_max": [0.6, 0.1]}}}
    assert "max 0.500; r_max relative difference median 20.0%" in format_report(_minimal_result(e))
