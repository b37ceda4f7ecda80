"""The faster SModelS internals return what SModelS' own code returns."""

from __future__ import annotations

import pytest

from protomodels import overrides


@pytest.fixture
def particles():
    from smodels.base.physicsUnits import GeV
    from smodels.base.particle import Particle

    made = [Particle(label=f"test-X{i}", pdg=9900000 + i, mass=(100.0 + i) * GeV, isSM=False,
                     totalwidth=0.0 * GeV) for i in range(3)]
    yield made


@pytest.mark.parametrize("implementation", ["smodels", "fast"])
def test_multiparticle_lookup_outcomes(particles, implementation):
    """Same attributes and constituents give the same object (also for equal masses in
    other units, as Unum compares them); any difference gives a new one."""
    from smodels.base.particle import MultiParticle

    overrides.fast_multiparticle_lookup()
    new = (overrides._multiparticle_new if implementation == "fast"
           else MultiParticle._protomodels_smodels_new)
    from smodels.base.physicsUnits import GeV, MeV

    def make(constituents, **attributes):
        return new(MultiParticle, particles=constituents, attributesDict=attributes)

    a, b, c = particles
    first = make([a, b], mass=150.123 * GeV, isSM=False)
    assert make([a, b], mass=150.123 * GeV, isSM=False) is first
    assert make([b, a], mass=150.123 * GeV, isSM=False) is first  # constituents are sorted
    in_mev = (150.123 * GeV).asUnit(MeV)
    assert in_mev._unit != (150.123 * GeV)._unit
    same = make([a, b], mass=in_mev, isSM=False) is first
    # as Unum compares them, the candidate's value first (Unum's == is not symmetric)
    assert same == (150.123 * GeV == in_mev)
    assert make([a, b], mass=150.124 * GeV, isSM=False) is not first
    assert make([a, c], mass=150.123 * GeV, isSM=False) is not first
    assert make([a, b], mass=150.123 * GeV, isSM=True) is not first
    assert make([a, b], mass=150.123 * GeV, isSM=False, totalwidth=0.0 * GeV) is not first


def test_fast_lookup_is_installed_and_idempotent(subset_db):
    from smodels.base.particle import MultiParticle

    assert MultiParticle.__dict__["__new__"] is overrides._multiparticle_new
    assert overrides.fast_multiparticle_lookup() is False
    assert "fast particle lookup" in overrides.applied(subset_db.smodels)


def test_same_attributes_is_dict_equality_without_the_skipped_keys():
    from smodels.base.physicsUnits import GeV, MeV

    wanted = {"mass": 1.0 * GeV, "isSM": False}
    assert overrides._same_attributes({"mass": 1000.0 * MeV, "isSM": False, "_id": 3,
                                       "label": "x", "particles": []}, wanted)
    assert not overrides._same_attributes({"mass": 1.0 * GeV, "isSM": False, "x": 1}, wanted)
    assert not overrides._same_attributes({"mass": 1.0 * GeV}, wanted)
    assert not overrides._same_attributes({"mass": 2.0 * GeV, "isSM": False}, wanted)
    nan = float("nan")
    assert overrides._same_attributes({"w": nan}, {"w": nan})  # the same object: equal


def _sms_dict_shape(sms_dict):
    """Everything of an ExpSMSDict, its unique SMS named by position."""
    index = {sms: i for i, sms in enumerate(sms_dict.getSMS())}
    unique = [(str(sms), [(id(tx), label) for tx, label in sms_dict[sms].items()])
              for sms in sms_dict.getSMS()]
    by_tx = [(id(tx), {label: index[sms] for label, sms in sms_dict[tx].items()})
             for tx in sms_dict.getTx()]
    nodes = [(id(tx), value) for tx, value in sms_dict._nodesDict.items()]
    return unique, by_tx, nodes


def test_sms_dictionary_equals_smodels_own(subset_db):
    """Built and filtered (to the 13 TeV results) with hashed lookups, SModelS' map of
    unique SMS is the one its own code builds."""
    from smodels.experiment.expSMSDict import ExpSMSDict

    results = subset_db.smodels.expResultList
    selected = [e for e in results if e.globalInfo.sqrts.asNumber() > 10]
    assert ExpSMSDict.filter is overrides._filter
    fast = ExpSMSDict(results)
    fast_filtered = fast.filter(selected)
    with overrides.smodels_as_shipped():
        assert ExpSMSDict.filter is not overrides._filter
        shipped = ExpSMSDict(results)
        shipped_filtered = shipped.filter(selected)
    assert ExpSMSDict.filter is overrides._filter
    assert len(shipped) > 20 and 0 < len(shipped_filtered) < len(shipped)
    assert _sms_dict_shape(fast) == _sms_dict_shape(shipped)
    assert _sms_dict_shape(fast_filtered) == _sms_dict_shape(shipped_filtered)


def test_lazy_workspaces_equal_smodels_own(subset_db):
    """The workspaces SModelS' pyhf computer builds lazily, sharing the unpatched parts of
    the published workspaces, equal those its own ``wsMaker`` builds (observed and
    expected data, all three ATLAS-SUSY-2018-31 workspaces); the published workspaces are
    left unchanged, and the limits agree exactly."""
    import copy

    from smodels.statistics.pyhfInterface import PyhfData, PyhfUpperLimitComputer

    result = next(e for e in subset_db.smodels.expResultList
                  if e.globalInfo.id == "ATLAS-SUSY-2018-31" and hasattr(e.globalInfo, "jsonFiles"))
    info = result.globalInfo
    assert len(info.jsons) == 3
    published = copy.deepcopy(info.jsons)
    nsignals = {name: {r["smodels"]: 1.0 + i for i, r in enumerate(regions)
                       if r.get("smodels") and r.get("type", "SR") == "SR"}
                for name, regions in info.jsonFiles.items()}

    def computer():
        data = PyhfData(copy.deepcopy(nsignals), info.jsons, copy.deepcopy(info.jsonFiles),
                        False, None)
        return PyhfUpperLimitComputer(data, cl=0.95)

    assert PyhfUpperLimitComputer.wsMaker is overrides._lazy_ws_maker
    lazy = computer()
    lazy_workspaces = [dict(w) for w in lazy.workspaces] + [dict(w) for w in lazy.workspaces_expected]
    lazy_ul = lazy.getUpperLimitOnMu(workspace_index=1)
    with overrides.smodels_as_shipped():
        assert PyhfUpperLimitComputer.wsMaker is not overrides._lazy_ws_maker
        shipped = computer()
        shipped_workspaces = ([dict(w) for w in shipped.workspaces]
                              + [dict(w) for w in shipped.workspaces_expected])
        shipped_ul = shipped.getUpperLimitOnMu(workspace_index=1)
    assert lazy_workspaces == shipped_workspaces
    assert lazy_workspaces[0]["observations"] != lazy_workspaces[3]["observations"]
    assert info.jsons == published
    assert lazy_ul == shipped_ul and 0 < lazy_ul < 10


def test_shared_triangulations_interpolate_as_smodels_own(subset_db):
    """Maps sharing one triangulation give, at every grid point and at points between
    grid points, the values of the same maps in a copy of the binary database loaded by
    SModelS alone (each with its own triangulation); sharing is real (fewer objects)."""
    import numpy as np
    from smodels.experiment.databaseObj import Database

    own = Database(subset_db.path)
    ours = {(e.globalInfo.id, d.getID(), t.txName): t.txnameData
            for e in subset_db.smodels.expResultList for d in e.datasets for t in d.txnameList}
    theirs = {(e.globalInfo.id, d.getID(), t.txName): t.txnameData
              for e in own.expResultList for d in e.datasets for t in d.txnameList}
    assert ours.keys() == theirs.keys()
    delaunay = [k for k, data in ours.items() if hasattr(getattr(data, "tri", None), "nsimplex")]
    assert len({id(ours[k].tri) for k in delaunay}) < len(delaunay) / 2
    for key in delaunay:  # every map's shared triangulation is its own, element by element
        mine, own_tri = ours[key].tri, theirs[key].tri
        assert np.array_equal(mine.points, own_tri.points), key
        assert np.array_equal(mine.simplices, own_tri.simplices), key
    rng = np.random.default_rng(3)
    compared = 0
    for key in delaunay[::7]:
        tri = theirs[key].tri
        corners = tri.points[tri.simplices[rng.integers(tri.nsimplex, size=5)]]
        weights = rng.dirichlet(np.ones(tri.ndim + 1), size=5)
        for point in [*tri.points[:3], *np.einsum("svd,sv->sd", corners, weights)]:
            a, b = ours[key].interpolate(point), theirs[key].interpolate(point)
            assert a == b or (np.isnan(a) and np.isnan(b)), key
            compared += 1
    assert compared > 100
