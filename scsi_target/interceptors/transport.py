"""iSCSI-level faults: the decisions one connection asks for, read from the rules.

The target's connection (scsi_target/target/connection.py, sans I/O) asks
these questions at its decision points and turns the answers into output
markers; the asyncio driver applies the delays.  Nothing here does I/O or
knows the connection: the target package sees only the methods below (its
``TransportFaults`` protocol in scsi_target/target/hooks.py).

Rules are the injector's list, read as it changes, so a rule added by FAULT
CONTROL on a running server acts on connections that are already open.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .cmdlog import block_range

if TYPE_CHECKING:  # pragma: no cover
    from .faults import FaultInjector, FaultRule


@dataclass(frozen=True)
class Stall:
    """Hold the output from here: ``seconds``, or (0) until ``rule`` is cleared."""
    seconds: float
    rule: "FaultRule"

    def on_release(self, callback: Callable[[], None]) -> None:
        self.rule.on_release(callback)


class ConnectionFaults:
    """Transport-fault decisions for one connection of ``initiator`` (its port name)."""

    def __init__(self, injector: "FaultInjector", initiator: str) -> None:
        self.injector = injector
        self.initiator = initiator
        self._seen: set[int] = set()        # serials of drop rules considered here
        self._armed: list[list] = []        # [rule, PDUs counted]

    # ------------------------------------------------------ drop after N PDUs
    def _arm(self) -> None:
        for rule in self.injector.rules:
            if rule.action != "drop_after_pdus" or rule.serial in self._seen:
                continue
            self._seen.add(rule.serial)
            if rule.exhausted or (rule.initiator is not None
                                  and rule.initiator not in self.initiator):
                continue
            if rule.selects():              # every Nth connection, probability
                self._armed.append([rule, 0])

    def _count(self, direction: str, n: int) -> int | None:
        """Of ``n`` PDUs, how many pass before the connection must close (None: all)."""
        self._arm()
        for entry in self._armed:
            rule = entry[0]
            if rule.released or rule.exhausted or rule.direction not in (direction, "any"):
                continue
            left = rule.pdus - entry[1]
            if left <= n:
                rule.fire()
                self._armed.clear()         # the connection ends: nothing more to count
                return left
            entry[1] += n
        return None

    def received(self) -> bool:
        """One PDU came in; True: the connection closes on it (it is not acted on)."""
        if not self.injector.rules:
            return False
        return self._count("received", 1) is not None

    def sent(self, n: int) -> int | None:
        """``n`` PDUs go out; None, or how many of them are sent before the close."""
        if not self.injector.rules:
            return None
        return self._count("sent", n)

    # ------------------------------------------------------- command answers
    def _command_rule(self, action: str, lun: int, cdb, ok: Callable[["FaultRule"], bool]):
        rules = self.injector.rules
        if not rules:
            return None
        rng = None
        for rule in rules:
            if rule.action != action or rule.exhausted or not ok(rule):
                continue
            if rng is None:
                rng = block_range(bytes(cdb[:16])) or ()
            if rule.applies_to(lun, cdb, self.initiator, rng or None) and rule._fires():
                return rule
        return None

    def r2t(self, lun: int, cdb) -> Stall | None:
        """An R2T of this command is about to go out."""
        rule = self._command_rule("stall", lun, cdb, lambda r: r.pdu == "r2t")
        return Stall(rule.seconds, rule) if rule is not None else None

    def response(self, lun: int, cdb, *, header_digest: bool, data_digest: bool,
                 has_data: bool) -> tuple[Stall | None, str | None]:
        """The answer of this command is about to go out: hold it?  corrupt which digest?"""
        rule = self._command_rule("stall", lun, cdb, lambda r: r.pdu == "response")
        stall = Stall(rule.seconds, rule) if rule is not None else None

        def negotiated(r: "FaultRule") -> bool:
            return header_digest if r.digest == "header" else data_digest and has_data
        rule = self._command_rule("corrupt_digest", lun, cdb, negotiated)
        return stall, rule.digest if rule is not None else None

    # ------------------------------------------------------------------ NOP
    def nop_in(self) -> Stall | None:
        """The NOP-In answering a NOP-Out is about to go out."""
        for rule in self.injector.rules:
            if rule.action != "delay_nop_in" or rule.exhausted:
                continue
            if rule.initiator is not None and rule.initiator not in self.initiator:
                continue
            if rule._fires():
                return Stall(rule.seconds, rule)
        return None
