"""In-process harness for the SSC tests: a TapeLU on a fresh image behind a LunMap."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from scsi_target.scsi.command import Command, Direction, Nexus, Response, Status
from scsi_target.scsi.layouts import tape as LT
from scsi_target.scsi.layouts.sense import SenseData, decode_sense
from scsi_target.scsi.lun import Identity, LunMap
from scsi_target.scsi import devices
from scsi_target.scsi.tape_lu import TapeLU
from tape import TapeImage

NEXUS1 = Nexus("iqn.2026-11.test:init1,i,0x000000000001", "iqn.2026-11.test:t,t,0x0001",
               initiator_name="iqn.2026-11.test:init1", isid=1)
NEXUS2 = Nexus("iqn.2026-11.test:init2,i,0x000000000002", "iqn.2026-11.test:t,t,0x0001",
               initiator_name="iqn.2026-11.test:init2", isid=2)

TUR = bytes(6)


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
    def sense(self) -> SenseData:
        return decode_sense(self.resp.sense)

    @property
    def triple(self) -> tuple[int, int, int]:
        s = self.sense
        return s.key, s.asc, s.ascq


class TapeHarness:
    def __init__(self, tmp: Path, capacity: int = 8 << 20, *, early_warning: int | None = None,
                 crc: bool = True, image: TapeImage | None = None, name: str = "t.img",
                 **create) -> None:
        self.path = Path(tmp) / name
        if image is None:
            image = TapeImage.create(self.path, capacity, early_warning=early_warning, crc=crc,
                                     **create)
        self.lu = TapeLU(image, identity=Identity.derive("iqn.2026-11.test:t", 0,
                                                         product="VIRTUAL-TAPE"),
                         table=devices.TAPE)
        self.map = LunMap("iqn.2026-11.test:t")
        self.map.add(0, self.lu)
        for n in (NEXUS1, NEXUS2):
            r = self.run(TUR, nexus=n)
            assert r.status == Status.CHECK_CONDITION and r.sense.key == 6  # power on

    def run(self, cdb, *, length: int | None = None, data: bytes | None = None,
            nexus: Nexus = NEXUS1) -> Result:
        direction = Direction.OUT if data is not None else Direction.IN
        if length is None:
            length = len(data) if data is not None else 1 << 16
        return Result(self.map.execute(Command(cdb=bytes(cdb), expected_length=length,
                                               direction=direction, data_out=data, nexus=nexus)))

    def ok(self, cdb, **kw) -> bytes:
        r = self.run(cdb, **kw)
        assert r.status == Status.GOOD, (r.status, r.resp.sense and r.sense.summary())
        return r.data

    def check(self, cdb, key: int, asc: int, ascq: int = 0, **kw) -> Result:
        r = self.run(cdb, **kw)
        assert r.status == Status.CHECK_CONDITION, (r.status, r.data[:16])
        assert r.triple == (key, asc, ascq), r.sense.summary()
        return r

    # -- shorthands --------------------------------------------------------
    def write(self, data: bytes, **kw) -> Result:
        return self.run(LT.write6(len(data)), data=data, **kw)

    def write_fixed(self, data: bytes, bl: int) -> Result:
        return self.run(LT.write6(len(data) // bl, fixed=True), data=data)

    def read(self, n: int, *, sili: bool = False) -> Result:
        return self.run(LT.read6(n, sili=sili), length=n)

    def wfm(self, n: int = 1) -> bytes:
        return self.ok(bytes([0x10, 0]) + n.to_bytes(3, "big") + b"\x00")

    def rewind(self) -> bytes:
        return self.ok(bytes([0x01, 0, 0, 0, 0, 0]))

    def position(self) -> LT.ReadPositionLong:
        return LT.ReadPositionLong.unpack(self.ok(bytes([0x34, 6, 0, 0, 0, 0, 0, 0, 32, 0]),
                                                  length=32))

    def set_block_length(self, bl: int) -> None:
        bd = bytes([0x80, 0, 0, 0, 0]) + bl.to_bytes(3, "big")
        self.ok(bytes([0x15, 0x10, 0, 0, 12, 0]), data=bytes([0, 0, 0x10, 8]) + bd)


def blob(n: int) -> bytes:
    return os.urandom(n)
