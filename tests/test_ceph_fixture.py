"""The single-node Ceph cluster the ceph tests run on (scsi_target/testing/ceph.py)."""
from __future__ import annotations

import urllib.request

import pytest

from scsi_target.testing.ceph import CephCluster, CephError, missing_programs
from volume import ceph_bindings

pytestmark = pytest.mark.ceph


def test_rbd_image_reads_back_what_was_written(ceph_cluster):
    ceph_cluster.create_pool("fixture-rbd")
    ceph_cluster.run("rbd", "create", "fixture-rbd/img", "--size", "8M")
    rados, rbd = ceph_bindings.load("rados"), ceph_bindings.load("rbd")
    cluster = rados.Rados(conffile=str(ceph_cluster.conf))
    cluster.connect(timeout=20)
    try:
        with cluster.open_ioctx("fixture-rbd") as io, rbd.Image(io, "img") as image:
            payload = bytes(range(256)) * 16
            image.write(payload, 4096)
            assert image.read(4096, len(payload)) == payload
            assert image.size() == 8 << 20
    finally:
        cluster.shutdown()
    out = ceph_cluster.run("rbd", "info", "fixture-rbd/img").stdout.decode()
    assert "size 8 MiB" in out


def test_gateway_serves_s3(ceph_cluster):
    with urllib.request.urlopen(ceph_cluster.s3_endpoint, timeout=10) as resp:
        body = resp.read()
    assert resp.status == 200 and b"ListAllMyBucketsResult" in body
    users = ceph_cluster.run("radosgw-admin", "user", "info", "--uid=pyscsi-test").stdout
    assert ceph_cluster.s3_access_key.encode() in users


def test_a_failed_step_names_itself(ceph_cluster):
    with pytest.raises(CephError, match="rbd info no-such-pool/none failed"):
        ceph_cluster.run("rbd", "info", "no-such-pool/none")


def test_a_cluster_without_gateway_has_no_endpoint(tmp_path):
    c = CephCluster(tmp_path, rgw=False)
    with pytest.raises(CephError, match="without a gateway"):
        c.s3_endpoint


def test_missing_programs_are_listed(monkeypatch):
    import scsi_target.testing.ceph as ceph
    monkeypatch.setattr(ceph, "_which", lambda name: None)
    assert "radosgw" in missing_programs(rgw=True)
    assert "radosgw" not in missing_programs(rgw=False)
    with pytest.raises(CephError, match=r"missing .*ceph-mon.*Debian packages .*ceph-mon"):
        CephCluster("/nonexistent").start()


def test_bindings_refuse_other_names():
    with pytest.raises(ValueError):
        ceph_bindings.load("os")
