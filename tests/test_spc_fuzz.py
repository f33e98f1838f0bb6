"""Every SPC command answers any CDB and parameter list with a defined status (invariant 3)."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from scsi_target.scsi.command import Status
from scsi_target.scsi.sense import parse_sense
from scsi_target.scsi.spc import SPC
from test_spc_misc import NEXUS1, NEXUS2, Harness, TestTape

ENTRIES = sorted(SPC, key=lambda e: (e.opcode, e.service_action or 0))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(ENTRIES), st.binary(min_size=16, max_size=16),
       st.one_of(st.none(), st.binary(max_size=64)), st.booleans(), st.booleans())
def test_random_cdbs_get_defined_answers(entry, tail, data, tape, second):
    h = Harness(TestTape()) if tape else Harness()
    cdb = bytearray(tail[:entry.cdb_length])
    cdb[0] = entry.opcode
    if entry.service_action is not None:
        cdb[1] = (cdb[1] & 0xE0) | entry.service_action
    r = h.run(bytes(cdb), data=data, length=len(data) if data is not None else 512,
              nexus=NEXUS2 if second else NEXUS1)
    assert r.status in (Status.GOOD, Status.CHECK_CONDITION, Status.RESERVATION_CONFLICT)
    if r.status == Status.CHECK_CONDITION:
        parse_sense(r.resp.sense)
    # The LU still answers normally afterwards.
    assert h.run([0x12, 0, 0, 0, 36, 0], length=36).status == Status.GOOD
