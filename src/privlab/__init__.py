"""privlab: the package behind the course on privacy-preserving machine learning.

One module per concept; the chapters import them directly, for example
``from privlab import mechanisms`` or ``from privlab.accounting import epsilon``.
"""

__version__ = "0.1.0"
