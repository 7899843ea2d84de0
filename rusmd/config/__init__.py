"""The manifest (``rusm.toml``): load, validate, resolve.

Runs in: main (workers inherit the resolved ``Manifest`` across fork).

- ``model``        the frozen, typed result with every default.
- ``settings``     every key declared once: table, type, default, range, help.
- ``document``     TOML parsing that remembers every key's line.
- ``reader``       typed access that collects every problem.
- ``loader``       validation and resolution (defaults → file → flags).
- ``reference``    ``docs/settings.md``, rendered from the declarations.
- ``environment``  process env, then ``.env``.
- ``sizing``       profile → worker count.
- ``render``       ``rusmd check`` output (human and JSON).
- ``routes``       the per-listener route table each worker matches requests on.
"""

from rusmd.config.environment import Environment, load_environment
from rusmd.config.loader import Overrides, load_manifest
from rusmd.config.model import Manifest, Profile

__all__ = ["Environment", "Manifest", "Overrides", "Profile", "load_environment", "load_manifest"]
