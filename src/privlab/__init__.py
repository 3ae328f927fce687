"""privlab: the package behind the course on privacy-preserving machine learning.

One module per concept; the chapters import them directly, for example
``from privlab import mechanisms`` or ``from privlab.accounting import dpsgd_epsilon``.
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:  # one version, pyproject.toml's, read from the installed package's metadata
    __version__ = _version("privlab")
except PackageNotFoundError:  # a source tree on sys.path without being installed
    __version__ = "0+unknown"
