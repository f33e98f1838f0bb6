"""What the server serves: targets (IQN, LUNs, auth, ACL) and portals.

Built by :mod:`scsi_target.config` from flags or a TOML file; consumed by the
iSCSI login (authentication, ACL, SendTargets) and the session (LUN map).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ..protocol.names import normalize_name
from ..scsi.lun import LunMap

if TYPE_CHECKING:  # pragma: no cover
    from .hooks import TransportFaults


@dataclass(frozen=True)
class Chap:
    username: str
    secret: str


@dataclass(frozen=True)
class Portal:
    host: str = "127.0.0.1"
    port: int = 3260

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass
class TargetDef:
    name: str
    luns: LunMap
    alias: str = ""
    # Credentials the initiator must present (one-way CHAP); None = no auth.
    chap: Chap | None = None
    # Credentials the target answers with when the initiator asks (mutual CHAP).
    mutual_chap: Chap | None = None
    # Initiator IQNs allowed to log in; None = everyone.
    allowed_initiators: frozenset[str] | None = None
    portal_group_tag: int = 1
    # Testing hook (the reject_login fault, scsi_target/interceptors/faults.py):
    # called with the initiator name at login; a login status (e.g. 0x0301) refuses it.
    login_check: Callable[[str], int | None] | None = None
    # Testing hook (the iSCSI-level faults, scsi_target/target/hooks.py): called with
    # the initiator port name when a connection enters full feature phase.
    transport_faults: Callable[[str], "TransportFaults"] | None = None

    def allows(self, initiator_name: str) -> bool:
        """The ACL check of login and discovery; names compare in RFC 3722 form."""
        if self.allowed_initiators is None:
            return True
        return normalize_name(initiator_name) in {normalize_name(n)
                                                  for n in self.allowed_initiators}


@dataclass
class TargetRegistry:
    targets: dict[str, TargetDef] = field(default_factory=dict)
    portals: list[Portal] = field(default_factory=lambda: [Portal()])
    # Credentials required for discovery sessions; None = discovery is open.
    discovery_chap: Chap | None = None
    discovery_mutual_chap: Chap | None = None

    def add(self, target: TargetDef) -> None:
        if target.name in self.targets:
            raise ValueError(f"target {target.name} defined twice")
        self.targets[target.name] = target

    def get(self, name: str) -> TargetDef | None:
        return self.targets.get(name)

    def close(self) -> None:
        for t in self.targets.values():
            t.luns.close()
