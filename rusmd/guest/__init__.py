"""Guest authoring: build an app's components, scaffold a new app, run it live.

Runs in: the ``rusmd build``, ``rusmd new`` and ``rusmd dev`` commands (never
the daemon's main process or a worker).

- ``builder``   ``rusmd build``: ``components/<name>/*.c`` → ``wasm/<name>.wasm``
  with the ``ziglang`` package and the C SDK that ships in ``rusmd/sdk/c``.
- ``scaffold``  ``rusmd new``: a new app directory for one protocol.
- ``dev``       ``rusmd dev``: the daemon as a child, rebuilt and upgraded on
  every saved change.
"""

from rusmd.guest.builder import BuildResult, build_app, sdk_include_dir

__all__ = ["BuildResult", "build_app", "sdk_include_dir"]
