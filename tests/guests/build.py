"""Build a C test guest the way ``make guests`` builds the examples.

Runs in: tests.

The compiler is the pinned ``ziglang`` dev dependency, run as
``python -m ziglang cc`` with the flags of the Makefile's ``ZIGCC`` line
(read from the Makefile, so the tests build what ``make guests`` builds),
the C SDK on the include path, and warnings as errors.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "rusmd" / "sdk" / "c"
GUESTS = ROOT / "tests" / "guests"
# A cold zig cache builds wasi-libc first (tens of seconds on 2 cores).
COMPILE_TIMEOUT_S = 300


class GuestBuildError(Exception):
    """The compiler refused a guest; the message carries its output."""


def makefile_flags() -> list[str]:
    """The flags ``make guests`` passes after ``python -m ziglang cc``."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    found = re.search(r"^ZIGCC\s*:=\s*\$\(PY\) -m ziglang cc (.+)$", makefile, re.MULTILINE)
    if found is None:
        raise GuestBuildError("Makefile: no ZIGCC := $(PY) -m ziglang cc ... line")
    # The line may name the Makefile's own simple variables (GUEST_STACK_BYTES).
    variables = dict(re.findall(r"^([A-Z_]+)\s*:=\s*(\S+)\s*$", makefile, re.MULTILINE))

    def expand(flag: str) -> str:
        return re.sub(r"\$\(([A-Z_]+)\)", lambda m: variables[m.group(1)], flag)

    return [expand(flag) for flag in found.group(1).split()]


def build_c_guest(
    source: Path, out: Path, *, defines: Sequence[str] = (), reactor: bool = False
) -> Path:
    """Compile ``source`` into the wasm module ``out`` and return ``out``.

    Args:
        source: A C file that includes ``rusm.h``.
        out: Where the module goes (its directory must exist).
        defines: Preprocessor macros, each ``NAME`` or ``NAME=VALUE`` (passed as ``-D``).
        reactor: Build a WASI reactor (``-mexec-model=reactor``): a module of
            handler actions with no ``main`` and no ``run``, whose
            ``_initialize`` the host calls before an action. ``make guests``
            does this for a source that defines neither. Optional; defaults
            to False (a command module with ``_start``).

    Raises:
        GuestBuildError: The source does not compile cleanly (with -Wall -Wextra -Werror).
    """
    command = [sys.executable, "-m", "ziglang", "cc", *makefile_flags()]
    command += ["-mexec-model=reactor"] if reactor else []
    command += ["-Wall", "-Wextra", "-Werror", "-I", str(SDK)]
    command += [f"-D{define}" for define in defines]
    command += ["-o", str(out), str(source)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise GuestBuildError(f"{source.name} does not build:\n{done.stderr}")
    return out
