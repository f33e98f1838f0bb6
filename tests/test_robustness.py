"""Abuse over real sockets: every malformed input gets a defined answer (Reject
with the right reason, a login failure, CHECK CONDITION, or a closed
connection), the server never crashes or hangs, another logged-in session
keeps being served, and memory stays bounded.

The initiator side is a deliberately small raw-socket iSCSI client written
here (not the project's initiator library), so PDUs can be broken at will.
"""
from __future__ import annotations

import os
import socket
import struct
import time

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import IQN_BASE
from scsi_target.testing.process import Lun, ServerProcess, Target
IQN = f"{IQN_BASE}:robust"
INITIATOR = f"{IQN_BASE}:abuser"
BS = 512

# Opcodes (RFC 7143 11.1.1).
NOP_OUT, SCSI_CMD, TMF, LOGIN, TEXT, DATA_OUT, LOGOUT = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
NOP_IN, SCSI_RSP, LOGIN_RSP, DATA_IN, R2T, REJECT = 0x20, 0x21, 0x23, 0x25, 0x31, 0x3F
REJECT_DATA_DIGEST, REJECT_PROTOCOL, REJECT_NOT_SUPPORTED = 0x02, 0x04, 0x05


def _digest(*parts: bytes) -> bytes:
    crc = 0
    for p in parts:
        crc = crc32c.crc32c(p, crc)
    return struct.pack("<I", crc)


class Closed(Exception):
    pass


class Pdu:
    def __init__(self, bhs: bytes, data: bytes) -> None:
        self.bhs, self.data = bhs, data
        self.opcode = bhs[0] & 0x3F

    @property
    def itt(self) -> int:
        return struct.unpack_from(">I", self.bhs, 16)[0]

    def u32(self, off: int) -> int:
        return struct.unpack_from(">I", self.bhs, off)[0]


class Raw:
    """One TCP connection speaking just enough iSCSI to log in and run commands."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.hd = self.dd = False
        self.cmdsn = 1
        self.expstatsn = 0
        self.itt = 0x100
        self.max_send = 8192        # the target's MaxRecvDataSegmentLength
        self.isid = os.urandom(6)

    def close(self) -> None:
        self.sock.close()

    # -- wire ---------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self, bhs: bytes, data: bytes = b"", *, bad_hd: bool = False,
              bad_dd: bool = False, dsl: int | None = None) -> bytes:
        bhs = bytearray(bhs)
        n = len(data) if dsl is None else dsl
        bhs[5:8] = n.to_bytes(3, "big")
        out = bytes(bhs)
        if self.hd:
            d = _digest(bytes(bhs))
            out += bytes([d[0] ^ 0xFF]) + d[1:] if bad_hd else d
        if data:
            padded = data + b"\0" * (-len(data) % 4)
            out += padded
            if self.dd:
                d = _digest(padded)
                out += bytes([d[0] ^ 0xFF]) + d[1:] if bad_dd else d
        return out

    def send(self, bhs: bytes, data: bytes = b"", **kw) -> None:
        self.send_raw(self.frame(bhs, data, **kw))

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                raise Closed(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def recv(self) -> Pdu:
        """The next PDU; NOP-In pings from the target are answered on the way."""
        while True:
            bhs = self._recv_exact(48)
            ahs = self._recv_exact(bhs[4] * 4) if bhs[4] else b""
            if self.hd:
                assert self._recv_exact(4) == _digest(bhs, ahs), "bad header digest from target"
            dlen = int.from_bytes(bhs[5:8], "big")
            data = b""
            if dlen:
                padded = self._recv_exact(dlen + (-dlen % 4))
                if self.dd:
                    assert self._recv_exact(4) == _digest(padded), "bad data digest from target"
                data = padded[:dlen]
            pdu = Pdu(bhs, data)
            if pdu.opcode in (SCSI_RSP, NOP_IN, LOGIN_RSP, REJECT, 0x22, 0x24, 0x26) \
                    or (pdu.opcode == DATA_IN and bhs[1] & 0x01):
                statsn = pdu.u32(24)
                if pdu.opcode != REJECT or statsn:
                    self.expstatsn = (statsn + 1) & 0xFFFFFFFF
            if pdu.opcode == NOP_IN and pdu.itt == 0xFFFFFFFF:
                ttt = pdu.u32(20)
                if ttt != 0xFFFFFFFF:
                    self.send(self._bhs(NOP_OUT | 0x40, 0x80, itt=0xFFFFFFFF,
                                        f20=ttt, cmdsn=self.cmdsn))
                continue
            return pdu

    def expect_closed(self, timeout: float = 10.0) -> list[Pdu]:
        """PDUs the target sent before closing; fails if it keeps the connection open."""
        self.sock.settimeout(timeout)
        got = []
        try:
            while True:
                got.append(self.recv())
        except Closed:
            return got
        except socket.timeout:
            pytest.fail(f"target kept the connection open; sent {[hex(p.opcode) for p in got]}")

    # -- PDUs ---------------------------------------------------------------
    def _bhs(self, op: int, flags: int, *, itt: int, lun: int = 0, f20: int = 0,
             cmdsn: int | None = None, cdb: bytes = b"") -> bytes:
        b = bytearray(48)
        b[0], b[1] = op, flags
        b[8:16] = (lun << 48).to_bytes(8, "big") if lun < 256 else lun.to_bytes(8, "big")
        struct.pack_into(">IIII", b, 16, itt, f20, self.cmdsn if cmdsn is None else cmdsn,
                         self.expstatsn)
        b[32:32 + len(cdb)] = cdb
        return bytes(b)

    def next_itt(self) -> int:
        self.itt += 1
        return self.itt

    def login(self, *, digests: bool = False, target: str = IQN, extra: dict | None = None,
              raw_text: bytes | None = None) -> Pdu:
        """Security stage (AuthMethod=None), then operational stage to full feature."""
        keys = {"InitiatorName": INITIATOR, "TargetName": target, "SessionType": "Normal",
                "AuthMethod": "None"}
        resp = self._login_step(0, 1, keys if raw_text is None else None, raw_text)
        if resp.bhs[36] != 0:
            return resp
        dig = "CRC32C" if digests else "None"
        ops = {"HeaderDigest": dig, "DataDigest": dig, "ImmediateData": "Yes",
               "InitialR2T": "Yes", "MaxRecvDataSegmentLength": "65536",
               "ErrorRecoveryLevel": "0", **(extra or {})}
        resp = self._login_step(1, 3, ops)
        if resp.bhs[36] == 0:
            got = dict(kv.split("=", 1) for kv in resp.data.decode().split("\0") if "=" in kv)
            self.max_send = int(got.get("MaxRecvDataSegmentLength", 8192))
            self.hd = self.dd = digests
            assert resp.bhs[1] & 0x03 == 3, "login did not reach full feature phase"
        return resp

    def _login_step(self, csg: int, nsg: int, keys: dict | None, raw: bytes | None = None) -> Pdu:
        text = raw if raw is not None else b"".join(f"{k}={v}".encode() + b"\0"
                                                      for k, v in keys.items())
        b = bytearray(48)
        b[0] = LOGIN | 0x40
        b[1] = 0x80 | (csg << 2) | nsg
        b[8:14] = self.isid
        struct.pack_into(">IHHII", b, 16, 1, 0, 0, self.cmdsn, self.expstatsn)
        self.send(bytes(b), text)
        resp = self.recv()
        assert resp.opcode == LOGIN_RSP, hex(resp.opcode)
        return resp

    def scsi(self, cdb: bytes, *, read: int = 0, data: bytes = b"", lun: int = 0,
             edtl: int | None = None) -> tuple[int, bytes, bytes]:
        """(status, sense, data-in) of one command; write data goes as immediate data."""
        itt = self.next_itt()
        flags = 0x80 | (0x40 if read else 0) | (0x20 if data else 0) | 0x01
        length = edtl if edtl is not None else (read or len(data))
        self.send(self._bhs(SCSI_CMD, flags, itt=itt, lun=lun, f20=length,
                            cdb=cdb.ljust(16, b"\0")), data)
        self.cmdsn += 1
        return self.wait_response(itt)

    def wait_response(self, itt: int) -> tuple[int, bytes, bytes]:
        datain = bytearray()
        while True:
            p = self.recv()
            if p.opcode == REJECT:
                raise AssertionError(f"Reject reason 0x{p.bhs[2]:02x} for ITT 0x{itt:x}")
            if p.opcode == R2T:
                raise AssertionError("unexpected R2T")
            assert p.itt == itt, (hex(p.opcode), hex(p.itt), hex(itt))
            if p.opcode == DATA_IN:
                datain += p.data
                if p.bhs[1] & 0x01:
                    return p.bhs[3], b"", bytes(datain)
                continue
            assert p.opcode == SCSI_RSP, hex(p.opcode)
            assert p.bhs[2] == 0, f"iSCSI response 0x{p.bhs[2]:02x}"
            sense = b""
            if p.data:
                n = int.from_bytes(p.data[:2], "big")
                sense = p.data[2:2 + n]
            return p.bhs[3], sense, bytes(datain)

    def nop(self) -> None:
        itt = self.next_itt()
        self.send(self._bhs(NOP_OUT | 0x40, 0x80, itt=itt, f20=0xFFFFFFFF), b"ping")
        p = self.recv()
        assert p.opcode == NOP_IN and p.itt == itt and p.data == b"ping"


def read10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def write10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


# --------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("robust"),
                       [Target(IQN, [Lun(0, "16M"), Lun(1, "16M")])]).start()
    yield srv
    rc = srv.stop()
    assert rc == 0, f"exit status {rc}:\n{srv.log_tail()}"


@pytest.fixture(scope="module")
def witness(server):
    """A session logged in for the whole module; abuse must never disturb it."""
    w = Raw(server.port)
    assert w.login().bhs[36] == 0
    status, _, _ = w.scsi(bytes(6))          # TEST UNIT READY: the power-on UA
    pattern = bytes(range(256)) * (8 * BS // 256)
    w.scsi(write10(100, 8), data=pattern)
    w.pattern = pattern
    yield w
    w.close()


def still_served(server: ServerProcess, w: Raw) -> None:
    assert server.alive(), f"server died:\n{server.log_tail()}"
    status, sense, data = w.scsi(read10(100, 8), read=8 * BS)
    if status == 2 and len(sense) > 13 and sense[2] & 0x0F == 6 and sense[12:14] == b"\x29\x00":
        # A random PDU may be a valid TARGET/LU RESET (hypothesis finds them): every
        # nexus then rightly gets POWER ON, RESET once.  Served means the next try works.
        status, sense, data = w.scsi(read10(100, 8), read=8 * BS)
    assert status == 0, sense.hex()
    assert data == w.pattern


def logged_in(server, **kw) -> Raw:
    c = Raw(server.port)
    resp = c.login(**kw)
    assert resp.bhs[36] == 0, f"login failed {resp.bhs[36]:02x}{resp.bhs[37]:02x}"
    return c


# ------------------------------------------------------------------- malformed
def test_truncated_bhs_then_close(server, witness):
    for n in (1, 20, 47):
        c = Raw(server.port)
        c.send_raw(b"\x43" + os.urandom(n - 1))
        c.close()
    c = logged_in(server)
    c.send_raw(c._bhs(SCSI_CMD, 0xC1, itt=5, f20=512, cdb=read10(0, 1))[:30])
    c.close()
    still_served(server, witness)


def test_unknown_opcode_is_rejected_and_connection_survives(server, witness):
    c = logged_in(server)
    for op in (0x07, 0x1C, 0x1F):
        c.send(c._bhs(op, 0x80, itt=c.next_itt()))
        p = c.recv()
        assert p.opcode == REJECT and p.bhs[2] == REJECT_NOT_SUPPORTED, (hex(p.opcode), p.bhs[2])
        assert p.data[:1] == bytes([op]), "Reject carries the offending header"
    c.nop()
    status, _, _ = c.scsi(bytes(6))
    assert status in (0, 2)
    c.close()
    still_served(server, witness)


@pytest.mark.parametrize("op", [NOP_IN, SCSI_RSP, LOGIN_RSP, DATA_IN, R2T, REJECT, 0x32])
def test_target_opcode_from_initiator(server, witness, op):
    c = logged_in(server)
    c.send(c._bhs(op, 0x80, itt=c.next_itt()))
    got = c.expect_closed()
    assert [(p.opcode, p.bhs[2]) for p in got] == [(REJECT, REJECT_PROTOCOL)]
    still_served(server, witness)


def test_login_request_in_full_feature_phase(server, witness):
    c = logged_in(server)
    c.send(c._bhs(LOGIN | 0x40, 0x87, itt=c.next_itt()))
    got = c.expect_closed()
    assert got and got[0].opcode == REJECT and got[0].bhs[2] == REJECT_PROTOCOL
    still_served(server, witness)


def test_data_segment_larger_than_negotiated(server, witness):
    c = logged_in(server)
    big = c.max_send + 4096
    c.send(c._bhs(SCSI_CMD, 0xA1, itt=c.next_itt(), f20=big, cdb=write10(0, big // BS)),
           os.urandom(big))
    got = c.expect_closed()
    assert [(p.opcode, p.bhs[2]) for p in got] in ([], [(REJECT, REJECT_PROTOCOL)])
    still_served(server, witness)


def test_announced_huge_segment_then_silence(server, witness):
    """A header announcing 16 MiB of data that never comes: refused from the header."""
    c = logged_in(server)
    c.send_raw(c.frame(c._bhs(NOP_OUT | 0x40, 0x80, itt=c.next_itt(), f20=0xFFFFFFFF),
                       dsl=(1 << 24) - 4))
    got = c.expect_closed()
    assert all(p.opcode == REJECT for p in got)
    still_served(server, witness)


def test_bad_header_digest_closes(server, witness):
    c = logged_in(server, digests=True)
    c.nop()                                            # digests work when right
    c.send(c._bhs(NOP_OUT | 0x40, 0x80, itt=c.next_itt(), f20=0xFFFFFFFF), bad_hd=True)
    got = c.expect_closed()
    assert not [p for p in got if p.opcode not in (REJECT,)], got
    still_served(server, witness)


def test_bad_data_digest_rejected(server, witness):
    c = logged_in(server, digests=True)
    c.send(c._bhs(SCSI_CMD, 0xA1, itt=c.next_itt(), f20=BS, cdb=write10(0, 1)),
           os.urandom(BS), bad_dd=True)
    got = c.expect_closed()
    assert [(p.opcode, p.bhs[2]) for p in got] in ([], [(REJECT, REJECT_DATA_DIGEST)])
    still_served(server, witness)


@pytest.mark.parametrize("op", [SCSI_CMD, NOP_OUT, TEXT, DATA_OUT, LOGOUT, TMF, 0x1F])
def test_pdu_before_login(server, witness, op):
    c = Raw(server.port)
    c.send(c._bhs(op, 0x80, itt=1, cdb=bytes(6) if op == SCSI_CMD else b""))
    got = c.expect_closed()
    # A login response with an initiator-error status, or nothing at all.
    assert all(p.opcode in (LOGIN_RSP, REJECT) for p in got), got
    for p in got:
        if p.opcode == LOGIN_RSP:
            assert p.bhs[36] == 0x02, f"status {p.bhs[36]:02x}{p.bhs[37]:02x}"
    still_served(server, witness)


@pytest.mark.parametrize("text", [
    b"\xff\xfe\x00garbage",
    b"no-equals-sign\0",
    b"InitiatorName=" + b"x" * 5000 + b"\0",
    b"=\0==\0",
    b"TargetName=iqn.2026-11.org.pyscsi:nope\0InitiatorName=" + INITIATOR.encode() + b"\0",
    b"SessionType=Discovery\0",                      # no InitiatorName
], ids=["binary", "no-equals", "long-value", "empty-keys", "unknown-target", "no-initiator"])
def test_garbage_login_text_fails_login(server, witness, text):
    c = Raw(server.port)
    resp = c.login(raw_text=text)
    assert resp.bhs[36] in (0x02, 0x03), f"status {resp.bhs[36]:02x}{resp.bhs[37]:02x}"
    c.expect_closed()
    still_served(server, witness)


def test_huge_edtl_write_gets_an_answer(server, witness):
    c = logged_in(server)
    itt = c.next_itt()
    c.send(c._bhs(SCSI_CMD, 0xA1, itt=itt, f20=0xFFFFFFFF, cdb=write10(0, 0xFFFF)))
    c.cmdsn += 1
    c.sock.settimeout(10)
    p = c.recv()
    if p.opcode == R2T:
        pytest.fail("target asked for data of a 4 GiB write instead of refusing it")
    if p.opcode == SCSI_RSP:
        assert p.itt == itt and p.bhs[3] == 0x02        # CHECK CONDITION
        c.nop()                                          # and the connection goes on
    else:
        assert p.opcode == REJECT
    c.close()
    still_served(server, witness)


def test_data_out_for_unknown_itt(server, witness):
    c = logged_in(server)
    b = bytearray(c._bhs(DATA_OUT, 0x80, itt=0xDEAD, f20=0x1234))
    c.send(bytes(b), os.urandom(BS))
    # Either ignored or rejected; the connection keeps answering.
    itt = c.next_itt()
    c.send(c._bhs(NOP_OUT | 0x40, 0x80, itt=itt, f20=0xFFFFFFFF), b"ping")
    p = c.recv()
    if p.opcode == REJECT:
        p = c.recv()
    assert p.opcode == NOP_IN and p.itt == itt
    c.close()
    still_served(server, witness)


def test_duplicate_itt_is_refused(server, witness):
    c = logged_in(server)
    itt = c.next_itt()
    # A write waiting for its R2T keeps the ITT busy; reuse it.
    c.send(c._bhs(SCSI_CMD, 0xA1, itt=itt, f20=64 * BS, cdb=write10(0, 64)))
    c.cmdsn += 1
    c.send(c._bhs(SCSI_CMD, 0xC1, itt=itt, f20=BS, cdb=read10(0, 1)))
    got = c.expect_closed()
    assert any(p.opcode == REJECT for p in got), [hex(p.opcode) for p in got]
    still_served(server, witness)


# ------------------------------------------------------------------ properties
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=48, max_size=48), st.binary(max_size=64), st.booleans())
def test_random_pdus_after_login(server, witness, bhs, data, fix_opcode):
    c = logged_in(server)
    try:
        b = bytearray(bhs)
        if fix_opcode:      # keep it an initiator opcode so deeper code runs
            b[0] = (b[0] & 0x40) | (b[0] % 7)
        b[4] = 0            # no AHS: lengths stay consistent with what we send
        c.send(bytes(b), data)
        # Whatever comes back is read until a probe answers or the target closes.
        itt = 0x7FFF0000
        c.send(c._bhs(NOP_OUT | 0x40, 0x80, itt=itt, f20=0xFFFFFFFF, cmdsn=c.cmdsn), b"x")
        c.sock.settimeout(10)
        try:
            while True:
                p = c.recv()
                if p.opcode == NOP_IN and p.itt == itt:
                    break
                assert p.opcode in (REJECT, SCSI_RSP, DATA_IN, R2T, NOP_IN, 0x22, 0x24, 0x26,
                                    0x32), hex(p.opcode)
        except Closed:
            pass
        except socket.timeout:
            # A PDU the target must wait on (e.g. a command with a CmdSN ahead
            # of the window) may hold the probe back; the target must still be
            # alive and serving others.
            pass
    finally:
        c.close()
    still_served(server, witness)


def test_memory_bounded_over_200_abusive_connections(server, witness):
    def abuse(i: int) -> None:
        c = Raw(server.port)
        try:
            kind = i % 5
            if kind == 0:
                c.send_raw(os.urandom(30))
            elif kind == 1:
                c.login(raw_text=os.urandom(200))
            elif kind == 2:
                c.login()
                c.send(c._bhs(SCSI_CMD, 0xA1, itt=7, f20=1 << 20, cdb=write10(0, 2048)),
                       os.urandom(4096))          # then vanish mid-transfer
            elif kind == 3:
                c.login()
                c.send_raw(c.frame(c._bhs(NOP_OUT | 0x40, 0x80, itt=9, f20=0xFFFFFFFF),
                                   dsl=60000) + os.urandom(1000))   # truncated segment
            else:
                c.send(c._bhs(SCSI_CMD, 0x80, itt=1))
        except (Closed, OSError, AssertionError):
            pass
        finally:
            c.close()

    for i in range(40):      # warm up allocator pools before measuring
        abuse(i)
    time.sleep(0.5)
    before = server.rss_kib()
    for i in range(200):
        abuse(i)
    time.sleep(1.0)
    after = server.rss_kib()
    assert after - before < 50 * 1024, f"RSS grew {before} -> {after} KiB"
    still_served(server, witness)


# --------------------------------------------------------------- random CDBs
_CDB = st.one_of(
    st.binary(min_size=6, max_size=6), st.binary(min_size=10, max_size=10),
    st.binary(min_size=12, max_size=12), st.binary(min_size=16, max_size=16),
    # Real opcodes with random fields reach the handlers, not just the table lookup.
    st.tuples(st.sampled_from([0x00, 0x03, 0x12, 0x1A, 0x25, 0x28, 0x2A, 0x2F, 0x35, 0x41,
                               0x42, 0x5A, 0x5E, 0x88, 0x89, 0x8A, 0x8F, 0x93, 0x9E, 0xA0,
                               0xA3]),
              st.binary(min_size=15, max_size=15)).map(lambda t: bytes([t[0]]) + t[1]),
)


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(cdb=_CDB, read=st.sampled_from([0, 18, 512, 4096, 65536]),
       out=st.sampled_from([0, 8, 24, 512, 4096]), seed=st.binary(min_size=8, max_size=8))
def test_random_cdbs_get_good_or_sane_check_condition(cdb_session, cdb, read, out, seed):
    c = cdb_session
    data = (seed * (out // 8 + 1))[:out] if out and not read else b""
    status, sense, _ = c.scsi(cdb, read=read, data=data, lun=1)
    assert status in (0x00, 0x02, 0x18), hex(status)      # GOOD, CHECK CONDITION, RES. CONFLICT
    if status == 0x02:
        assert len(sense) >= 8, sense.hex()
        code = sense[0] & 0x7F
        assert code in (0x70, 0x71, 0x72, 0x73), sense.hex()
        key = sense[2] & 0x0F if code < 0x72 else sense[1] & 0x0F
        asc = sense[12] if code < 0x72 else sense[2]
        assert 0x1 <= key <= 0xE and key not in (0x8, 0x9, 0xA, 0xC), sense.hex()
        assert asc != 0 or key in (0x1, 0x6), sense.hex()


@pytest.fixture(scope="module")
def cdb_session(server, witness):
    c = logged_in(server)
    c.scsi(bytes(6), lun=1)                      # the power-on unit attention
    yield c
    # The connection survived every random command.
    c.nop()
    c.close()
    still_served(server, witness)


def test_many_idle_connections_that_never_log_in_stay_cheap(server, witness):
    """300 open, silent connections cost little memory and do not disturb other sessions."""
    import socket as _socket
    time.sleep(0.3)
    before = server.rss_kib()
    socks = []
    try:
        for _ in range(300):
            s = _socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"\x03")               # one byte of a Login Request: the driver is set up
            socks.append(s)
        time.sleep(1.0)
        after = server.rss_kib()
        assert after - before < 30 * 1024, f"RSS grew {before} -> {after} KiB for 300 idle peers"
        still_served(server, witness)
    finally:
        for s in socks:
            s.close()
