"""The two errors the loss ops raise, both ``ValueError``s.

``kernels`` is a leaf package: it imports nothing else from this project, so these do not derive
from the CLI's ``UserError``. Bad input is found before any kernel runs and reported in one line.
"""


class KernelInputError(ValueError):
    """A tensor passed to a loss op has the wrong shape, dtype or device (or the seed is not an int)."""


class KernelConfigError(ValueError):
    """A loss op was asked for something it does not offer: an unknown ``impl``, a beta of the wrong type."""
