"""The actor table's names: this worker's replica of the node's registry, and claims.

Runs in: worker. Every method is safe from any thread; ``name_reply``
and ``names_update`` come from the main process on the loop thread.

The main process keeps the registry: ``rusm.register`` sends it a
claim and waits for its answer (a guest thread on its condition, a
fiber parked: ``register_begin`` / ``register_answer`` /
``register_abandon``); every worker keeps a replica for ``whereis``.
"""

from __future__ import annotations

from rusmd.abi import ErrorCode
from rusmd.actors.messaging import Messaging
from rusmd.actors.records import NAME_CLAIM_TIMEOUT_S, Actor, Claim, _wait_for
from rusmd.channel import NameClaim, NameDrop, NameReply, Names


class NameReplica(Messaging):
    """The table's names (see ``TableCore`` for the args)."""

    def whereis(self, name: str) -> int | None:
        """The pid registered under ``name`` (this worker's replica), or None."""
        return self.names.get(name)

    def register(self, actor: Actor, name: str) -> int:
        """``rusm.register``: ask the main process, which keeps the registry.

        Raises:
            Stopped: The caller was told to stop while it waited.
        """
        claim = self.register_begin(actor, name)
        if not isinstance(claim, Claim):
            return claim
        with self.lock:
            try:
                if not _wait_for(actor, lambda: claim.answer is not None, NAME_CLAIM_TIMEOUT_S):
                    return ErrorCode.UNAVAILABLE
            finally:
                if claim.answer is None:
                    self.register_abandon(claim)
        return self.register_answer(claim)

    def register_begin(self, actor: Actor, name: str) -> Claim | int:
        """Ask the main process for ``name``: the claim, or EXISTS at once.

        The answer wakes ``actor``; once ``claim.answer`` is set,
        ``register_answer`` finishes the call. A caller that stops waiting
        first (timeout, stop) calls ``register_abandon``.
        """
        with self.lock:
            if actor.names or name in self.names:
                return ErrorCode.EXISTS
            req = next(self._claim_ids)
            claim = Claim(actor, name, req)
            self._claims[req] = claim
        self.to_main(NameClaim(req=req, name=name, pid=actor.pid))
        return claim

    def register_abandon(self, claim: Claim) -> None:
        """Nobody waits for ``claim`` any more: a late grant is given back."""
        with self.lock:
            claim.abandoned = True

    def register_answer(self, claim: Claim) -> int:
        """``rusm.register``'s result once ``claim`` was answered."""
        actor, name = claim.actor, claim.name
        with self.lock:
            self._claims.pop(claim.req, None)
            answer = claim.answer
            if answer is None or not answer.ok:
                return ErrorCode.EXISTS
            # The registry's broadcast may have named it already (names_update).
            if actor.alive and actor.names <= {name}:
                actor.names.add(name)
                self.names[name] = actor.pid
                return ErrorCode.OK
        self.to_main(NameDrop(pid=actor.pid, names=[name]))
        return ErrorCode.EXISTS

    def unregister(self, actor: Actor, name: str) -> int:
        """``rusm.unregister``: only the caller's own name."""
        with self.lock:
            holder = self.names.get(name)
            if name not in actor.names:
                return ErrorCode.NOTFOUND if holder is None else ErrorCode.DENIED
            actor.names.discard(name)
            if holder == actor.pid:
                del self.names[name]
        self.to_main(NameDrop(pid=actor.pid, names=[name]))
        return ErrorCode.OK

    def name_reply(self, answer: NameReply) -> None:
        """The main process settled a claim."""
        with self.lock:
            claim = self._claims.get(answer.req)
            if claim is None:
                return
            if claim.abandoned:
                del self._claims[answer.req]
                if answer.ok:
                    self.to_main(NameDrop(pid=claim.actor.pid, names=[claim.name]))
                return
            claim.answer = answer
            if answer.ok:
                self.names[claim.name] = answer.holder
            claim.actor.wake()

    def names_update(self, update: Names) -> None:
        """Registry changes from the main process."""
        with self.lock:
            if update.full:
                self.names = dict(update.set)
            else:
                self.names.update(update.set)
                for name in update.removed:
                    self.names.pop(name, None)
            # A name main gave a local process (a resident's) is that process's own.
            for name, pid in update.set.items():
                actor = self.actors.get(pid)
                if actor is not None:
                    actor.names.add(name)
