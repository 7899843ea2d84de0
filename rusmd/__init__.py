"""rusmd: the rusm daemon.

Runs in: main (the package itself does nothing at import time).

The layout is the data flow:

- ``config``       the manifest (``rusm.toml``): load, validate, resolve.
- ``supervision``  OTP supervisor semantics as pure logic.
- ``serving``      listeners and the per-listener route table.
- ``errors``       the one ``RusmError`` hierarchy.
- ``cli``          the ``rusmd`` command line.
"""

__version__ = "0.1.0"
