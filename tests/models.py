"""Proto-models used across tests, each aimed at some of the subset database's results."""

from protomodels.model import ProtoModel


def gluino() -> ProtoModel:
    return ProtoModel(masses={1000022: 200.0, 1000021: 1300.0}, decays={1000021: {"q q XZ1": 1.0}})


def sbottom_higgs() -> ProtoModel:
    """Xb -> b XZ2, XZ2 -> h XZ1: the T6bbHH topology of ATLAS-SUSY-2018-31 (pyhf)."""
    return ProtoModel(masses={1000022: 60.0, 1000023: 250.0, 1000005: 700.0},
                      decays={1000005: {"b XZ2": 1.0}, 1000023: {"h XZ1": 1.0}})


def electroweak() -> ProtoModel:
    """XW1 XZ2 -> W Z + MET: CMS-SUS-21-002 (covariance) territory."""
    return ProtoModel(masses={1000022: 100.0, 1000023: 450.0, 1000024: 450.0},
                      decays={1000023: {"Z XZ1": 0.5, "h XZ1": 0.5}, 1000024: {"W XZ1": 1.0}})


def paper_best() -> ProtoModel:
    """The paper's best model: Xt 1166 -> t XZ1, Xd 735 -> d XZ1, XZ1 163 GeV, with
    multipliers giving sigma(Xt Xt) ~ 2.6 fb and sigma(Xd Xd) ~ 24 fb at 13 TeV."""
    from protomodels.xsec import reference_xsecs

    masses = {1000022: 163.0, 1000006: 1166.0, 1000001: 735.0}
    ref = reference_xsecs(masses, 13)
    ssm = {(-1000006, 1000006): 2.6e-3 / ref[(-1000006, 1000006)],
           (-1000001, 1000001): 24e-3 / ref[(-1000001, 1000001)]}
    return ProtoModel(masses=masses, decays={1000006: {"t XZ1": 1.0}, 1000001: {"q XZ1": 1.0}},
                      ssm=ssm)


def frozen_benchmark_models():
    """The 20 benchmark models as frozen before issue 12 changed any process
    (``tests/data/benchmark_models.json``, made by ``bench.benchmark_models(20, seed=1)``),
    so that before/after comparisons use the same models."""
    import json
    from pathlib import Path

    from protomodels.model import ProtoModel

    path = Path(__file__).parent / "data" / "benchmark_models.json"
    record = json.loads(path.read_text())
    assert record["schema"] == "protomodels.benchmark-models/1"
    return [ProtoModel.from_dict(m, source=str(path)) for m in record["models"]]
