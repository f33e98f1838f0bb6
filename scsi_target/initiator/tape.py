"""A tape LUN over iSCSI as a :class:`tape.backupset.TapeDevice`: SSC commands through our initiator.

Variable-block WRITE(6)/READ(6) (one record per command), WRITE FILEMARKS(6),
LOCATE(16) to a logical file, SPACE(6) and READ POSITION (long form).  The
conditions SSC reports with CHECK CONDITION that are not failures -- early
warning on a write (NO SENSE, EOM, 00/02), a filemark or end-of-data on a
read (00/01, BLANK CHECK 00/05) -- come back as values; anything else
raises :class:`TapeCommandError` with the decoded sense.
"""
from __future__ import annotations

from ..scsi.layouts import tape as LT
from ..scsi.sense import SenseKey
from .sync import SyncIscsiClient
from .url import parse_url

_RP_LONG = bytes([0x34, LT.RP_LONG, 0, 0, 0, 0, 0, 0, 0, 0])


class TapeCommandError(Exception):
    """A tape command failed (sense decoded in the message)."""


def _eom(sense: bytes) -> bool:
    if len(sense) > 2 and sense[0] & 0x7F in (0x70, 0x71):
        return bool(sense[2] & 0x40)
    # Descriptor format: the stream commands descriptor (04h) carries EOM.
    i = 8
    while i + 1 < len(sense):
        if sense[i] == 0x04 and i + 3 < len(sense):
            return bool(sense[i + 3] & 0x40)
        i += 2 + sense[i + 1]
    return False


class RemoteTape:
    def __init__(self, url: str, *, initiator_name: str | None = None,
                 client: SyncIscsiClient | None = None) -> None:
        self.name = url
        self.lun = parse_url(url).lun
        self.c = client or SyncIscsiClient(url, initiator_name=initiator_name)
        try:
            inq = self.c.inquiry(lun=self.lun)
            if inq[0] & 0x1F != 0x01:
                raise TapeCommandError(f"{url} is not a tape LUN (peripheral device type "
                                       f"{inq[0] & 0x1F:02x}h)")
            for _ in range(3):               # a fresh session's unit attentions
                if self.c.test_unit_ready(lun=self.lun).good:
                    break
            self._run(bytes(6), "TEST UNIT READY")
            bl = LT.BlockLimitsData.unpack(self._run(bytes([0x05, 0, 0, 0, 0, 0]),
                                                     "READ BLOCK LIMITS", read=6).data)
            self.max_record = bl.max_block_length
        except BaseException:
            if client is None:
                self.c.close()
            raise

    def _exec(self, cdb: bytes, *, read: int = 0, data=None):
        return self.c.execute(cdb, lun=self.lun, read_length=read, data_out=data)

    def _run(self, cdb: bytes, what: str, *, read: int = 0, data=None):
        r = self._exec(cdb, read=read, data=data)
        if r.response != 0 or r.status != 0:
            raise self._error(r, what)
        return r

    def _error(self, r, what: str) -> TapeCommandError:
        key = r.sense_key.name if r.sense_key is not None else f"status {r.status:02x}h"
        asc = f" {r.asc:02x}/{r.ascq:02x}" if r.asc is not None else ""
        return TapeCommandError(f"{self.name}: {what} failed: {key}{asc}")

    # ------------------------------------------------------------ positions
    def position(self) -> LT.ReadPositionLong:
        return LT.ReadPositionLong.unpack(self._run(_RP_LONG, "READ POSITION", read=32).data)

    def rewind(self) -> None:
        self._run(bytes([0x01, 0, 0, 0, 0, 0]), "REWIND")

    def to_eod(self) -> None:
        self._run(bytes([0x11, 0x03, 0, 0, 0, 0]), "SPACE to end-of-data")

    def file_number(self) -> int:
        return self.position().logical_file

    def locate_file(self, n: int) -> bool:
        r = self._exec(LT.locate16_file(n))
        if r.status == 0:
            return not self._at_eod()
        if r.sense_key == SenseKey.BLANK_CHECK:
            return False
        raise self._error(r, f"LOCATE to file {n}")

    def _at_eod(self) -> bool:
        # A READ that finds end-of-data does not move; anything else is undone.
        r = self._exec(LT.read6(1, sili=True), read=1)
        if r.sense_key == SenseKey.BLANK_CHECK:
            return True
        self._space(0, -1) if not (r.status and r.asc == 0 and r.ascq == 1) else \
            self._space(1, -1)
        return False

    def _space(self, code: int, count: int) -> bool:
        """SPACE(6); False when it stopped early (filemark, BOP, EOD)."""
        cdb = bytes([0x11, code]) + (count & 0xFFFFFF).to_bytes(3, "big") + b"\0"
        r = self._exec(cdb)
        if r.status == 0:
            return True
        if r.sense_key in (SenseKey.NO_SENSE, SenseKey.BLANK_CHECK):
            return False
        raise self._error(r, "SPACE")

    def last_record_of_file(self, n: int, max_length: int):
        self.locate_file(n + 1)
        if self.file_number() > n:
            self._space(1, -1)                   # onto the filemark ending file n
        if not self._space(0, -1):
            return None
        return self.read_record(max_length)

    # ----------------------------------------------------------- transfers
    def write(self, records: list) -> tuple[int, bool, bool]:
        n = 0
        for rec in records:
            r = self._exec(LT.write6(len(rec)), data=rec)
            if r.status == 0:
                n += 1
                continue
            if r.sense_key == SenseKey.VOLUME_OVERFLOW:
                return n, True, True
            if r.sense_key == SenseKey.NO_SENSE and (_eom(r.sense) or
                                                     (r.asc, r.ascq) == (0, 2)):
                return n + 1, True, False      # written; early warning
            raise self._error(r, "WRITE(6)")
        return n, False, False

    def write_filemark(self) -> bool:
        r = self._exec(bytes([0x10, 0, 0, 0, 1, 0]))
        if r.status == 0:
            return False
        if r.sense_key == SenseKey.NO_SENSE and (_eom(r.sense) or (r.asc, r.ascq) == (0, 2)):
            return True
        raise self._error(r, "WRITE FILEMARKS(6)")

    def read_record(self, max_length: int):
        length = min(max_length, self.max_record or max_length, 0xFFFFFF)
        r = self._exec(LT.read6(length, sili=True), read=length)
        if r.status == 0:
            return memoryview(r.data)
        if r.sense_key == SenseKey.BLANK_CHECK or (r.sense_key == SenseKey.NO_SENSE and
                                                   (r.asc, r.ascq) in ((0, 1), (0, 5))):
            return None
        if r.sense_key == SenseKey.NO_SENSE and r.sense and r.sense[2] & 0x20:
            raise TapeCommandError(f"{self.name}: a record is longer than {length} bytes")
        raise self._error(r, "READ(6)")

    def close(self) -> None:
        self.c.close()
