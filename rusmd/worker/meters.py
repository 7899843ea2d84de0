"""A worker's counters for the node endpoint: the ``meters`` query's answer.

Runs in: worker, on its loop thread (the channel's query handler).

Everything here is a read of counters kept elsewhere: the wasm host's
spawns and exits, the messages sent (the actor table's to this worker's
processes, the mesh's to other workers'), the actor table's delivered
and dropped messages, each listener's ``RequestMeter``, the store's
commit counters and latency, and the worker's own CPU time and resident
memory from the kernel. The main process adds the workers' answers to
its own counts (restarts, quarantines) in the ``stats`` control command;
the node endpoint takes differences between two of them for rates and
percentiles. Nothing here walks the store (unlike ``stats``' bucket
counts), so the endpoint can ask several times a second.
"""

from __future__ import annotations

import os
import resource
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rusmd.actors.table import ActorTable
    from rusmd.serving.server import Server
    from rusmd.wasm.host import WasmHost
    from rusmd.worker.mesh import Mesh

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """This process's resident memory, from ``/proc/self/statm`` (one small read)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0


def worker_meters(
    slot: int,
    host: WasmHost | None,
    actors: ActorTable | None,
    server: Server | None,
    mesh: Mesh | None = None,
) -> dict[str, Any]:
    """Plain counters of worker ``slot``: see the module docstring."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    to_others = mesh.outbox.sent if mesh is not None else 0
    meters: dict[str, Any] = {
        "slot": slot,
        "pid": os.getpid(),
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "rss_bytes": resident_bytes(),
        "requests": server.meters() if server is not None else [],
        "mailbox_dropped": actors.dropped if actors is not None else 0,
        "messages_delivered": actors.delivered if actors is not None else 0,
        "messages_sent": {
            "same_worker": actors.sent_local if actors is not None else 0,
            # Refused ones (a backlogged worker) were sent too, and dropped.
            "other_worker": to_others + (actors.sent_refused if actors is not None else 0),
        },
    }
    if host is not None:
        stats = host.stats()
        meters.update(
            processes=stats["processes"],
            spawned=stats["spawned"],
            exits=stats["exits"],
            pooling=stats["pooling"],
            pool_slots=host.engine_info.pool_slots,
        )
        if host.store is not None:
            meters["store"] = host.store.counters()
    return meters
