"""Supervision: OTP supervisor semantics as pure decision logic.

Runs in: main (the worker pool and residents) and worker (guest supervisors).

The layout:

- ``spec``        flags, child specs, exit reasons, shutdown, quarantine
                  policy: the vocabulary, every field with its default.
- ``action``      what the supervisor asks the process layer to do.
- ``child``       one child's state machine and restart window.
- ``supervisor``  the decisions: restart, escalate, quarantine.
"""

from rusmd.abi import ExitReason
from rusmd.supervision.action import Action, Escalate, Quarantine, StartChild, StopChild
from rusmd.supervision.child import ChildInfo, ChildState
from rusmd.supervision.spec import (
    ChildSpec,
    QuarantinePolicy,
    RestartType,
    Shutdown,
    ShutdownKind,
    Strategy,
    SupervisionError,
    SupervisionSpecError,
    SupervisorFlags,
    SupervisorStateError,
    UnknownChildError,
    should_restart,
)
from rusmd.supervision.supervisor import Supervisor

__all__ = [
    "Action",
    "ChildInfo",
    "ChildSpec",
    "ChildState",
    "Escalate",
    "ExitReason",
    "Quarantine",
    "QuarantinePolicy",
    "RestartType",
    "Shutdown",
    "ShutdownKind",
    "StartChild",
    "StopChild",
    "Strategy",
    "SupervisionError",
    "SupervisionSpecError",
    "Supervisor",
    "SupervisorFlags",
    "SupervisorStateError",
    "UnknownChildError",
    "should_restart",
]
