"""The built-in methods. Adding a method = its module, one import line here, its run-config
keys in pyproject.toml, and its tests."""

from . import fedavg  # noqa: F401
from . import resfed  # noqa: F401
from . import fedsparsify  # noqa: F401
