"""One SendTargets entry (a discovery session's answer, a login redirection's address)."""
from __future__ import annotations

from collections import namedtuple


class DiscoveredTarget(namedtuple("DiscoveredTarget", ("target", "portal"))):
    """One SendTargets entry: target name and portal "host:port,tpgt"."""
    __slots__ = ()

    @property
    def host(self) -> str:
        addr = self.portal.rsplit(",", 1)[0]
        host = addr.rsplit(":", 1)[0] if not addr.endswith("]") else addr
        return host.strip("[]")

    @property
    def port(self) -> int:
        addr = self.portal.rsplit(",", 1)[0]
        if addr.endswith("]") or ":" not in addr:
            return 3260
        return int(addr.rsplit(":", 1)[1])

    @property
    def tpgt(self) -> int | None:
        parts = self.portal.rsplit(",", 1)
        return int(parts[1]) if len(parts) == 2 and parts[1].isdigit() else None
