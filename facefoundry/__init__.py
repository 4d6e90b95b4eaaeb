"""facefoundry: identity-consistent synthetic face datasets for face recognition.

The stage packages keep their folders at the top of the repository (flows/,
generators/, faces/, filters/, shards/, evaluation/, recognition/) and are installed
under this one namespace: ``facefoundry.shards``, ``facefoundry.flows``, ... so that
installing us never puts a generic ``shards`` or ``filters`` package into
site-packages. In a source checkout without an install, the folders beside this one
are found through ``__path__``.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "flows" / "__init__.py").is_file() and str(_CHECKOUT) not in __path__:
    __path__.append(str(_CHECKOUT))
