"""Tests for profile sizing: worker counts and the usable cores they are taken from.

Runs in: any (the cgroup tree is a fake one under tmp_path).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rusmd.config.model import Profile
from rusmd.config.sizing import cgroup_cpu_quota, usable_cores, worker_count

LIGHT, BALANCED, MAX = Profile.LIGHT, Profile.BALANCED, Profile.MAX

# cores → (light ≈ 1/4, balanced ≈ 2/5, max ≈ 1/2), rounded half up, at least 1.
WORKERS_BY_CORES = {
    1: (1, 1, 1),  # 0.25 → 0 → 1, 0.4 → 0 → 1, 0.5 → 1
    2: (1, 1, 1),  # 0.5 → 1, 0.8 → 1, 1
    4: (1, 2, 2),  # 1, 1.6 → 2, 2
    5: (1, 2, 3),  # 1.25 → 1, 2, 2.5 → 3
    8: (2, 3, 4),  # 2, 3.2 → 3, 4
    16: (4, 6, 8),  # 4, 6.4 → 6, 8
    64: (16, 26, 32),  # 16, 25.6 → 26, 32
}

SERVICE = "/system.slice/rusmd.service"


@pytest.mark.parametrize(
    ("cores", "profile", "workers"),
    [
        (cores, profile, expected[index])
        for cores, expected in WORKERS_BY_CORES.items()
        for index, profile in enumerate((LIGHT, BALANCED, MAX))
    ],
)
def test_worker_count_profile_on_cores_matches_table(
    cores: int, profile: Profile, workers: int
) -> None:
    assert worker_count(profile, cores) == workers


@pytest.mark.parametrize(
    ("profile", "cores", "workers"),
    [(LIGHT, 10, 3), (LIGHT, 6, 2), (MAX, 5, 3), (MAX, 9, 5)],
)
def test_worker_count_exact_half_rounds_up_not_to_even(
    profile: Profile, cores: int, workers: int
) -> None:
    assert worker_count(profile, cores) == workers


@pytest.mark.parametrize("profile", list(Profile))
@pytest.mark.parametrize("cores", [-4, 0, 1, 2])
def test_worker_count_few_or_no_cores_never_below_one(profile: Profile, cores: int) -> None:
    assert worker_count(profile, cores) == 1


def test_worker_count_more_cores_or_bigger_profile_never_fewer_workers() -> None:
    for cores in range(1, 257):
        counts = [worker_count(p, cores) for p in (LIGHT, BALANCED, MAX)]
        assert counts == sorted(counts), (cores, counts)
        for profile in Profile:
            assert worker_count(profile, cores + 1) >= worker_count(profile, cores)
            assert worker_count(profile, cores) <= cores


def fake_cgroup(
    tmp_path: Path, cpu_max: dict[str, str], membership: str = f"0::{SERVICE}\n"
) -> tuple[Path, Path]:
    """A cgroup v2 tree: ``cpu_max`` maps a cgroup path ("" is the root) to its file."""
    root = tmp_path / "sys-fs-cgroup"
    (root / SERVICE.lstrip("/")).mkdir(parents=True)
    for cgroup, content in cpu_max.items():
        directory = root / cgroup.lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cpu.max").write_text(f"{content}\n")
    proc_cgroup = tmp_path / "proc-self-cgroup"
    proc_cgroup.write_text(membership)
    return root, proc_cgroup


def affinity() -> int:
    return len(os.sched_getaffinity(0))


def test_cgroup_quota_unlimited_at_every_level_is_none(tmp_path: Path) -> None:
    root, proc = fake_cgroup(
        tmp_path, {SERVICE: "max 100000", "/system.slice": "max 100000", "": "max 100000"}
    )

    assert cgroup_cpu_quota(root, proc) is None
    assert usable_cores(root, proc) == affinity()


@pytest.mark.parametrize(
    ("cpu_max", "cpus"),
    [
        ("100000 100000", 1),
        ("150000 100000", 2),
        ("200000 100000", 2),
        ("50000 100000", 1),
        ("1 100000", 1),
        ("400000 50000", 8),
    ],
)
def test_cgroup_quota_on_own_cgroup_rounds_up_to_whole_cpus(
    tmp_path: Path, cpu_max: str, cpus: int
) -> None:
    root, proc = fake_cgroup(tmp_path, {SERVICE: cpu_max})

    assert cgroup_cpu_quota(root, proc) == cpus


def test_cgroup_quota_tighter_ancestor_caps_looser_leaf(tmp_path: Path) -> None:
    root, proc = fake_cgroup(
        tmp_path,
        {SERVICE: "400000 100000", "/system.slice": "150000 100000", "": "max 100000"},
    )

    assert cgroup_cpu_quota(root, proc) == 2


def test_cgroup_quota_tighter_leaf_wins_over_looser_ancestor(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, {SERVICE: "100000 100000", "/system.slice": "800000 100000"})

    assert cgroup_cpu_quota(root, proc) == 1


def test_cgroup_quota_only_on_unlimited_leafs_ancestor_still_applies(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, {SERVICE: "max 100000", "/system.slice": "300000 100000"})

    assert cgroup_cpu_quota(root, proc) == 3


def test_cgroup_quota_container_at_namespace_root_is_read(tmp_path: Path) -> None:
    # Inside a container's cgroup namespace the process sits at "/" and
    # `docker --cpus` shows up in the root's own cpu.max.
    root, proc = fake_cgroup(tmp_path, {"": "250000 100000"}, membership="0::/\n")

    assert cgroup_cpu_quota(root, proc) == 3


def test_cgroup_quota_outside_the_process_path_is_ignored(tmp_path: Path) -> None:
    root, proc = fake_cgroup(
        tmp_path, {"/user.slice": "100000 100000", "/system.slice/other.service": "100000 100000"}
    )

    assert cgroup_cpu_quota(root, proc) is None


def test_cgroup_quota_hybrid_membership_uses_the_v2_line(tmp_path: Path) -> None:
    membership = f"12:cpu,cpuacct:/other\n1:name=systemd:{SERVICE}\n0::{SERVICE}\n"
    root, proc = fake_cgroup(tmp_path, {SERVICE: "200000 100000"}, membership=membership)

    assert cgroup_cpu_quota(root, proc) == 2


@pytest.mark.parametrize(
    "membership",
    [
        "",
        "4:memory:/docker/abc\n1:cpu:/\n",
        f"1:name=systemd:{SERVICE}\n",
    ],
)
def test_cgroup_quota_without_v2_line_is_none(tmp_path: Path, membership: str) -> None:
    root, proc = fake_cgroup(tmp_path, {SERVICE: "100000 100000"}, membership=membership)

    assert cgroup_cpu_quota(root, proc) is None
    assert usable_cores(root, proc) == affinity()


def test_cgroup_quota_missing_proc_cgroup_is_none(tmp_path: Path) -> None:
    root, _ = fake_cgroup(tmp_path, {SERVICE: "100000 100000"})

    assert cgroup_cpu_quota(root, tmp_path / "no-such-file") is None
    assert usable_cores(root, tmp_path / "no-such-file") == affinity()


def test_cgroup_quota_unreadable_proc_cgroup_is_none(tmp_path: Path) -> None:
    root, _ = fake_cgroup(tmp_path, {SERVICE: "100000 100000"})
    unreadable = tmp_path / "proc-cgroup-is-a-directory"
    unreadable.mkdir()

    assert cgroup_cpu_quota(root, unreadable) is None


def test_cgroup_quota_unreadable_cpu_max_is_skipped(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, {"/system.slice": "300000 100000"})
    (root / SERVICE.lstrip("/") / "cpu.max").mkdir()

    assert cgroup_cpu_quota(root, proc) == 3


@pytest.mark.parametrize(
    "cpu_max", ["", "garbage", "0 100000", "-1 100000", "100000 0", "1.5 1", "max", "1 2 3"]
)
def test_cgroup_quota_malformed_cpu_max_is_none(tmp_path: Path, cpu_max: str) -> None:
    root, proc = fake_cgroup(tmp_path, {SERVICE: cpu_max})

    assert cgroup_cpu_quota(root, proc) is None


def test_usable_cores_one_cpu_quota_caps_affinity_to_one(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, {"/system.slice": "100000 100000"})

    assert usable_cores(root, proc) == 1


def test_usable_cores_quota_above_affinity_never_exceeds_affinity(tmp_path: Path) -> None:
    cpus = affinity() + 8
    root, proc = fake_cgroup(tmp_path, {SERVICE: f"{cpus * 100000} 100000"})

    assert cgroup_cpu_quota(root, proc) == cpus
    assert usable_cores(root, proc) == affinity()


def test_usable_cores_on_this_host_is_between_one_and_affinity() -> None:
    assert 1 <= usable_cores() <= affinity()
