"""Example: testing your code against a target with the scsi-target pytest plugin.

`pip install scsi-target` is enough: the plugin registers itself (entry point
pytest11), so these fixtures need no conftest.py.  Run: `pytest test_plugin_example.py`.
"""
import os

import pytest

from scsi_target.initiator.sync import SyncIscsiClient
from scsi_target.scsi.sense import SenseKey
from scsi_target.testing import FaultRule
from scsi_target.testing.process import Lun, Target


def test_in_process(iscsi_target):
    data = os.urandom(4096)
    assert iscsi_target.write(8, data).ok
    assert iscsi_target.read(8, 8) == data
    iscsi_target.log.assert_once("WRITE")
    iscsi_target.log.assert_writes_within(8, 16)


@pytest.mark.scsi_disk(size="8M", block_size=4096)
def test_marker_sets_geometry(iscsi_target):
    lu = iscsi_target.lu(0)
    assert (lu.block_size, lu.num_blocks) == (4096, 2048)


@pytest.mark.parametrize("iscsi_target", [{"size": "1M", "block_size": 512},
                                          {"size": "4M", "block_size": 4096}], indirect=True)
def test_indirect_parametrization(iscsi_target):
    lu = iscsi_target.lu(0)
    assert lu.block_size * lu.num_blocks in (1 << 20, 4 << 20)


@pytest.mark.scsi_target(chap=("tester", "0123456789abcdef"))
def test_served_with_chap(iscsi_server):
    assert "tester%0123456789abcdef@" in iscsi_server.url(0)
    data = os.urandom(512 * 4)
    with SyncIscsiClient(iscsi_server.url(0)) as c:
        c.test_unit_ready()     # the power-on unit attention
        c.write(100, data)
        assert c.read(100, 4) == data
    iscsi_server.target.log.assert_count("WRITE", 1)


def test_injected_medium_error(iscsi_server):
    iscsi_server.target.faults.add(FaultRule.make("medium_error", lba=(50, 60), opcode="read"))
    with SyncIscsiClient(iscsi_server.url(0)) as c:
        c.test_unit_ready()
        r = c.execute(bytes([0x28, 0, 0, 0, 0, 48, 0, 0, 4, 0]), read_length=2048)
        assert r.status == 0x02
        assert r.sense[2] & 0x0F == 0x03                    # MEDIUM ERROR
        assert int.from_bytes(r.sense[3:7], "big") == 50    # the failing LBA


@pytest.mark.scsi_seeded(size="64M", seed=7)
def test_snapshot_of_seeded_volume(iscsi_seeded):
    original = iscsi_seeded.seed_store.read(0, 4096)
    assert iscsi_seeded.read(0, 8) == original
    iscsi_seeded.write(0, bytes(4096))
    assert iscsi_seeded.read(0, 8) == bytes(4096)
    assert iscsi_seeded.seed_store.read(0, 4096) == original   # the seed is untouched


@pytest.mark.scsi_target(faults=[{"action": "drop_after_pdus", "pdus": 3,
                                  "direction": "received"}])
def test_connection_dropped_by_the_target(iscsi_server):
    from scsi_target.initiator.errors import TransportError
    with SyncIscsiClient(iscsi_server.url(0)) as c:
        c.test_unit_ready()         # two PDUs: the power-on unit attention, then the retry
        with pytest.raises(TransportError):
            c.test_unit_ready()     # the third: not answered, the connection closes
        c.reconnect()               # the rule fired once: the new connection stays up
        assert c.test_unit_ready().good


def test_seed_store_is_built_once_per_session(iscsi_seed_store):
    store = iscsi_seed_store(1 << 20, seed=3)
    assert iscsi_seed_store(1 << 20, seed=3) is store
    assert store.read(0, 4096) != bytes(4096)


@pytest.mark.scsi_lu("tape", size="8M")
def test_tape_lu_and_its_command_log(iscsi_target):
    record = os.urandom(1000)
    write6 = bytes([0x0A, 0]) + len(record).to_bytes(3, "big") + b"\0"    # variable block
    assert iscsi_target.submit(write6, data_out=record).ok
    iscsi_target.submit(bytes([0x10, 0, 0, 0, 1, 0])).expect_good()      # WRITE FILEMARKS(6)
    iscsi_target.submit(bytes([0x01, 0, 0, 0, 0, 0])).expect_good()      # REWIND
    read6 = bytes([0x08, 0]) + len(record).to_bytes(3, "big") + b"\0"
    assert iscsi_target.submit(read6, read_length=len(record)).expect_good() == record
    r = iscsi_target.submit(read6, read_length=len(record))             # the filemark
    assert r.sense_data.filemark and r.sense[0] == SenseKey.NO_SENSE
    iscsi_target.log.assert_once("WRITE FILEMARKS")


def test_real_server_process_keeps_data_across_restart(iscsi_server_process):
    srv = iscsi_server_process([Target("iqn.2026-12.com.example:proc", [Lun(0, "4M")])])
    data = os.urandom(512)
    with SyncIscsiClient(srv.url(0)) as c:
        c.test_unit_ready()
        c.write(7, data)
    srv.restart()                       # SIGTERM (exit status 0), then the same files again
    with SyncIscsiClient(srv.url(0)) as c:
        c.test_unit_ready()
        assert c.read(7, 1) == data
