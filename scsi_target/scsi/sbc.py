"""SBC-3/4 block commands for disk LUs (command set ``SBC``).

Every handler reaches the medium only through ``lu.store`` (read, write,
write_zeroes, discard, flush, allocation), so a store wrapper (the difference
tracker, volume/tracked.py) sees every change.

Check order for medium commands, chosen so each libiscsi expectation holds:
CDB field syntax (PROTECT fields, reserved combinations) -> write protection ->
LBA range -> transfer limits -> data-out.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from volume.buffers import READ_BUFFERS
from volume.store import (StoreError, StoreFenced, StoreNoSpace, StoreOutOfRange, StoreTimeout,
                          byte_view)

from . import cdb as C
from . import sense as S
from .command import Command, Deferred, Direction
from .dispatch import CommandSet, Conflict, data_out
from .layouts import capacity as LC

if TYPE_CHECKING:  # pragma: no cover
    from .disk import DiskLU

SBC = CommandSet("SBC")
# UNMAP alone: only thin (or read-only) disks stack it (devices.py).
SBC_UNMAP = CommandSet("SBC-UNMAP")

_PATTERN_CHUNK = 1 << 20   # bytes of repeated pattern built per WRITE SAME step
_MAX_LBA_STATUS_DESCRIPTORS = 1024

# Provisioning status in GET LBA STATUS descriptors.
_MAPPED, _DEALLOCATED = 0, 1


# -- shared checks -------------------------------------------------------
def _write_protected(lu: "DiskLU") -> bool:
    return lu.read_only or lu.mode.software_write_protect


def _check_writable(lu: "DiskLU") -> None:
    if _write_protected(lu):
        raise S.write_protected()


def _check_protect(cdb: bytes) -> None:
    # No protection information: any non-zero PROTECT field is refused.
    if C.protect(cdb):
        raise S.invalid_cdb_field(1, 7)


def _check_range(lu: "DiskLU", lba: int, nblocks: int) -> None:
    if lba > lu.num_blocks or lba + nblocks > lu.num_blocks:
        raise S.lba_out_of_range()


def _check_transfer(lu: "DiskLU", nblocks: int, field: int) -> None:
    if nblocks > lu.limits.max_transfer_blocks:
        raise S.invalid_cdb_field(field)


def store_sense(exc: StoreError, write: bool) -> S.SenseError:
    """A store's error as sense data: the one mapping for every disk command.

    * timeout (a network store's OSD/monitor did not answer): ABORTED COMMAND,
      LOGICAL UNIT COMMUNICATION TIME-OUT (08h/01h) -- initiators retry it;
    * no space (a full pool or quota): DATA PROTECT, SPACE ALLOCATION FAILED
      WRITE PROTECT (27h/07h), the thin-provisioning out-of-space answer;
    * fenced (lock lost, client blocklisted): NOT READY, LOGICAL UNIT NOT
      ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE (04h/0Ch), which sends a
      multipath initiator to another path (the target now holding the lock);
    * out of range (a tracked image shrunk under the LU, which keeps its size):
      ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE (21h/00h);
    * anything else: MEDIUM ERROR, UNRECOVERED READ ERROR / WRITE ERROR.
    """
    if isinstance(exc, StoreTimeout):
        return S.SenseError(S.SenseKey.ABORTED_COMMAND, S.LOGICAL_UNIT_COMMUNICATION_TIMEOUT)
    if isinstance(exc, StoreNoSpace):
        return S.SenseError(S.SenseKey.DATA_PROTECT, S.SPACE_ALLOCATION_FAILED_WRITE_PROTECT)
    if isinstance(exc, StoreFenced):
        return S.SenseError(S.SenseKey.NOT_READY, S.LU_NOT_ACCESSIBLE_TARGET_PORT_UNAVAILABLE)
    if isinstance(exc, StoreOutOfRange):
        return S.SenseError(S.SenseKey.ILLEGAL_REQUEST, S.LBA_OUT_OF_RANGE)
    return S.SenseError(S.SenseKey.MEDIUM_ERROR, S.WRITE_ERROR if write
                        else S.UNRECOVERED_READ_ERROR)


def _read_error(exc: StoreError) -> S.SenseError:
    return store_sense(exc, False)


def _write_error(exc: StoreError) -> S.SenseError:
    return store_sense(exc, True)


def _read_blocks(lu: "DiskLU", lba: int, nblocks: int) -> bytearray:
    buf = bytearray(nblocks * lu.block_size)
    try:
        lu.store.readinto(lba * lu.block_size, memoryview(buf))
    except StoreError as exc:
        raise _read_error(exc) from exc
    return buf


def _write_blocks(lu: "DiskLU", lba: int, data, fua: bool) -> None:
    try:
        if len(data):
            lu.store.write(lba * lu.block_size, data)
        if fua:
            lu.store.flush()
    except StoreError as exc:
        raise _write_error(exc) from exc


def _flush(lu: "DiskLU") -> None:
    try:
        lu.store.flush()
    except StoreError as exc:
        raise _write_error(exc) from exc


def _block_payload(lu: "DiskLU", cmd: Command, nblocks: int) -> memoryview:
    """Data-out for a block write: whole blocks, as many as the initiator sent.

    When the transport's expected length is shorter than the CDB's transfer
    length, the command writes only the whole blocks that arrived and ends GOOD
    with an overflow residual (what libiscsi's iSCSIResiduals tests demand).
    Callers without an expected length must send everything.
    """
    need = nblocks * lu.block_size
    if cmd.expected_length is None:
        return data_out(cmd, need)
    cmd.needed = need
    mv = byte_view(cmd.data_out)
    expected = min(need, cmd.expected_length)
    if len(mv) < expected:
        # The front end promised more data than it delivered: never report a
        # write of blocks that were not received.
        raise S.SenseError(S.SenseKey.ILLEGAL_REQUEST, S.INVALID_FIELD_IN_INFORMATION_UNIT)
    avail = expected - expected % lu.block_size
    return mv[:avail]


def _first_difference(a: memoryview, b: memoryview) -> int:
    """Index of the first differing byte of equal-length buffers, or -1.

    Bisects with whole-slice comparisons (memcmp speed), never byte by byte.
    """
    if a == b:
        return -1
    lo, hi = 0, len(a)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] != b[lo:mid]:
            hi = mid
        else:
            lo = mid
    return lo


def _compare(expected: memoryview, actual: memoryview) -> None:
    pos = _first_difference(expected, actual)
    if pos >= 0:
        raise S.miscompare(pos)


def _usage(*octets: int) -> bytes:
    return bytes(octets)


_FF4 = (0xFF,) * 4
_FF8 = (0xFF,) * 8


# -- READ ------------------------------------------------------------------
def _do_read(lu: "DiskLU", cmd: Command, lba: int, nblocks: int, field: int):
    _check_range(lu, lba, nblocks)
    _check_transfer(lu, nblocks, field)
    if nblocks == 0:
        return b""
    # FUA on a read asks for medium data; we have no cache, so nothing to do.
    # The buffer comes from the read pool; the front end gives it back once sent.
    buf = READ_BUFFERS.get(nblocks * lu.block_size)
    try:
        lu.store.readinto(lba * lu.block_size, buf)
    except StoreError as exc:
        raise _read_error(exc) from exc
    return buf


@SBC.command(0x08, "READ(6)", 6, direction=Direction.IN, conflict=Conflict.READ,
             usage=_usage(0x08, 0x1F, 0xFF, 0xFF, 0xFF, 0x00))
def read6(lu: "DiskLU", cmd: Command):
    lba, n = C.rw6(cmd.cdb)
    return _do_read(lu, cmd, lba, n, 4)


def _read_n(size: int):
    def handler(lu: "DiskLU", cmd: Command):
        C.need(cmd.cdb, size)
        _check_protect(cmd.cdb)
        lba, n = C.lba_len(cmd.cdb, size)
        return _do_read(lu, cmd, lba, n, C.length_field(size))
    return handler


# -- fast path ---------------------------------------------------------------
# READ/WRITE(10/16), almost every command a running initiator sends, in their
# plain form: the handlers above minus the decoding and checks whose outcome is
# known.  LogicalUnit.execute calls them only while nothing can refuse the
# command before its handler (no unit attention, no reservation, LU ready); each
# returns None, before any side effect, for anything but a command the general
# path would carry out by the same steps, and the general path answers it
# (tests/test_sbc_fast_path.py runs a CDB corpus through both).
_BIDI, _NONE, _OUT = Direction.BIDI, Direction.NONE, Direction.OUT
# The CONTROL byte's NACA and LINK bits (dispatch.check_cdb refuses either).
_NACA_LINK = 0x05
_PROTECT = 0xE0


def _fast_lba_len(cdb: bytes, size: int) -> tuple[int, int]:
    if size == 10:
        return int.from_bytes(cdb[2:6], "big"), (cdb[7] << 8) | cdb[8]
    return int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big")


def _plain_read(lu: "DiskLU", cmd: Command, size: int) -> tuple[int, int] | None:
    """(lba, blocks) of a READ the fast path may carry out, else None."""
    cdb = cmd.cdb
    if len(cdb) < size or cdb[size - 1] & _NACA_LINK or cdb[1] & _PROTECT \
            or cmd.direction == _BIDI:
        return None
    lba, n = _fast_lba_len(cdb, size)
    if not n or lba + n > lu.num_blocks or n > lu.limits.max_transfer_blocks:
        return None
    return lba, n


def _plain_write(lu: "DiskLU", cmd: Command, size: int) -> tuple[int, memoryview] | None:
    """(lba, data) of a WRITE the fast path may carry out, else None."""
    cdb = cmd.cdb
    if len(cdb) < size or cdb[size - 1] & _NACA_LINK or cdb[1] & _PROTECT:
        return None
    direction = cmd.direction
    if direction != _OUT and direction != _NONE:
        return None
    if lu.read_only or lu.mode.software_write_protect:
        return None
    lba, n = _fast_lba_len(cdb, size)
    if not n or lba + n > lu.num_blocks or n > lu.limits.max_transfer_blocks:
        return None
    need = n * lu.block_size
    data = cmd.data_out
    if cmd.expected_length != need or data is None or len(data) != need:
        return None   # residuals and short data: the general path's business
    mv = byte_view(data)
    if len(mv) != need:
        return None
    cmd.needed = need
    return lba, mv


def _fast_read(size: int):
    def fast(lu: "DiskLU", cmd: Command):
        plain = _plain_read(lu, cmd, size)
        if plain is None:
            return None
        lba, n = plain
        bs = lu.block_size
        store = lu.store
        if store.lends:
            try:
                lent = store.lend(lba * bs, n * bs)
            except StoreError as exc:
                return lu._check_condition(cmd, _read_error(exc))
            if lent is not None:
                # The store's own buffer, not the pool's: given back through its release.
                return lu._good(cmd, lent[0], lent[1])
        buf = READ_BUFFERS.get(n * bs)
        try:
            store.readinto(lba * bs, buf)
        except StoreError as exc:
            return lu._check_condition(cmd, _read_error(exc))
        return lu._good(cmd, buf)
    return fast


def _fast_write(size: int):
    def fast(lu: "DiskLU", cmd: Command):
        plain = _plain_write(lu, cmd, size)
        if plain is None:
            return None
        lba, mv = plain
        try:
            with lu.lock:
                lu.store.write(lba * lu.block_size, mv)
                if cmd.cdb[1] & 0x08:   # FUA
                    lu.store.flush()
        except StoreError as exc:
            return lu._check_condition(cmd, _write_error(exc))
        return lu._good(cmd, None)
    return fast


# -- asynchronous fast path ------------------------------------------------------
# The same plain READ/WRITE(10/16) on a store with submit_read/submit_write
# (volume/rbdstore.py): the I/O is submitted and the command answered from the
# store's completion, on whichever thread that runs.  Returns a Deferred, a
# Response (refused at submission), or None (not plain: the LU's worker lane
# runs the general path).
def _async_io(size: int, plain, start, error):
    """The asynchronous handler of one opcode: ``plain(lu, cmd, size)`` picks the
    command apart (None: not plain), ``start(lu, cmd, parsed, finish)`` submits the
    I/O with ``finish(err, data)`` as its completion, ``error`` maps a store error."""
    def submit(lu: "DiskLU", cmd: Command):
        parsed = plain(lu, cmd, size)
        if parsed is None:
            return None
        deferred = Deferred()

        def finish(err, data=None) -> None:
            deferred.complete(lu._good(cmd, data) if err is None
                              else lu._check_condition(cmd, error(err)))
        try:
            start(lu, cmd, parsed, finish)
        except StoreError as exc:
            return lu._check_condition(cmd, error(exc))
        return deferred
    return submit


def _start_read(lu: "DiskLU", cmd: Command, parsed, finish) -> None:
    lba, n = parsed
    bs = lu.block_size
    lu.store.submit_read(lba * bs, n * bs, lambda data, err: finish(err, data))


def _start_write(lu: "DiskLU", cmd: Command, parsed, finish) -> None:
    lba, mv = parsed
    lu.store.submit_write(lba * lu.block_size, mv, finish, fua=bool(cmd.cdb[1] & 0x08))


def _async_read(size: int):
    return _async_io(size, _plain_read, _start_read, _read_error)


def _async_write(size: int):
    return _async_io(size, _plain_write, _start_write, _write_error)


# Opcode -> asynchronous fast handler (DiskLU over an asynchronous store).
ASYNC_FAST = {0x28: _async_read(10), 0x88: _async_read(16),
              0x2A: _async_write(10), 0x8A: _async_write(16)}


SBC.command(0x28, "READ(10)", 10, direction=Direction.IN, conflict=Conflict.READ,
            usage=_usage(0x28, 0x18, *_FF4, 0x00, 0xFF, 0xFF, 0x00),
            fast=_fast_read(10))(_read_n(10))
SBC.command(0xA8, "READ(12)", 12, direction=Direction.IN, conflict=Conflict.READ,
            usage=_usage(0xA8, 0x18, *_FF4, *_FF4, 0x00, 0x00))(_read_n(12))
SBC.command(0x88, "READ(16)", 16, direction=Direction.IN, conflict=Conflict.READ,
            usage=_usage(0x88, 0x18, *_FF8, *_FF4, 0x00, 0x00),
            fast=_fast_read(16))(_read_n(16))


# -- WRITE -----------------------------------------------------------------
def _do_write(lu: "DiskLU", cmd: Command, lba: int, nblocks: int, field: int,
              fua: bool) -> None:
    _check_writable(lu)
    _check_range(lu, lba, nblocks)
    _check_transfer(lu, nblocks, field)
    payload = _block_payload(lu, cmd, nblocks)
    with lu.lock:
        _write_blocks(lu, lba, payload, fua)


@SBC.command(0x0A, "WRITE(6)", 6, direction=Direction.OUT, conflict=Conflict.WRITE,
             usage=_usage(0x0A, 0x1F, 0xFF, 0xFF, 0xFF, 0x00))
def write6(lu: "DiskLU", cmd: Command) -> None:
    lba, n = C.rw6(cmd.cdb)
    _do_write(lu, cmd, lba, n, 4, False)


def _write_n(size: int):
    def handler(lu: "DiskLU", cmd: Command) -> None:
        C.need(cmd.cdb, size)
        _check_protect(cmd.cdb)
        lba, n = C.lba_len(cmd.cdb, size)
        _do_write(lu, cmd, lba, n, C.length_field(size), C.fua(cmd.cdb))
    return handler


SBC.command(0x2A, "WRITE(10)", 10, direction=Direction.OUT, conflict=Conflict.WRITE,
            usage=_usage(0x2A, 0x18, *_FF4, 0x00, 0xFF, 0xFF, 0x00),
            fast=_fast_write(10))(_write_n(10))
SBC.command(0xAA, "WRITE(12)", 12, direction=Direction.OUT, conflict=Conflict.WRITE,
            usage=_usage(0xAA, 0x18, *_FF4, *_FF4, 0x00, 0x00))(_write_n(12))
SBC.command(0x8A, "WRITE(16)", 16, direction=Direction.OUT, conflict=Conflict.WRITE,
            usage=_usage(0x8A, 0x18, *_FF8, *_FF4, 0x00, 0x00),
            fast=_fast_write(16))(_write_n(16))


# -- VERIFY / WRITE AND VERIFY -------------------------------------------------
def _verify_medium(lu: "DiskLU", lba: int, nblocks: int) -> None:
    bs = lu.block_size
    step = max(1, _PATTERN_CHUNK // bs)
    scratch = memoryview(bytearray(min(nblocks, step) * bs))
    done = 0
    try:
        while done < nblocks:   # one iteration per MiB, not per block
            k = min(step, nblocks - done)
            lu.store.readinto((lba + done) * bs, scratch[:k * bs])
            done += k
    except StoreError as exc:
        raise _read_error(exc) from exc


def _verify_n(size: int):
    def handler(lu: "DiskLU", cmd: Command) -> None:
        cdb = cmd.cdb
        C.need(cdb, size)
        _check_protect(cdb)
        bytchk = (cdb[1] >> 1) & 0x03
        if bytchk == 0x02:
            raise S.invalid_cdb_field(1, 2)
        lba, n = C.lba_len(cdb, size)
        _check_range(lu, lba, n)
        _check_transfer(lu, n, C.length_field(size))
        if bytchk == 0:
            # Medium verification: read the range so a failing medium (or an
            # injected fault) surfaces as MEDIUM ERROR; nothing is transferred.
            cmd.needed = 0
            _verify_medium(lu, lba, n)
            return None
        bs = lu.block_size
        if n == 0:
            cmd.needed = 0
            return None
        if bytchk == 0x01:
            expected = data_out(cmd, n * bs)
        else:  # 11b: one block compared against every block of the range
            expected = memoryview(bytes(data_out(cmd, bs)) * n)
        actual = memoryview(_read_blocks(lu, lba, n))
        _compare(expected, actual)
        return None
    return handler


SBC.command(0x2F, "VERIFY(10)", 10, direction=Direction.OUT, conflict=Conflict.READ,
            usage=_usage(0x2F, 0x16, *_FF4, 0x00, 0xFF, 0xFF, 0x00))(_verify_n(10))
SBC.command(0xAF, "VERIFY(12)", 12, direction=Direction.OUT, conflict=Conflict.READ,
            usage=_usage(0xAF, 0x16, *_FF4, *_FF4, 0x00, 0x00))(_verify_n(12))
SBC.command(0x8F, "VERIFY(16)", 16, direction=Direction.OUT, conflict=Conflict.READ,
            usage=_usage(0x8F, 0x16, *_FF8, *_FF4, 0x00, 0x00))(_verify_n(16))


def _write_verify_n(size: int):
    def handler(lu: "DiskLU", cmd: Command) -> None:
        cdb = cmd.cdb
        C.need(cdb, size)
        _check_protect(cdb)
        bytchk = (cdb[1] >> 1) & 0x03
        if bytchk & 0x02:
            raise S.invalid_cdb_field(1, 2)
        lba, n = C.lba_len(cdb, size)
        _check_writable(lu)
        _check_range(lu, lba, n)
        _check_transfer(lu, n, C.length_field(size))
        payload = _block_payload(lu, cmd, n)
        with lu.lock:
            # The verification makes the data durable first, then reads it back.
            _write_blocks(lu, lba, payload, True)
            if bytchk and len(payload):
                actual = memoryview(_read_blocks(lu, lba, len(payload) // lu.block_size))
                _compare(payload, actual)
    return handler


SBC.command(0x2E, "WRITE AND VERIFY(10)", 10, direction=Direction.OUT, conflict=Conflict.WRITE,
            usage=_usage(0x2E, 0x12, *_FF4, 0x00, 0xFF, 0xFF, 0x00))(_write_verify_n(10))
SBC.command(0xAE, "WRITE AND VERIFY(12)", 12, direction=Direction.OUT, conflict=Conflict.WRITE,
            usage=_usage(0xAE, 0x12, *_FF4, *_FF4, 0x00, 0x00))(_write_verify_n(12))
SBC.command(0x8E, "WRITE AND VERIFY(16)", 16, direction=Direction.OUT, conflict=Conflict.WRITE,
            usage=_usage(0x8E, 0x12, *_FF8, *_FF4, 0x00, 0x00))(_write_verify_n(16))


# -- WRITE SAME ------------------------------------------------------------------
def _write_same(lu: "DiskLU", cmd: Command, lba: int, n: int, field: int) -> None:
    cdb = cmd.cdb
    _check_protect(cdb)
    anchor = bool(cdb[1] & 0x10)
    unmap = bool(cdb[1] & 0x08)
    ndob = len(cdb) >= 16 and bool(cdb[1] & 0x01)
    if anchor and (not unmap or not lu.provisioning.anc_sup):
        raise S.invalid_cdb_field(1, 4)
    _check_writable(lu)
    if unmap and not lu.provisioning.thin:
        raise S.invalid_cdb_field(1, 3)
    _check_range(lu, lba, n)
    if n == 0 and lu.limits.write_same_non_zero:
        raise S.invalid_cdb_field(field)
    if n == 0:
        # WSNZ=0: to the end of the medium.  The initiator named the whole
        # range explicitly, so MAXIMUM WRITE SAME LENGTH does not apply.
        n = lu.num_blocks - lba
    elif lu.limits.max_write_same_blocks and n > lu.limits.max_write_same_blocks:
        raise S.invalid_cdb_field(field)
    bs = lu.block_size
    if ndob:
        cmd.needed = 0
        block = None
    else:
        if cmd.expected_length is not None and cmd.expected_length > bs:
            cmd.needed = bs
            raise S.invalid_cdb_field(field)
        block = data_out(cmd, bs)
    offset, length = lba * bs, n * bs
    with lu.lock:
        try:
            if unmap:
                # LBPRZ=1: deallocated blocks read back as zeroes.
                lu.store.discard(offset, length)
            elif block is None or not any(block):
                lu.store.write_zeroes(offset, length)
            else:
                per = max(1, min(n, _PATTERN_CHUNK // bs))
                pattern = memoryview(bytes(block) * per)
                done = 0
                while done < n:
                    k = min(per, n - done)
                    lu.store.write(offset + done * bs, pattern[:k * bs])
                    done += k
        except StoreError as exc:
            raise _write_error(exc) from exc


@SBC.command(0x41, "WRITE SAME(10)", 10, direction=Direction.OUT, conflict=Conflict.WRITE,
             usage=_usage(0x41, 0x18, *_FF4, 0x00, 0xFF, 0xFF, 0x00))
def write_same10(lu: "DiskLU", cmd: Command) -> None:
    lba, n = C.lba_len10(cmd.cdb)
    _write_same(lu, cmd, lba, n, 7)


@SBC.command(0x93, "WRITE SAME(16)", 16, direction=Direction.OUT, conflict=Conflict.WRITE,
             usage=_usage(0x93, 0x19, *_FF8, *_FF4, 0x00, 0x00))
def write_same16(lu: "DiskLU", cmd: Command) -> None:
    lba, n = C.lba_len16(cmd.cdb)
    _write_same(lu, cmd, lba, n, 10)


# -- UNMAP -------------------------------------------------------------------------
@SBC_UNMAP.command(0x42, "UNMAP", 10, direction=Direction.OUT, conflict=Conflict.WRITE,
             usage=_usage(0x42, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x00))
def unmap(lu: "DiskLU", cmd: Command) -> None:
    cdb = cmd.cdb
    C.need(cdb, 10)
    # Write protection first, as for WRITE SAME with UNMAP: a read-only LU is
    # never thin (nothing to punch), yet UNMAP must report WRITE PROTECTED there
    # (libiscsi ReadOnly.ReadOnlySBC otherwise stops at "not implemented").
    _check_writable(lu)
    if cdb[1] & 0x01 and not lu.provisioning.anc_sup:
        raise S.invalid_cdb_field(1, 0)
    plen = C.be(cdb, 7, 9)
    if plen == 0:
        cmd.needed = 0
        return
    if plen < 8:
        raise S.illegal_request(S.PARAMETER_LIST_LENGTH_ERROR, 7)
    params = data_out(cmd, plen)
    bddl = C.be(params, 2, 4)
    # A trailing partial descriptor is ignored (SBC-3 5.28.2).
    count = min(bddl, plen - 8) // 16
    if count > lu.limits.max_unmap_descriptors:
        raise S.invalid_param_field(2)
    extents = []
    total = 0
    for i in range(count):  # bounded by max_unmap_descriptors
        lba, n = struct.unpack_from(">QI", params, 8 + 16 * i)
        _check_range(lu, lba, n)
        total += n
        if n:
            extents.append((lba, n))
    if total > lu.limits.max_unmap_blocks:
        raise S.invalid_param_field(8 + 8)
    bs = lu.block_size
    with lu.lock:
        try:
            for lba, n in extents:
                lu.store.discard(lba * bs, n * bs)
        except StoreError as exc:
            raise _write_error(exc) from exc


# -- COMPARE AND WRITE / ORWRITE / WRITE ATOMIC ---------------------------------------
@SBC.command(0x89, "COMPARE AND WRITE", 16, direction=Direction.OUT, conflict=Conflict.WRITE,
             usage=_usage(0x89, 0x18, *_FF8, 0x00, 0x00, 0x00, 0xFF, 0x00, 0x00))
def compare_and_write(lu: "DiskLU", cmd: Command) -> None:
    cdb = cmd.cdb
    C.need(cdb, 16)
    _check_protect(cdb)
    lba, n = C.be(cdb, 2, 10), cdb[13]
    _check_writable(lu)
    bs = lu.block_size
    if n > lu.limits.max_compare_blocks:
        raise S.invalid_cdb_field(13)
    edtl = cmd.expected_length
    if edtl is not None and edtl > 2 * lu.limits.max_compare_blocks * bs:
        # More data announced than any COMPARE AND WRITE may carry: the CDB's
        # length field cannot be what the initiator meant.
        raise S.invalid_cdb_field(13)
    _check_range(lu, lba, n)
    if n == 0:
        cmd.needed = 0
        return
    if edtl is not None and edtl > 2 * n * bs:
        cmd.needed = 2 * n * bs
        raise S.invalid_cdb_field(13)
    data = data_out(cmd, 2 * n * bs)
    verify, new = data[:n * bs], data[n * bs:]
    with lu.lock:  # compare and write are one atomic operation
        _compare(verify, memoryview(_read_blocks(lu, lba, n)))
        _write_blocks(lu, lba, new, C.fua(cdb))


@SBC.command(0x8B, "ORWRITE(16)", 16, direction=Direction.OUT, conflict=Conflict.WRITE,
             usage=_usage(0x8B, 0x18, *_FF8, *_FF4, 0x00, 0x00))
def orwrite(lu: "DiskLU", cmd: Command) -> None:
    cdb = cmd.cdb
    C.need(cdb, 16)
    _check_protect(cdb)
    lba, n = C.lba_len16(cdb)
    _check_writable(lu)
    _check_range(lu, lba, n)
    _check_transfer(lu, n, 10)
    if n == 0:
        cmd.needed = 0
        return
    nbytes = n * lu.block_size
    data = data_out(cmd, nbytes)
    with lu.lock:
        old = _read_blocks(lu, lba, n)
        # One big-integer OR: C speed over the whole range, no per-block loop.
        merged = (int.from_bytes(old, "big") | int.from_bytes(data, "big")).to_bytes(nbytes, "big")
        _write_blocks(lu, lba, merged, C.fua(cdb))


@SBC.command(0x9C, "WRITE ATOMIC(16)", 16, direction=Direction.OUT, conflict=Conflict.WRITE,
             usage=_usage(0x9C, 0x18, *_FF8, 0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00))
def write_atomic16(lu: "DiskLU", cmd: Command) -> None:
    cdb = cmd.cdb
    C.need(cdb, 16)
    _check_protect(cdb)
    lba, n = C.be(cdb, 2, 10), C.be(cdb, 12, 14)
    _check_writable(lu)
    _check_range(lu, lba, n)
    if n == 0:
        cmd.needed = 0
        return
    if n > lu.limits.atomic_max_blocks:
        raise S.invalid_cdb_field(12)
    if lu.limits.atomic_alignment and lba % lu.limits.atomic_alignment:
        raise S.invalid_cdb_field(2)
    if lu.limits.atomic_granularity and n % lu.limits.atomic_granularity:
        raise S.invalid_cdb_field(12)
    data = data_out(cmd, n * lu.block_size)  # all or nothing: no partial payloads
    with lu.lock:
        _write_blocks(lu, lba, data, C.fua(cdb))


# -- capacity, status, cache -------------------------------------------------------
@SBC.command(0x25, "READ CAPACITY(10)", 10, direction=Direction.IN, conflict=Conflict.ALLOWED,
             usage=_usage(0x25, 0x00, *_FF4, 0x00, 0x00, 0x01, 0x00))
def read_capacity10(lu: "DiskLU", cmd: Command) -> bytes:
    cdb = cmd.cdb
    C.need(cdb, 10)
    if not cdb[8] & 0x01 and C.be(cdb, 2, 6):
        raise S.invalid_cdb_field(2)   # LBA given without PMI
    last = min(lu.num_blocks - 1, 0xFFFFFFFF)
    return LC.ReadCapacity10(last, lu.block_size).pack()


def read_capacity16_data(lu: "DiskLU") -> bytes:
    prov = lu.provisioning
    return LC.ReadCapacity16(lu.num_blocks - 1, lu.block_size, lbpme=prov.thin,
                             lbprz=prov.thin and prov.lbprz, lbppbe=lu.lbppbe).pack()


@SBC.command(0x9E, "READ CAPACITY(16)", 16, direction=Direction.IN, service_action=0x10,
             conflict=Conflict.ALLOWED,
             usage=_usage(0x9E, 0x10, *_FF8, *_FF4, 0x00, 0x00))
def read_capacity16(lu: "DiskLU", cmd: Command) -> bytes:
    C.need(cmd.cdb, 16)
    alloc = C.be(cmd.cdb, 10, 14)
    return read_capacity16_data(lu)[:alloc]


def _block_extents(lu: "DiskLU", lba: int, limit: int) -> list[tuple[int, int, int]]:
    """(lba, count, status) runs from ``lba`` on, at most ``limit`` of them.

    A block counts as deallocated only if the store reports all of its bytes
    deallocated; partial coverage stays mapped (false "mapped" is harmless).
    """
    bs = lu.block_size
    runs: list[list[int]] = []
    end_block = lu.num_blocks

    def add(start: int, stop: int, status: int) -> None:
        if stop <= start:
            return
        if runs and runs[-1][2] == status and runs[-1][0] + runs[-1][1] == start:
            runs[-1][1] += stop - start
        else:
            runs.append([start, stop - start, status])

    pos = lba
    try:
        for off, length, mapped in lu.store.allocation(lba * bs, (end_block - lba) * bs):
            if mapped:
                continue
            first = -(-off // bs)
            last = (off + length) // bs
            if last <= first:
                continue
            add(pos, first, _MAPPED)
            add(first, last, _DEALLOCATED)
            pos = last
            if len(runs) > limit:
                break
    except StoreError as exc:
        raise _read_error(exc) from exc
    if len(runs) <= limit:
        add(pos, end_block, _MAPPED)
    return [(a, b, c) for a, b, c in runs[:limit]]


def _get_lba_status(lu: "DiskLU", cmd: Command) -> bytes:
    C.need(cmd.cdb, 16)
    lba, alloc = C.be(cmd.cdb, 2, 10), C.be(cmd.cdb, 10, 14)
    if lba >= lu.num_blocks:
        raise S.lba_out_of_range()
    if alloc == 0:
        return b""
    limit = max(1, min(_MAX_LBA_STATUS_DESCRIPTORS, (alloc - 8) // 16))
    runs = _block_extents(lu, lba, limit)
    return LC.LbaStatus([LC.LbaStatusDescriptor(a, min(n, 0xFFFFFFFF), s)
                         for a, n, s in runs]).pack()[:alloc]


SBC.command(0x9E, "GET LBA STATUS", 16, direction=Direction.IN, service_action=0x12,
            conflict=Conflict.READ,
            usage=_usage(0x9E, 0x12, *_FF8, *_FF4, 0x00, 0x00))(_get_lba_status)


def _sync_cache(lu: "DiskLU", cmd: Command, lba: int, n: int) -> None:
    _check_range(lu, lba, n)
    _flush(lu)


@SBC.command(0x35, "SYNCHRONIZE CACHE(10)", 10, conflict=Conflict.WRITE,
             usage=_usage(0x35, 0x02, *_FF4, 0x00, 0xFF, 0xFF, 0x00))
def sync_cache10(lu: "DiskLU", cmd: Command) -> None:
    lba, n = C.lba_len10(cmd.cdb)
    _sync_cache(lu, cmd, lba, n)


@SBC.command(0x91, "SYNCHRONIZE CACHE(16)", 16, conflict=Conflict.WRITE,
             usage=_usage(0x91, 0x02, *_FF8, *_FF4, 0x00, 0x00))
def sync_cache16(lu: "DiskLU", cmd: Command) -> None:
    lba, n = C.lba_len16(cmd.cdb)
    _sync_cache(lu, cmd, lba, n)


def _prefetch(lu: "DiskLU", lba: int, n: int) -> None:
    # No cache to load: GOOD says "not all blocks fit in the cache" (SBC-3 5.8),
    # which is true of a cache of size zero.
    _check_range(lu, lba, n)


@SBC.command(0x34, "PRE-FETCH(10)", 10, conflict=Conflict.READ,
             usage=_usage(0x34, 0x02, *_FF4, 0x00, 0xFF, 0xFF, 0x00))
def prefetch10(lu: "DiskLU", cmd: Command) -> None:
    _prefetch(lu, *C.lba_len10(cmd.cdb))


@SBC.command(0x90, "PRE-FETCH(16)", 16, conflict=Conflict.READ,
             usage=_usage(0x90, 0x02, *_FF8, *_FF4, 0x00, 0x00))
def prefetch16(lu: "DiskLU", cmd: Command) -> None:
    _prefetch(lu, *C.lba_len16(cmd.cdb))


# -- defects, format -------------------------------------------------------------
@SBC.command(0x37, "READ DEFECT DATA(10)", 10, direction=Direction.IN, conflict=Conflict.READ,
             usage=_usage(0x37, 0x00, 0x1F, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x00))
def read_defect_data10(lu: "DiskLU", cmd: Command) -> bytes:
    C.need(cmd.cdb, 10)
    alloc = C.be(cmd.cdb, 7, 9)
    # A virtual medium has no defects: empty lists in the format asked for.
    return bytes([0, cmd.cdb[2] & 0x1F, 0, 0])[:alloc]


@SBC.command(0xB7, "READ DEFECT DATA(12)", 12, direction=Direction.IN, conflict=Conflict.READ,
             usage=_usage(0xB7, 0x1F, 0x00, 0x00, 0x00, 0x00, *_FF4, 0x00, 0x00))
def read_defect_data12(lu: "DiskLU", cmd: Command) -> bytes:
    C.need(cmd.cdb, 12)
    alloc = C.be(cmd.cdb, 6, 10)
    return bytes([0, cmd.cdb[1] & 0x1F, 0, 0, 0, 0, 0, 0])[:alloc]


@SBC.command(0x04, "FORMAT UNIT", 6, direction=Direction.OUT, conflict=Conflict.WRITE,
             usage=_usage(0x04, 0xF0, 0x00, 0x00, 0x00, 0x00))
def format_unit(lu: "DiskLU", cmd: Command) -> None:
    cdb = cmd.cdb
    C.need(cdb, 6)
    if cdb[1] & 0xC0:   # FMTPINFO: no protection information
        raise S.invalid_cdb_field(1, 7)
    _check_writable(lu)
    if not cdb[1] & 0x10:   # FMTDATA=0: nothing to change on a virtual medium
        cmd.needed = 0
        return
    long_list = bool(cdb[1] & 0x20)
    hdr = data_out(cmd, 8 if long_list else 4)
    defect_len = C.be(hdr, 4, 8) if long_list else C.be(hdr, 2, 4)
    if hdr[1] & 0x02 or defect_len:  # initialization pattern / defect list
        raise S.invalid_param_field(1 if hdr[1] & 0x02 else 2)
