"""The actor table of one worker: mailboxes, links, monitors, names, timers.

Runs in: worker. Every method is safe from any thread: the loop thread
calls it from the host functions of fibers (every process but those
that keep a guest thread) and with signals from other workers and from
the main process; guest threads from their host functions.

One lock guards the whole table (every actor's links, monitors, mailbox
and the name replica): signals are short, and one lock makes an exit and
the signals it sends one atomic step; on the loop thread nobody else
takes it but the few guest threads. A fiber waiting for a message, a
reply or a name parks: a delivery appends to its mailbox and calls its
actor's ``waker``, which schedules it on the loop (the ``*_begin`` /
``*_answer`` / ``*_end`` halves of ``call``, ``register`` and ``probe``
are for it). A guest thread parked in ``receive`` or ``call`` waits on a
condition of the lock instead: no CPU, no polling; a message, a reply, a
down or a kill wakes it.

Routing is by pid alone: ``slot_of(pid)`` names the worker. A signal to a
local pid is handled at once; one to another worker goes to ``remote``
(the loop batches it onto the mesh channel to that worker). A signal that
cannot leave (no live worker in that slot) is answered as if the target
were dead: a link gets an exit with reason noproc, a monitor a down with
noproc.

Exit semantics (OTP's): a process that ends sends ``EXIT`` with its
reason to every linked process and ``DOWN`` to every monitor. A linked
process that traps exits gets an exit message; one that does not dies
with the same reason unless the reason is normal. ``kill`` cannot be
trapped (the target's links then see ``killed``, which can). Names are
released on exit. When a whole worker dies, ``worker_down`` fires the
links and monitors that point at its pids with the worker's reason.

The table is one class built along a one-way chain of modules:
``records`` (actors, envelopes, claims), ``core`` (membership, signals,
exits, links and monitors), ``messaging`` (send, receive, call, probes,
timers), ``names`` (the registry's replica and claims), then this module,
which adds what operators see.
"""

from __future__ import annotations

from typing import Any

from rusmd.actors.names import NameReplica


class ActorTable(NameReplica):
    """Processes of one worker as actors.

    Its constructor is ``TableCore``'s (``rusmd/actors/core.py``), which
    documents the arguments; each module of the chain adds one concern.
    """

    # ── what operators see ──────────────────────────────────────────────

    def describe(self, pid: int) -> dict[str, Any]:
        """Links, monitors, names and mailbox of one process, for list/info."""
        with self.lock:
            actor = self.actors.get(pid)
            if actor is None:
                return {}
            return {
                "links": sorted(actor.links),
                "monitors": sorted(actor.monitors.values()),
                "monitored_by": sorted(actor.watchers.values()),
                "names": sorted(actor.names),
                "mailbox": len(actor.mailbox),
                "received": actor.received,
                "dropped": actor.dropped,
                "trap_exit": actor.trap_exit,
                "timers": len(actor.timers),
                "label_text": actor.user_label,
            }
