"""Convenience SCSI commands on top of ``execute()``, shared by the async client
(and, through it, the sync wrapper).  Block commands use the 16-byte CDBs so
that any LBA and length fit."""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

from ..scsi.command import Status
from ..scsi.sense import SenseKey
from . import cdb as cdbs
from .results import ScsiResult

log = logging.getLogger("scsi_target.initiator.client")


class ScsiConveniences:
    lun: int
    _block_size: int | None

    # ``execute`` comes from the class this is mixed into (IscsiClient); the
    # conveniences below are written against it.
    execute: Callable[..., Awaitable[ScsiResult]]

    # These raise ScsiCheckCondition/ScsiCommandError for non-GOOD status.  A UNIT
    # ATTENTION (power on, reset, parameters changed...) reports an event, not a failure
    # of the command, so they repeat the command a few times, as the OS midlayers do.
    UA_RETRIES = 3

    async def _run(self, cdb: bytes, *, lun: int | None = None, read_length: int = 0,
                   data_out=None) -> ScsiResult:
        for _ in range(self.UA_RETRIES):
            r = await self.execute(cdb, lun=lun, read_length=read_length, data_out=data_out)
            if not (r.status == Status.CHECK_CONDITION and r.sense_key == SenseKey.UNIT_ATTENTION):
                break
            log.info("unit attention %02x/%02x, repeating the command", r.asc or 0, r.ascq or 0)
        return r.raise_for_status()

    async def test_unit_ready(self, lun: int | None = None) -> ScsiResult:
        return await self._run(cdbs.test_unit_ready(), lun=lun)

    async def inquiry(self, evpd: bool = False, page: int = 0, alloc: int = 255,
                      lun: int | None = None) -> bytes:
        r = await self._run(cdbs.inquiry(evpd, page, alloc), read_length=alloc, lun=lun)
        return bytes(r.data)

    async def read_capacity16(self, lun: int | None = None) -> cdbs.Capacity:
        r = await self._run(cdbs.read_capacity16(32), read_length=32, lun=lun)
        cap = cdbs.parse_read_capacity16(bytes(r.data))
        if lun is None or lun == self.lun:
            self._block_size = cap.block_size
        return cap

    async def report_luns(self) -> list[int]:
        r = await self._run(cdbs.report_luns(4096), read_length=4096, lun=0)
        return cdbs.parse_report_luns(bytes(r.data))

    async def block_size(self) -> int:
        if self._block_size is None:
            await self.read_capacity16()
        return self._block_size  # type: ignore[return-value]

    async def read(self, lba: int, blocks: int, *, fua: bool = False) -> bytearray:
        bs = await self.block_size()
        r = await self._run(cdbs.read16(lba, blocks, fua=fua), read_length=blocks * bs)
        return r.data  # type: ignore[return-value]

    async def write(self, lba: int, data, *, fua: bool = False) -> ScsiResult:
        bs = await self.block_size()
        if len(data) % bs:
            raise ValueError(f"write of {len(data)} bytes is not a multiple of {bs}")
        return await self._run(cdbs.write16(lba, len(data) // bs, fua=fua), data_out=data)
