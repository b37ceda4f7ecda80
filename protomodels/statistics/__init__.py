"""The statistical models of the results: one home for their flavours.

- ``cache``: the per-process memo of every result's statistics (limits, likelihoods),
  keyed by what they depend on;
- ``simplified``: simplified likelihoods built from full pyhf workspaces
  (ATL-PHYS-PUB-2021-038) and their cache;
- ``workspaces``: which workspaces each pyhf result uses for ``--likelihood full`` or
  ``simplified``, and the check that a switch keeps every signal region in its channel;
- ``validation``: ours against ATLAS' simplified workspaces, simplified against full on
  signals (``protomodels database simplify --validate``).

SModelS' own simplified likelihoods (covariance matrices) are profiled by
``protomodels.nuisance``; the likelihood curves the combiner uses live in
``protomodels.likelihood``.
"""
