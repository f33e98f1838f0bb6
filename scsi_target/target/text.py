"""Text Request handling in full feature phase (RFC 7143 11.10/11.11, 13, appendix C).

:class:`TextNegotiator` answers SendTargets (discovery) and the few keys
that may change after login (MaxRecvDataSegmentLength, aliases).  Text
longer than one PDU travels with the C bit in both directions: a partial
request is acknowledged by an empty response carrying a target transfer
tag, and a long answer is sent one PDU per (empty) initiator request that
echoes our tag.  StatSN/ExpCmdSN/MaxCmdSN are the session's business: the
caller fills them into each returned response.  The negotiated limits are
read from (and a renegotiated MaxRecvDataSegmentLength written to) the
session's one parameters record, which every other part of the connection
reads too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .registry import TargetDef, TargetRegistry
from .tags import TagAllocator
from ..protocol import params as K
from ..protocol.pdu import RESERVED_TAG, RejectReason, TextRequest, TextResponse


class TextProtocolError(Exception):
    """A Text Request that must be answered with a Reject PDU."""

    def __init__(self, why: str, reason: RejectReason = RejectReason.PROTOCOL_ERROR) -> None:
        super().__init__(why)
        self.reason = reason


@dataclass
class _Exchange:
    itt: int
    ttt: int
    incoming: bytearray
    outgoing: list[bytes] | None = None


class TextNegotiator:
    def __init__(self, params: K.SessionParams, registry: TargetRegistry,
                 target: TargetDef | None, initiator_name: str | None = None,
                 new_ttt: Callable[[], int] | None = None) -> None:
        self.params = params
        self.registry = registry
        self.target = target
        # None: no ACL filtering (the caller did not say who the initiator is).
        self.initiator_name = initiator_name
        self._x: _Exchange | None = None
        # The connection passes its tag allocator so our tags never equal an R2T's.
        self._new_ttt = new_ttt if new_ttt is not None else TagAllocator()

    @property
    def max_xmit_data_segment_length(self) -> int:
        return self.params.max_xmit_data_segment_length

    @property
    def discovery(self) -> bool:
        return self.target is None

    def receive(self, req: TextRequest) -> TextResponse:
        x = self._x
        if req.ttt == RESERVED_TAG:
            # A request with the reserved tag starts a new exchange and
            # abandons any unfinished one (11.10.4).
            x = self._x = _Exchange(req.itt, self._new_ttt(), bytearray())
        elif x is None or req.ttt != x.ttt or req.itt != x.itt:
            raise TextProtocolError(f"unknown target transfer tag 0x{req.ttt:08x}",
                                    RejectReason.INVALID_PDU_FIELD)
        if req.cont and req.final:
            raise TextProtocolError("F and C bits both set")

        if x.outgoing is not None:
            if len(req.data) or req.cont:
                raise TextProtocolError("text sent while our response continues")
            return self._send_chunk(req, x)

        x.incoming += req.data
        if len(x.incoming) > K.MAX_TEXT_LEN:
            self._x = None
            raise TextProtocolError("text request too long")
        if req.cont:
            return TextResponse(final=False, cont=False, itt=req.itt, ttt=x.ttt)
        try:
            keys = K.unique(K.decode_text(bytes(x.incoming)))
        except K.TextError as exc:
            self._x = None
            raise TextProtocolError(str(exc)) from None
        x.incoming.clear()
        answers: list[tuple[str, str]] = []
        new_mrdsl = None
        for key, value in keys.items():
            if key == "MaxRecvDataSegmentLength":
                n = K.parse_number(value)
                if n is None or n < 512:
                    answers.append((key, K.REJECT))
                else:
                    new_mrdsl = min(n, 2**24 - 1)
            else:
                answers.extend(self._answer(key, value))
        text = K.encode_text(answers)
        # The new limit applies to what we send after this exchange.
        x.outgoing = K.split_text(text, self.max_xmit_data_segment_length)
        if new_mrdsl is not None:
            self.params.max_xmit_data_segment_length = new_mrdsl
        return self._send_chunk(req, x)

    # ------------------------------------------------------------ answers
    def _answer(self, key: str, value: str) -> list[tuple[str, str]]:
        if key == "SendTargets":
            return self._send_targets(value)
        d = K.KEYS.get(key)
        if d is None:
            return [(key, K.NOT_UNDERSTOOD)]
        if d.name == "InitiatorAlias":
            return []   # declarative; nothing to answer
        # Everything else is login-only, target-only, or security: not now.
        return [(key, K.REJECT)]

    def visible(self) -> list[TargetDef]:
        out = []
        for name in sorted(self.registry.targets):
            t = self.registry.targets[name]
            if self.initiator_name is None or t.allows(self.initiator_name):
                out.append(t)
        return out

    def _send_targets(self, value: str) -> list[tuple[str, str]]:
        if value == "All":
            if not self.discovery:
                return [("SendTargets", K.REJECT)]
            chosen = self.visible()
        elif value == "":
            chosen = [self.target] if self.target is not None else []
        else:
            chosen = [t for t in self.visible() if t.name == value]
            if not self.discovery and self.target is not None and value != self.target.name:
                chosen = []
        out: list[tuple[str, str]] = []
        for t in chosen:
            out.append(("TargetName", t.name))
            for p in self.registry.portals:
                out.append(("TargetAddress", f"{p},{t.portal_group_tag}"))
        return out

    # ------------------------------------------------------------ PDUs
    def _send_chunk(self, req: TextRequest, x: _Exchange) -> TextResponse:
        assert x.outgoing is not None
        chunk = x.outgoing.pop(0)
        if x.outgoing:
            return TextResponse(final=False, cont=True, itt=req.itt, ttt=x.ttt, data=chunk)
        if not req.final:
            # The initiator wants another round (F=0): keep the tag alive.
            x.outgoing = None
            return TextResponse(final=False, cont=False, itt=req.itt, ttt=x.ttt, data=chunk)
        self._x = None
        return TextResponse(final=True, cont=False, itt=req.itt, ttt=RESERVED_TAG, data=chunk)
