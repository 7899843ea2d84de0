"""Worker replacement time: ``kill -9`` of a worker → its successor reports ready.

Runs in: a benchmark process of its own (it starts the real daemon).

Side by side in one run:

- rusm: the daemon's own log timestamps, from the kill (taken here just
  before ``os.kill``) to the ``worker N ready`` record of the successor:
  reap + supervisor decision + fork + worker boot + Ready over the channel.
- baseline: the floor for a forking Python server: this process forks a
  child that starts a uvloop loop and writes one byte to a pipe; timed
  from the fork to the byte.

Prints the median and p95 of both and their ratio.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KILLS = 24
# Slots killed in turn, spaced so no slot exceeds its restart intensity
# (3 in 5 s) and the figure measures restarts, not quarantine.
SLOTS_PROFILE = ("--cpus", "8", "--profile", "max")
KILL_SPACING_S = 0.7


def request(sock_path: Path, command: str, **args: Any) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(sock_path))
        payload = json.dumps({"command": command, "args": args}).encode()
        conn.sendall(struct.pack(">I", len(payload)) + payload)
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            chunk = conn.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    reply: dict[str, Any] = json.loads(data[4:])
    return reply


def wait_all_ready(sock_path: Path, deadline: float) -> dict[int, int]:
    while time.monotonic() < deadline:
        try:
            result = request(sock_path, "status")["result"]
        except OSError:
            time.sleep(0.02)
            continue
        workers = result["workers"]
        if len(workers) == result["daemon"]["workers_target"] and all(
            w["state"] == "ready" for w in workers
        ):
            return {w["slot"]: w["pid"] for w in workers}
        time.sleep(0.01)
    raise TimeoutError("workers not ready")


def measure_rusm(app: Path) -> list[float]:
    port = _free_port()
    (app / "rusm.toml").write_text(
        f'[node]\nlisten = "127.0.0.1:{_free_port()}"\n[log]\nlevel = "info"\n'
        f'[[serve]]\nprotocol = "http"\nlisten = "127.0.0.1:{port}"\nname = "api"\n'
    )
    sock_path = app / ".rusm" / "rusmd.sock"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "rusmd", "--config", "rusm.toml", *SLOTS_PROFILE],
        cwd=app,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    samples: list[float] = []
    try:
        pids = wait_all_ready(sock_path, time.monotonic() + 30)
        kills: list[tuple[int, float]] = []
        for n in range(KILLS):
            slot = n % len(pids)
            pids = wait_all_ready(sock_path, time.monotonic() + 30)
            kills.append((slot, time.time()))
            os.kill(pids[slot], signal.SIGKILL)
            time.sleep(KILL_SPACING_S)
        wait_all_ready(sock_path, time.monotonic() + 30)
        records = request(sock_path, "logs", lines=1000)["result"]["records"]
        for slot, killed_at in kills:
            ready = [
                r["time"]
                for r in records
                if r["text"].startswith(f"worker {slot} ready") and r["time"] > killed_at
            ]
            if ready:
                samples.append(min(ready) - killed_at)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    return samples


def measure_baseline() -> list[float]:
    samples = []
    for _ in range(KILLS):
        read_end, write_end = os.pipe()
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            import asyncio

            import uvloop

            loop = uvloop.new_event_loop()
            asyncio.set_event_loop(loop)
            loop.call_soon(os.write, write_end, b"!")
            loop.call_soon(loop.stop)
            loop.run_forever()
            os._exit(0)
        os.close(write_end)
        os.read(read_end, 1)
        samples.append(time.perf_counter() - started)
        os.close(read_end)
        os.waitpid(pid, 0)
    return samples


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        rusm = measure_rusm(Path(tmp))
    baseline = measure_baseline()
    rusm_median, rusm_p95 = summary(rusm)
    base_median, base_p95 = summary(baseline)
    print(f"worker restart: {len(rusm)} kills, baseline {len(baseline)} forks")
    print(
        f"  rusm  kill -9 → successor ready   median {rusm_median * 1000:7.1f} ms"
        f"   p95 {rusm_p95 * 1000:7.1f} ms"
    )
    print(
        f"  base  fork → uvloop child running median {base_median * 1000:7.1f} ms"
        f"   p95 {base_p95 * 1000:7.1f} ms"
    )
    print(f"  ratio rusm/baseline (median) {rusm_median / base_median:.1f}x")
    return 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


if __name__ == "__main__":
    sys.exit(main())
