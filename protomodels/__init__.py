"""protomodels: minimal new-physics models that explain small LHC excesses.

The public surface is small: ``ProtoModel`` (model), ``read_slha``/``write_slha``
(slha), ``load_database`` (loader: real or fake database, full or simplified likelihoods) and ``evaluate`` (significance).
"""

__version__ = "0.1.0"

from .loader import load_database  # noqa: E402
from .model import ProtoModel  # noqa: E402
from .significance import evaluate  # noqa: E402
from .slha import read_slha, write_slha  # noqa: E402

__all__ = ["ProtoModel", "evaluate", "load_database", "read_slha", "write_slha", "__version__"]
