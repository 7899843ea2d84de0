"""Guest authoring: build an app's components, scaffold a new app, run it live, check it.

Runs in: the ``rusmd build``, ``rusmd new``, ``rusmd dev``, ``rusmd check``
and ``rusmd bench`` commands (never the daemon's main process or a worker).

- ``builder``   ``rusmd build``: ``components/<name>/*.c`` → ``wasm/<name>.wasm``
  with the ``ziglang`` package and the C SDK that ships in ``rusmd/sdk/c``.
- ``module_cache``  the C guests the package ships (the scenario app's),
  compiled as ``rusmd build`` does and kept between runs.
- ``scaffold``  ``rusmd new``: a new app directory for one protocol.
- ``dev``       ``rusmd dev``: the daemon as a child, rebuilt and upgraded on
  every saved change.
- ``check``     ``rusmd check``: compile every component and find what a
  worker would refuse (ungranted or unknown imports, missing actions).
"""

from rusmd.guest.builder import BuildResult, build_app, sdk_include_dir

__all__ = ["BuildResult", "build_app", "sdk_include_dir"]
