"""Profile sizing: how many workers a profile forks on this machine.

Runs in: main.

| profile  | workers           | use it when                                   |
|----------|-------------------|-----------------------------------------------|
| light    | ≈ ¼ of the cores  | speed isn't the point; leave the machine alone |
| balanced | ≈ ⅖ of the cores  | good throughput with headroom (the default)    |
| max      | ≈ ½ of the cores  | peak sustained rate; the other half reaps      |

Always at least one worker. "Cores" are the usable ones: the CPUs this
process may run on (``sched_getaffinity``, so ``taskset`` and systemd's
``CPUAffinity=`` count), further capped by a cgroup v2 CPU quota
(systemd's ``CPUQuota=``, a container's ``--cpus``), rounded up.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path

from rusmd.config.model import Profile

PROFILE_SHARE: dict[Profile, Fraction] = {
    Profile.LIGHT: Fraction(1, 4),
    Profile.BALANCED: Fraction(2, 5),
    Profile.MAX: Fraction(1, 2),
}

CGROUP_ROOT = Path("/sys/fs/cgroup")


def worker_count(profile: Profile, cores: int) -> int:
    """Workers for ``profile`` on ``cores`` usable cores: the share, rounded half up, ≥ 1."""
    share = PROFILE_SHARE[profile] * max(cores, 1)
    return max(1, math.floor(share + Fraction(1, 2)))


def usable_cores(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path | None = None) -> int:
    """CPUs this process may use: its affinity set, capped by any cgroup v2 quota."""
    cores = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup or Path("/proc/self/cgroup"))
    return max(1, min(cores, quota) if quota else cores)


def cgroup_cpu_quota(cgroup_root: Path, proc_cgroup: Path) -> int | None:
    """The tightest ``cpu.max`` quota on this process's cgroup path, in whole CPUs.

    Returns None when there is no cgroup v2 hierarchy or no quota.
    """
    try:
        line = next((ln for ln in proc_cgroup.read_text().splitlines() if ln.startswith("0::")), "")
    except (OSError, UnicodeDecodeError):
        return None
    if not line:
        return None
    relative = line[3:].strip().lstrip("/")
    directory = cgroup_root / relative if relative else cgroup_root
    tightest: int | None = None
    while True:
        cpus = _quota_cpus(directory / "cpu.max")
        if cpus is not None:
            tightest = cpus if tightest is None else min(tightest, cpus)
        if directory == cgroup_root or cgroup_root not in directory.parents:
            return tightest
        directory = directory.parent


def _quota_cpus(cpu_max: Path) -> int | None:
    try:
        fields = cpu_max.read_text().split()
    except (OSError, UnicodeDecodeError):
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota_us, period_us = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return max(1, math.ceil(quota_us / period_us))
