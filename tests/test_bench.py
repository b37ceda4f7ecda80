"""The benchmark command: its model set is fixed by the seed, and one small run on the
subset database produces the documented JSON."""

from __future__ import annotations

from click.testing import CliRunner

from protomodels.bench import BENCH_SCHEMA, benchmark_models, read_bench
from protomodels.cli import cli


def test_benchmark_models_are_seeded_valid_walker_models():
    first = benchmark_models(6, seed=3)
    again = benchmark_models(6, seed=3)
    assert [m.to_dict() for m in first] == [m.to_dict() for m in again]
    assert [m.to_dict() for m in first] != [m.to_dict() for m in benchmark_models(6, seed=4)]
    for model in first:
        model.validate()
        assert 2 <= len(model.masses) <= 10


def test_bench_command_on_the_subset_database(subset_dir, tmp_path):
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
