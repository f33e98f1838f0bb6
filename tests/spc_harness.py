"""In-process harness for the SPC tests: a disk LU with SPC plus stand-in READ/WRITE.

The stand-in medium commands exist only so reservation access rules can be
exercised without depending on the SBC command set.
"""
from __future__ import annotations

from dataclasses import dataclass

from scsi_target.scsi.command import Command, Direction, Nexus, Response, Status
from scsi_target.scsi.disk import DiskLU
from scsi_target.scsi.dispatch import CommandSet, Conflict, DispatchTable, data_out
from scsi_target.scsi.lun import LogicalUnit
from scsi_target.scsi.sense import SenseKey, parse_sense
from scsi_target.scsi.spc import SPC
from scsi_target.testing import InProcessTarget
from volume.memstore import MemoryStore

FAKE_MEDIUM = CommandSet("fake-medium")


@FAKE_MEDIUM.command(0x28, "READ(10)", 10, direction=Direction.IN, conflict=Conflict.READ)
def _read10(lu, cmd):
    return bytes(512 * int.from_bytes(cmd.cdb[7:9], "big"))


@FAKE_MEDIUM.command(0x2A, "WRITE(10)", 10, direction=Direction.OUT, conflict=Conflict.WRITE)
def _write10(lu, cmd):
    data_out(cmd, 512 * int.from_bytes(cmd.cdb[7:9], "big"))


TABLE = DispatchTable([SPC, FAKE_MEDIUM])
NEXUS1 = Nexus("iqn.2026-11.test:init1,i,0x000000000001", "iqn.2026-11.test:t,t,0x0001",
               initiator_name="iqn.2026-11.test:init1", isid=1)
NEXUS2 = Nexus("iqn.2026-11.test:init2,i,0x000000000002", "iqn.2026-11.test:t,t,0x0001",
               initiator_name="iqn.2026-11.test:init2", isid=2)


class TestDisk(DiskLU):
    __test__ = False
    table = TABLE


class ThickStore(MemoryStore):
    thin = False


class TestTape(LogicalUnit):
    """A non-disk LU: no block geometry, so no disk VPD pages or block descriptors."""
    __test__ = False
    device_type = 0x01
    removable = True
    table = DispatchTable([SPC])


@dataclass
class Result:
    resp: Response

    @property
    def status(self) -> Status:
        return self.resp.status

    @property
    def data(self) -> bytes:
        return bytes(self.resp.data_in)

    @property
    def sense(self) -> tuple[SenseKey, int, int]:
        return parse_sense(self.resp.sense)


class Harness:
    def __init__(self, lu: LogicalUnit | None = None, *, thin: bool = True,
                 clear_ua: bool = True) -> None:
        store = MemoryStore(1 << 20) if thin else ThickStore(1 << 20)
        self.lu = lu if lu is not None else TestDisk(store, 512)
        # The plugin's in-process target (command log in self.target.log); every
        # nexus, NEXUS1 included, gets its power-on unit attention.
        self.target = InProcessTarget("iqn.2026-11.test:t", power_on_ua=True,
                                      fault_control=False)
        self.target.attach(0, self.lu)
        self.map = self.target.luns
        if clear_ua:  # the power-on UA every new nexus sees first
            self.clear_ua(NEXUS1)
            self.clear_ua(NEXUS2)

    def run(self, cdb, *, length: int | None = None, data: bytes | None = None,
            nexus: Nexus = NEXUS1, direction: Direction | None = None) -> Result:
        if direction is None:
            direction = Direction.OUT if data is not None else Direction.IN
        if length is None:
            length = len(data) if data is not None else 4096
        return Result(self.map.execute(Command(cdb=bytes(cdb), expected_length=length,
                                               direction=direction, data_out=data, nexus=nexus)))

    def ok(self, cdb, **kw) -> bytes:
        r = self.run(cdb, **kw)
        assert r.status == Status.GOOD, (r.status, r.resp.sense.hex())
        return r.data

    def check(self, cdb, key: SenseKey, asc: int, ascq: int = 0, **kw) -> Result:
        r = self.run(cdb, **kw)
        assert r.status == Status.CHECK_CONDITION, r.status
        assert r.sense == (key, asc, ascq), r.sense
        return r

    def clear_ua(self, nexus: Nexus = NEXUS1) -> None:
        for _ in range(20):
            if self.run([0, 0, 0, 0, 0, 0], nexus=nexus).status == Status.GOOD:
                return
        raise AssertionError("unit attentions never cleared")
