"""Property tests: UNMAP parameter lists and medium writes against a model."""
from __future__ import annotations


from hypothesis import given, settings, strategies as st

from scsi_target.scsi.command import Status
from scsi_target.scsi.sense import SenseKey, parse_sense

from test_sbc_commands import BS, NBLOCKS, Harness, read16, unmap_cdb, unmap_params, write16


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 300))
def test_any_unmap_parameter_list_gets_a_defined_answer(params, plen):
    h = Harness()
    data = params[:plen]
    r = h.run(unmap_cdb(plen), data, edtl=len(data))
    if r.status != Status.GOOD:
        assert r.status == Status.CHECK_CONDITION
        assert parse_sense(r.sense)[0] == SenseKey.ILLEGAL_REQUEST


extent = st.tuples(st.integers(0, NBLOCKS - 1), st.integers(0, 64))


@settings(max_examples=40, deadline=None)
@given(st.lists(extent, max_size=8))
def test_valid_unmap_zeroes_exactly_the_described_blocks(extents):
    extents = [(lba, min(n, NBLOCKS - lba)) for lba, n in extents]
    h = Harness()
    h.ok(write16(0, NBLOCKS), b"\xee" * NBLOCKS * BS)
    params = unmap_params(*extents)
    h.ok(unmap_cdb(len(params)), params)
    model = bytearray(b"\xee" * NBLOCKS)
    for lba, n in extents:
        model[lba:lba + n] = bytes(n)
    data = bytes(h.ok(read16(0, NBLOCKS)).data_in)
    got = bytes(data[i * BS] for i in range(NBLOCKS))
    assert got == bytes(model)
    # Every block reads back uniformly (no partial zeroing inside a block).
    assert data == b"".join(bytes([b]) * BS for b in got)
