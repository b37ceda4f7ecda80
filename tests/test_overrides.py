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
