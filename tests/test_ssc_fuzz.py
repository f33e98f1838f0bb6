"""Every command of the tape LU (SPC + SSC) answers any CDB and parameter list with a
defined status (invariant 3)."""
from __future__ import annotations

import tempfile

from hypothesis import HealthCheck, given, settings, strategies as st

from scsi_target.scsi.command import Status
from scsi_target.scsi.layouts.sense import decode_sense
from scsi_target.scsi.ssc import SSC
from scsi_target.scsi.devices import TAPE
from test_ssc_commands import NEXUS1, NEXUS2, TapeHarness

ENTRIES = TAPE.entries()  # SPC and SSC, as the tape LU dispatches them
SSC_ENTRIES = list(SSC)
_DIR = tempfile.TemporaryDirectory(prefix="ssc-fuzz-")
_N = iter(range(1 << 30))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(ENTRIES), st.binary(min_size=16, max_size=16),
                          st.one_of(st.none(), st.binary(max_size=96)), st.booleans()),
                min_size=1, max_size=6))
def test_random_ssc_cdbs_get_defined_answers(steps):
    h = TapeHarness(_DIR.name, capacity=256 << 10, name=f"f{next(_N)}.img")
    for entry, tail, data, second in steps:
        cdb = bytearray(tail[:entry.cdb_length])
        cdb[0] = entry.opcode
        # keep transfer lengths small so a random READ/WRITE stays cheap
        if entry.opcode in (0x08, 0x0A):
            cdb[2] = 0
        r = h.run(bytes(cdb), data=data, length=len(data) if data is not None else 512,
                  nexus=NEXUS2 if second else NEXUS1)
        assert r.status in (Status.GOOD, Status.CHECK_CONDITION, Status.RESERVATION_CONFLICT)
        if r.status == Status.CHECK_CONDITION:
            s = decode_sense(r.resp.sense)
            assert s.key != 0x4, s.summary()  # never an internal failure
    assert h.run([0x12, 0, 0, 0, 36, 0], length=36).status == Status.GOOD
    h.lu.close()



def test_short_cdbs_are_invalid_field_not_internal_errors(tmp_path):
    h = TapeHarness(tmp_path)
    for entry in ENTRIES:
        if entry.cdb_length <= 6 or entry.opcode not in {e.opcode for e in SSC_ENTRIES}:
            continue
        r = h.run(bytes([entry.opcode, entry.service_action or 0, 0, 0, 0, 0]))
        assert r.status == Status.CHECK_CONDITION
        assert decode_sense(r.resp.sense).key == 0x5, entry.name
