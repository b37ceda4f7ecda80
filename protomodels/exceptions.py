"""Every exception of protomodels, in one place.

Each carries a message a user can act on: it names the file, field and value at
fault.  The command line prints ``str(error)`` on one line and exits non-zero.
"""


class ProtomodelsError(Exception):
    """Base class: anything protomodels raises on purpose."""


class SLHAError(ProtomodelsError):
    """An SLHA file is unreadable, malformed, or describes an invalid proto-model."""


class ModelError(ProtomodelsError):
    """A proto-model violates the rules of the model space (SPEC section 2)."""


class XsecError(ProtomodelsError):
    """A cross section cannot be computed (missing table, mass outside its range)."""


class DatabaseError(ProtomodelsError):
    """The experimental database cannot be found, unpacked, built or loaded."""


class PredictionError(ProtomodelsError):
    """SModelS failed on a model as a whole (a single failing result is only logged)."""


class CombinerError(ProtomodelsError):
    """The combinability matrices are missing or malformed."""


class RunError(ProtomodelsError):
    """A run directory or checkpoint is missing, inconsistent or corrupt."""


class ScanError(ProtomodelsError):
    """A scan's grid is ill-defined (parameter, points, range), or its file is corrupt or
    belongs to another scan."""


class WorkspaceError(ProtomodelsError):
    """A pyhf workspace cannot be read, fitted, simplified or validated."""


class FormatError(ProtomodelsError):
    """A file of ours that no other exception covers (a significance report, a benchmark
    result) is unreadable, of another version, or does not match its JSON schema."""
