"""Final states of the SModelS database 3.0.0, as SModelS reads them from ``databaseParticles.py``.

The shared database tarball lacks its ``databaseParticles.py``; SModelS' built-in
default final states miss four labels that 11 results use: ``Zprime``, ``Vprime`` and
``H0`` as BSM final states and the SM group ``jetb`` (q, c, g, b).  This module extends
SModelS' defaults with exactly those labels.  It is copied into a text database folder
as ``databaseParticles.py`` (SModelS imports it from there by file name), so it must
stay importable on its own and define ``finalStates``.
"""

from smodels.base.model import Model
from smodels.base.particle import MultiParticle, Particle
from smodels.experiment import defaultFinalStates as _default
from smodels.share.models.SMparticles import b, c, g, q

jetbList = MultiParticle("jetb", [q, c, g, b])
Zprime = Particle(label="Zprime", isSM=False, eCharge=0, colordim=1, spin=1)
Vprime = Particle(label="Vprime", isSM=False, colordim=1, spin=1)
H0 = Particle(label="H0", isSM=False, eCharge=0, colordim=1, spin=0)

_sm = list(_default.finalStates.SMparticles) + [jetbList]
_bsm = list(_default.finalStates.BSMparticles) + [Zprime, Vprime, H0]
for _particle in _sm + _bsm:
    _particle._static = True

finalStates = Model(SMparticles=_sm, BSMparticles=_bsm, label="protomodels final states (SModelS 3.0.0 database)")
