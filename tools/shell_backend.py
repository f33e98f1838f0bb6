"""Where scsi-shell's commands go: an iSCSI session or an in-process LUN.

Both backends take a CDB (plus data-out or an expected read length) and give
back a :class:`Reply`; they turn every failure into :class:`ShellError` with a
one-line message, so the console never shows a traceback.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from scsi_target.scsi.command import Status

# How often a command is repeated when it only reports a UNIT ATTENTION (power on,
# reset, parameters changed): the event is news, not a failure of the command.
UA_RETRIES = 3


class ShellError(Exception):
    """A failure with a message fit for one line; ``code`` becomes the exit status."""
    code = 1


class UsageError(ShellError):
    code = 2


class TransportLost(ShellError):
    """The connection is gone; ``reconnect`` may bring it back."""
    code = 3


class ConnectFailed(ShellError):
    code = 3


@dataclass
class Reply:
    status: int
    data: bytes = b""
    sense: bytes = b""
    residual: int = 0
    ua_seen: list[bytes] | None = None     # sense of unit attentions swallowed by retries

    @property
    def good(self) -> bool:
        return self.status == Status.GOOD


def _is_unit_attention(r: Reply) -> bool:
    if r.status != Status.CHECK_CONDITION or not r.sense:
        return False
    code = r.sense[0] & 0x7F
    key = r.sense[2] & 0x0F if code in (0x70, 0x71) and len(r.sense) > 2 else \
        (r.sense[1] & 0x0F if len(r.sense) > 1 else -1)
    return key == 0x6


class Backend(ABC):
    name = "?"
    lun = 0

    @abstractmethod
    def _execute(self, cdb: bytes, data_out: bytes | None, read_length: int,
                 lun: int | None = None) -> Reply:
        """Run one CDB on the transport (iSCSI or in-process)."""

    def execute(self, cdb: bytes, *, data_out: bytes | None = None, read_length: int = 0,
                retry_ua: bool = True, lun: int | None = None) -> Reply:
        """Run ``cdb`` on the session's LUN, or on ``lun`` of the same target."""
        seen: list[bytes] = []
        for _ in range(UA_RETRIES if retry_ua else 1):
            r = self._execute(bytes(cdb), data_out, read_length, lun)
            if not (retry_ua and _is_unit_attention(r)):
                break
            seen.append(r.sense)
        r.ua_seen = seen
        return r

    def reconnect(self) -> None:
        raise ShellError("this backend has no connection to re-establish")

    def close(self) -> None:
        pass


class IscsiBackend(Backend):
    def __init__(self, url: str, timeout: float = 30.0, *,
                 initiator_name: str | None = None) -> None:
        from scsi_target.initiator.errors import IscsiError, LoginError, UrlError
        from scsi_target.initiator.sync import SyncIscsiClient
        from scsi_target.initiator.url import parse_url
        from scsi_target.protocol.names import name_problem
        self.url_text = url
        if initiator_name is not None and name_problem(initiator_name):
            raise UsageError(f"--initiator-name: {name_problem(initiator_name)}")
        self.initiator_name = initiator_name
        try:
            self.url = parse_url(url)
        except UrlError as e:
            raise UsageError(f"bad URL: {e}") from None
        if not self.url.target:
            raise UsageError(f"{url}: the URL names no target (iscsi://host[:port]/IQN/LUN)")
        self.name = str(self.url)
        self.lun = self.url.lun
        self.timeout = timeout
        try:
            self.client = SyncIscsiClient(self.url, timeout=timeout,
                                          initiator_name=initiator_name)
        except LoginError as e:
            raise ConnectFailed(f"login to {self.url} failed: {e}") from None
        except (IscsiError, OSError) as e:
            raise ConnectFailed(f"cannot connect to {self.url.portal}: {_reason(e)}") from None

    def _execute(self, cdb: bytes, data_out: bytes | None, read_length: int,
                 lun: int | None = None) -> Reply:
        from scsi_target.initiator.errors import IscsiError, TransportError
        try:
            r = self.client.execute(cdb, data_out=data_out, read_length=read_length, lun=lun)
        except TransportError as e:
            raise TransportLost(f"connection lost: {_reason(e)} (type 'reconnect' to log in "
                                "again)") from None
        except IscsiError as e:
            raise ShellError(f"command failed: {_reason(e)}") from None
        if r.response != 0:
            raise ShellError(f"target failure: iSCSI response 0x{r.response:02x}")
        return Reply(r.status, bytes(r.data), bytes(r.sense), r.residual)

    def reconnect(self) -> None:
        from scsi_target.initiator.errors import IscsiError, LoginError
        from scsi_target.initiator.sync import SyncIscsiClient
        try:
            self.client.close()
        except Exception:  # the old session is gone either way
            pass
        try:
            self.client = SyncIscsiClient(self.url, timeout=self.timeout,
                                          initiator_name=self.initiator_name)
        except LoginError as e:
            raise ConnectFailed(f"login to {self.url} failed: {e}") from None
        except (IscsiError, OSError) as e:
            raise ConnectFailed(f"cannot connect to {self.url.portal}: {_reason(e)}") from None

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing a dead session must not fail the exit
            pass


class LocalBackend(Backend):
    """The LUN of a config file, driven through the in-process SCSI API (no TCP)."""

    def __init__(self, config: str | Path, target: str | None = None, lun: int = 0, *,
                 initiator_name: str | None = None) -> None:
        from scsi_target.config import ConfigError, build_registry, load_file
        from scsi_target.scsi.command import Nexus
        try:
            self.registry = build_registry(load_file(config))
        except ConfigError as e:
            raise ConnectFailed(f"config: {e}") from None
        except OSError as e:
            raise ConnectFailed(f"config {config}: {_reason(e)}") from None
        names = list(self.registry.targets)
        if not names:
            raise ConnectFailed(f"{config} defines no target")
        name = target or names[0]
        tdef = self.registry.get(name)
        if tdef is None:
            self.registry.close()
            raise UsageError(f"no target {name} in {config} (has: {', '.join(names)})")
        self.luns = tdef.luns
        self.lun = lun
        self.name = f"{config}: {name} LUN {lun}"
        ini = initiator_name or "iqn.2026-11.org.pyscsi:scsi-shell"
        self.nexus = Nexus(f"{ini},i,0x{1:012x}", f"{name},t,0x0001", initiator_name=ini, isid=1)

    def _execute(self, cdb: bytes, data_out: bytes | None, read_length: int,
                 lun: int | None = None) -> Reply:
        from scsi_target.scsi.command import Command, Direction
        direction = Direction.OUT if data_out is not None else \
            (Direction.IN if read_length else Direction.NONE)
        cmd = Command(cdb=cdb, lun=self.lun if lun is None else lun, data_out=data_out,
                      expected_length=len(data_out) if data_out is not None else read_length,
                      direction=direction, nexus=self.nexus)
        resp = self.luns.execute(cmd)
        data = bytes(resp.data_in)
        if resp.release is not None:
            resp.release()
        return Reply(int(resp.status), data, bytes(resp.sense), resp.residual)

    def reconnect(self) -> None:
        pass  # nothing to reconnect in-process

    def close(self) -> None:
        self.registry.close()


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        text = e.strerror
    return text.splitlines()[0] if text else type(e).__name__
