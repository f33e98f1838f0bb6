"""The tape drive model against a deliberately naive reference tape.

The reference is a Python list of objects (bytes = record, None = filemark)
and a position, with every movement written as a plain walk, the way SSC
describes it.  Hypothesis drives random sequences of write / filemark / space
/ locate / rewind / read / erase / reopen against both and compares positions,
conditions, residues and data after every step; a reopen also checks that the
image on disk holds exactly what the reference holds.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tape import TapeDrive, TapeImage
from tape import format as F
from tape.errors import BeginningOfMedium, EndOfData, FilemarkDetected, WriteProtected

CAPACITY = 64 << 10
EARLY_WARNING = 8 << 10


class RefTape:
    def __init__(self) -> None:
        self.objs: list[bytes | None] = []
        self.pos = 0

    def used(self, upto: int) -> int:
        return sum(F.FRAME_SIZE + (len(o) if o is not None else 0) for o in self.objs[:upto])

    def ew(self) -> bool:
        return self.used(self.pos) >= CAPACITY - EARLY_WARNING

    def write(self, recs: list) -> tuple[int, bool]:
        if not recs:
            return 0, False
        del self.objs[self.pos:]
        n = 0
        for r in recs:
            if self.used(len(self.objs)) + F.FRAME_SIZE + (len(r) if r else 0) > CAPACITY:
                break
            self.objs.append(r)
            n += 1
        self.pos = len(self.objs)
        return n, n < len(recs)

    def filemarks(self, count: int) -> tuple[int, bool]:
        return self.write([None] * count)  # type: ignore[list-item]

    def space_blocks(self, n: int):
        step = 1 if n > 0 else -1
        for done in range(abs(n)):
            if step > 0:
                if self.pos == len(self.objs):
                    return ("eod", abs(n) - done)
                obj = self.objs[self.pos]
                self.pos += 1
                if obj is None:
                    return ("fm", abs(n) - done)
            else:
                if self.pos == 0:
                    return ("bop", abs(n) - done)
                if self.objs[self.pos - 1] is None:
                    self.pos -= 1
                    return ("fm", abs(n) - done)
                self.pos -= 1
        return None

    def space_filemarks(self, n: int):
        if n > 0:
            for done in range(n):
                while True:
                    if self.pos == len(self.objs):
                        return ("eod", n - done)
                    self.pos += 1
                    if self.objs[self.pos - 1] is None:
                        break
            return None
        for done in range(-n):
            while True:
                if self.pos == 0:
                    return ("bop", -n - done)
                self.pos -= 1
                if self.objs[self.pos] is None:
                    break
        return None

    def read_variable(self, want: int):
        if self.pos == len(self.objs):
            return ("eod", want), None
        obj = self.objs[self.pos]
        self.pos += 1
        if obj is None:
            return ("fm", want), None
        return None, obj

    def read_fixed(self, count: int, bl: int):
        out = []
        for k in range(count):
            if self.pos == len(self.objs):
                return ("eod", count - k), out
            obj = self.objs[self.pos]
            self.pos += 1
            if obj is None:
                return ("fm", count - k), out
            if len(obj) != bl:
                return ("ili", len(obj)), out
            out.append(obj)
        return None, out


def _cond(exc) -> tuple[str, int] | None:
    if exc is None:
        return None
    kind = {FilemarkDetected: "fm", EndOfData: "eod", BeginningOfMedium: "bop"}[type(exc)]
    return (kind, exc.residue)


record = st.integers(1, 3000).map(lambda n: os.urandom(n))
fixed_sizes = st.sampled_from([512, 1024])


class TapeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = None

    @initialize(crc=st.booleans())
    def setup(self, crc):
        import tempfile
        self.dir = tempfile.mkdtemp(prefix="tape-model-")
        self.path = os.path.join(self.dir, "t.img")
        img = TapeImage.create(self.path, CAPACITY, early_warning=EARLY_WARNING, crc=crc)
        self.drive = TapeDrive(img)
        self.ref = RefTape()

    def teardown(self):
        if self.dir:
            self.drive.remove()
            os.remove(self.path)
            os.rmdir(self.dir)

    @invariant()
    def same_position(self):
        if self.dir:
            assert self.drive.pos == self.ref.pos
            assert self.drive.image.count == len(self.ref.objs)
            assert self.drive.file_number == self.ref.objs[:self.ref.pos].count(None)
            assert self.drive.in_early_warning == self.ref.ew()

    @rule(recs=st.lists(record, min_size=1, max_size=4))
    def write_variable(self, recs):
        got = self.drive.write_records([memoryview(r) for r in recs])
        n, over = self.ref.write(recs)
        assert (got.objects, got.overflow) == (n, over)
        assert got.early_warning == self.ref.ew()

    @rule(bl=fixed_sizes, count=st.integers(1, 6))
    def write_fixed(self, bl, count):
        data = os.urandom(bl * count)
        mv = memoryview(data)
        got = self.drive.write_records([mv[k * bl:(k + 1) * bl] for k in range(count)])
        n, over = self.ref.write([data[k * bl:(k + 1) * bl] for k in range(count)])
        assert (got.objects, got.overflow) == (n, over)

    @rule(count=st.integers(0, 3))
    def write_filemarks(self, count):
        got = self.drive.write_filemarks(count)
        n, over = self.ref.filemarks(count)
        assert (got.objects, got.overflow) == (n, over)

    @rule(n=st.integers(-6, 6))
    def space_blocks(self, n):
        err = None
        try:
            self.drive.space_blocks(n)
        except (FilemarkDetected, EndOfData, BeginningOfMedium) as e:
            err = e
        assert _cond(err) == self.ref.space_blocks(n)

    @rule(n=st.integers(-3, 3))
    def space_filemarks(self, n):
        err = None
        try:
            self.drive.space_filemarks(n)
        except (EndOfData, BeginningOfMedium) as e:
            err = e
        assert _cond(err) == self.ref.space_filemarks(n)

    @rule()
    def space_eod(self):
        self.drive.space_eod()
        self.ref.pos = len(self.ref.objs)

    @rule(i=st.integers(0, 40))
    def locate(self, i):
        try:
            self.drive.locate(i)
            assert i <= len(self.ref.objs)
        except EndOfData:
            assert i > len(self.ref.objs)
        self.ref.pos = min(i, len(self.ref.objs))

    @rule(f=st.integers(0, 6))
    def locate_file(self, f):
        fms = [k for k, o in enumerate(self.ref.objs) if o is None]
        try:
            self.drive.locate_file(f)
            assert f <= len(fms)
            self.ref.pos = 0 if f == 0 else fms[f - 1] + 1
        except EndOfData:
            assert f > len(fms)
            self.ref.pos = len(self.ref.objs)

    @rule()
    def rewind(self):
        self.drive.rewind()
        self.ref.pos = 0

    @rule(want=st.integers(1, 4000))
    def read_variable(self, want):
        cond, data = self.ref.read_variable(want)
        try:
            r = self.drive.read(want, None, lambda n: memoryview(bytearray(n)))
        except (FilemarkDetected, EndOfData) as e:
            assert _cond(e) == cond
            return
        assert cond is None and bytes(r.data) == data
        assert r.wrong_length == (len(data) if len(data) != want else None)

    @rule(bl=fixed_sizes, count=st.integers(1, 5))
    def read_fixed(self, bl, count):
        cond, blocks = self.ref.read_fixed(count, bl)
        r = self.drive.read(count, bl, lambda n: memoryview(bytearray(n)))
        assert bytes(r.data) == b"".join(blocks)
        assert r.records == len(blocks)
        if cond is not None and cond[0] == "ili":
            assert r.wrong_length == cond[1] and r.stop is None
        else:
            assert _cond(r.stop) == cond

    @rule()
    def erase(self):
        self.drive.erase()
        del self.ref.objs[self.ref.pos:]

    @rule()
    def reopen(self):
        self.drive.remove()
        img = TapeImage.open(self.path)
        assert img.torn_bytes == 0
        self.drive = TapeDrive(img)
        self.ref.pos = 0
        # Everything on disk, byte for byte.
        for k, obj in enumerate(self.ref.objs):
            assert img.is_filemark(k) == (obj is None)
            if obj is not None:
                buf = memoryview(bytearray(len(obj)))
                img.read_into(k, buf)
                assert bytes(buf) == obj

    @precondition(lambda self: self.dir is not None)
    @rule()
    def protect_refuses_writes(self):
        img = self.drive.image
        img.set_write_protect(True)
        try:
            for op in (lambda: self.drive.write_records([memoryview(b"x")]),
                       lambda: self.drive.write_filemarks(1), self.drive.erase):
                try:
                    op()
                    raise AssertionError("write on a protected cartridge succeeded")
                except WriteProtected:
                    pass
        finally:
            img.set_write_protect(False)


TapeMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
test_tape_model = TapeMachine.TestCase
