"""pytest plugin (entry point ``pytest11``): targets as fixtures.

Fixtures
    ``iscsi_target``   an :class:`InProcessTarget` with the LUs the test asks for
                       (markers below, or indirect parametrization with a dict
                       or list of dicts of LU options); default one 64 MiB disk.
    ``iscsi_server``   ``iscsi_target`` served on an ephemeral loopback port:
                       ``.url(lun)``, ``.port``, ``.host``, ``.chap``, ``.target``.
    ``iscsi_seeded``   an InProcessTarget whose LUN 0 is a copy-on-write snapshot
                       of a volume seeded with random bytes once per session
                       (``.seed_store`` holds the original bytes to compare with).
    ``iscsi_seed_store``  factory ``(size, seed) -> BlockStore``, session cached.
    ``iscsi_server_process``  factory of real server subprocesses
                       (scsi_target/testing/process.py).
    ``ceph_cluster``   a single-node Ceph cluster with S3 (RADOS Gateway), once
                       per session (scsi_target/testing/ceph.py); tests using it
                       are marked ``ceph``.

Markers
    ``@pytest.mark.scsi_lu(kind="disk", lun=None, **options)``  one LU (repeatable)
    ``@pytest.mark.scsi_disk(**options)``  shorthand for kind="disk"
    ``@pytest.mark.scsi_target(name=..., chap=(user, secret), faults=[...])``
    ``@pytest.mark.scsi_seeded(size="1G", seed=1, block_size=512)``
"""
from __future__ import annotations

import pytest

from . import rewrite_lock
from .cow import CowStore
from .inprocess import DEFAULT_IQN, InProcessTarget
from .seed import random_file

rewrite_lock.install()     # before any in-process target starts a thread


def pytest_configure(config) -> None:
    for line in (
        "scsi_lu(kind='disk', lun=None, **options): a LU of the iscsi_target fixture",
        "scsi_disk(**options): a disk LU of the iscsi_target fixture (size, block_size, "
        "backing, thin, track, ...)",
        "scsi_target(name=..., chap=(user, secret), faults=[...]): the iscsi_target itself",
        "scsi_seeded(size='1G', seed=1, block_size=512): the seeded volume of iscsi_seeded",
        "ceph: needs the ceph_cluster fixture (a single-node Ceph cluster from Debian's packages)",
    ):
        config.addinivalue_line("markers", line)


def _lu_specs(request) -> list[tuple[str, dict]]:
    param = getattr(request, "param", None)
    if param is not None:
        items = param if isinstance(param, (list, tuple)) else [param]
        specs = []
        for it in items:
            it = dict(it)
            specs.append((it.pop("kind", "disk"), it))
        return specs
    specs = []
    for m in reversed(list(request.node.iter_markers())):
        if m.name == "scsi_lu":
            kw = dict(m.kwargs)
            kind = m.args[0] if m.args else kw.pop("kind", "disk")
            specs.append((kind, kw))
        elif m.name == "scsi_disk":
            specs.append(("disk", dict(m.kwargs)))
    return specs or [("disk", {"size": "64M"})]


def _target_options(request) -> dict:
    m = request.node.get_closest_marker("scsi_target")
    return dict(m.kwargs) if m is not None else {}


def build_target(request, tmp_path_factory) -> InProcessTarget:
    opts = _target_options(request)
    t = InProcessTarget(opts.pop("name", DEFAULT_IQN), **opts)
    try:
        for kind, kw in _lu_specs(request):
            kw = dict(kw)
            lun = kw.pop("lun", None)
            if kw.get("backing") == "file":
                kw["backing"] = str(tmp_path_factory.mktemp("lu") / "disk.img")
            t.add_lu(kind, lun, **kw)
    except BaseException:
        t.close()
        raise
    return t


@pytest.fixture
def iscsi_target(request, tmp_path_factory):
    t = build_target(request, tmp_path_factory)
    yield t
    t.close()


@pytest.fixture
def iscsi_server(iscsi_target):
    with iscsi_target.serve() as srv:
        yield srv


@pytest.fixture(scope="session")
def iscsi_seed_store(tmp_path_factory):
    """``store = iscsi_seed_store(size, seed)``: a file of random bytes, built once."""
    from volume.filestore import FileStore
    made: dict[tuple[int, int], object] = {}

    def get(size: int, seed: int = 1):
        key = (size, seed)
        if key not in made:
            path = tmp_path_factory.mktemp("seeded") / f"seed-{seed}-{size}.img"
            random_file(path, size, seed=seed)
            made[key] = FileStore(path, read_only=True)
        return made[key]

    yield get
    for store in made.values():
        store.close()


@pytest.fixture
def iscsi_seeded(request, iscsi_seed_store):
    from ..config import parse_size
    m = request.node.get_closest_marker("scsi_seeded")
    kw = dict(m.kwargs) if m is not None else {}
    size = parse_size(kw.pop("size", "64M"))
    base = iscsi_seed_store(size, kw.pop("seed", 1))
    t = InProcessTarget(**_target_options(request))
    t.add_lu("disk", 0, store=CowStore(base), **kw)
    t.seed_store = base
    yield t
    t.close()


@pytest.fixture
def iscsi_server_process(tmp_path):
    """Factory: ``iscsi_server_process([Target(iqn, [Lun(0, "64M")])])`` -> a started
    :class:`~scsi_target.testing.process.ServerProcess` (stopped after the test).
    ``args=`` adds serve flags; ``iscsi_server_process(None, args=["--disk", ...])``
    configures the server by its flags alone."""
    from .process import ServerProcess
    started: list[ServerProcess] = []

    def start(targets, subdir: str = "srv", *, args=()) -> ServerProcess:
        proc = ServerProcess(tmp_path / f"{subdir}{len(started)}", targets, args=args)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory):
    """A single-node Ceph cluster with a RADOS Gateway, one per session
    (:class:`~scsi_target.testing.ceph.CephCluster`).  Missing Ceph packages skip
    the test, or fail it when CI=true."""
    from .ceph import CephCluster, require_ceph
    require_ceph(rgw=True)
    cluster = CephCluster(tmp_path_factory.mktemp("ceph"), rgw=True).start()
    yield cluster
    cluster.stop()
