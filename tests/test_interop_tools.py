"""libiscsi's command line tools against the real server: discovery, INQUIRY and
VPD pages, READ CAPACITY(16), CHAP and initiator ACLs."""
from __future__ import annotations

import re

import pytest

from conftest import (ALLOWED_INITIATOR, CHAP_SECRET, CHAP_USER, IQN_ACL, IQN_CHAP, IQN_CU_LU,
                      IQN_PLAIN, IQN_QEMU, LUN_4K_PHYSICAL, LUN_REMOVABLE)
from scsi_target.testing.external import require_tool, run_tool
pytestmark = pytest.mark.interop


def tool(name: str, *args: str, timeout: float = 30.0):
    return run_tool([require_tool(name), *args], timeout=timeout)


def ok(name: str, *args: str) -> str:
    r = tool(name, *args)
    assert r.returncode == 0, f"{name} {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def inq_page(url: str, page: int) -> str:
    # iscsi-inq reads -c with atoi(): decimal only.
    return ok("iscsi-inq", "-e", "1", "-c", str(page), url)


def fields(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in
            (line.partition(":") for line in text.splitlines() if ":" in line)}


# ------------------------------------------------------------------ discovery
def cred_portal(srv) -> str:
    # iscsi-ls logs in to every advertised target to list its LUNs; with the
    # CHAP target among them it needs the credentials (targets without CHAP
    # accept the login anyway).
    return f"iscsi://{CHAP_USER}%{CHAP_SECRET}@{srv.host}:{srv.port}"


def test_iscsi_ls_discovers_targets_and_luns(interop_server):
    out = ok("iscsi-ls", "-s", cred_portal(interop_server))
    portal = f"{interop_server.host}:{interop_server.port}"
    targets = dict(re.findall(r"^Target:(\S+) Portal:(\S+)", out, re.M))
    assert targets[IQN_PLAIN].startswith(portal), out
    assert IQN_QEMU in targets and IQN_CHAP in targets
    # The ACL target is not even advertised to an initiator it would refuse.
    assert IQN_ACL not in targets
    # LUNs of the plain target: 64 MiB of 512-byte blocks and 32 MiB of 4096-byte blocks.
    section = out.split(f"Target:{IQN_PLAIN} ")[1].split("Target:")[0]
    luns = re.findall(r"^Lun:(\d+)\s+Type:(\S+)", section, re.M)
    assert luns == [("0", "DIRECT_ACCESS"), ("1", "DIRECT_ACCESS")], out


def test_iscsi_ls_without_credentials_stops_at_chap_target(interop_server):
    r = tool("iscsi-ls", "-s", interop_server.portal_url)
    assert r.returncode != 0
    assert f"Target:{IQN_CHAP} " in r.stdout           # discovery itself is open
    assert "Authentication failure" in r.stdout + r.stderr


def test_iscsi_ls_shows_acl_target_to_allowed_initiator(interop_server):
    out = ok("iscsi-ls", "-s", "-i", ALLOWED_INITIATOR, cred_portal(interop_server))
    assert f"Target:{IQN_ACL} " in out


# ------------------------------------------------------------------ INQUIRY
def test_iscsi_inq_standard(interop_server):
    f = fields(ok("iscsi-inq", interop_server.url(0, IQN_PLAIN)))
    assert f["Peripheral Qualifier"] == "CONNECTED"
    assert f["Peripheral Device Type"] == "DIRECT_ACCESS"
    assert f["Removable"] == "0"
    assert f["Vendor"] == "PYSCSI"
    assert f["Product"] == "VIRTUAL-DISK"
    assert f["CmdQue"] == "1"


def test_iscsi_inq_supported_pages(interop_server):
    out = inq_page(interop_server.url(0, IQN_PLAIN), 0x00)
    pages = {int(p, 16) for p in re.findall(r"^Page:0x([0-9a-f]{2})", out, re.M)}
    assert {0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2} <= pages, out


def test_iscsi_inq_serial_differs_per_lun(interop_server):
    s0 = re.search(r"Unit Serial Number:\[(\S+)\]", inq_page(interop_server.url(0, IQN_PLAIN), 0x80))
    s1 = re.search(r"Unit Serial Number:\[(\S+)\]", inq_page(interop_server.url(1, IQN_PLAIN), 0x80))
    assert s0 and s1 and s0.group(1) != s1.group(1)


def test_iscsi_inq_device_identification(interop_server):
    out = inq_page(interop_server.url(0, IQN_PLAIN), 0x83)
    designators = re.findall(r"Designator Type:\(\d+\) (\S+)\s*\nDesignator:\[([^\]]*)\]", out)
    kinds = [k for k, _ in designators]
    assert "NAA" in kinds and "T10_VENDORT_ID" in kinds, out
    names = [v for k, v in designators if k == "SCSI_NAME_STRING"]
    assert IQN_PLAIN in names and any(n.startswith(IQN_PLAIN + ",t,0x") for n in names), out


def test_iscsi_inq_block_limits(interop_server):
    f = fields(inq_page(interop_server.url(0, IQN_PLAIN), 0xB0))
    assert int(f["maximum transfer length"]) > 0
    assert int(f["maximum compare and write length"]) >= 1
    assert int(f["maximum write same length"]) > 0
    assert f["wsnz"] in ("0", "1")


def test_iscsi_inq_block_characteristics(interop_server):
    f = fields(inq_page(interop_server.url(0, IQN_PLAIN), 0xB1))
    assert f["Medium Rotation Rate"].startswith("1")   # 1 = non-rotating medium


def test_iscsi_inq_logical_block_provisioning(interop_server):
    f = fields(inq_page(interop_server.url(0, IQN_PLAIN), 0xB2))
    # Sparse file on a file system that punches holes: thin provisioned.
    assert f["lbpu"] == "1" and f["lbpws"] == "1" and f["lbpws10"] == "1"
    assert f["provisioning type"] == "2"


def test_iscsi_inq_unknown_page_fails(interop_server):
    r = tool("iscsi-inq", "-e", "1", "-c", str(0xC7), interop_server.url(0, IQN_PLAIN))
    assert r.returncode != 0


# ------------------------------------------------------------------ capacity
def capacity(url: str) -> dict[str, int]:
    """iscsi-readcapacity16's NAME:value pairs (several per line) as integers."""
    out = ok("iscsi-readcapacity16", url)
    return {k.strip(): int(v) for k, v in re.findall(r"([A-Za-z_][A-Za-z_ ]*):(\d+)", out)}


@pytest.mark.parametrize("lun, size, block", [(0, 64 << 20, 512), (1, 32 << 20, 4096)])
def test_iscsi_readcapacity16(interop_server, lun, size, block):
    f = capacity(interop_server.url(lun, IQN_PLAIN))
    assert f["LOGICAL BLOCK LENGTH IN BYTES"] == block
    assert f["RETURNED LOGICAL BLOCK ADDRESS"] == size // block - 1
    assert f["Total size"] == size
    assert f["LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT"] == 0
    assert f["LOWEST ALIGNED LOGICAL BLOCK ADDRESS"] == 0
    assert f["PROT_EN"] == 0


def test_iscsi_readcapacity16_physical_block_exponent(interop_server):
    f = capacity(interop_server.url(LUN_4K_PHYSICAL, IQN_CU_LU))
    assert f["LOGICAL BLOCK LENGTH IN BYTES"] == 512
    assert f["LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT"] == 3     # 4096 / 512 = 2**3
    granularity = fields(inq_page(interop_server.url(LUN_4K_PHYSICAL, IQN_CU_LU), 0xB0))
    assert granularity["optimal transfer length granularity"] == "8"
    assert granularity["wsnz"] == "0"


def test_removable_lun_reports_rmb(interop_server):
    f = fields(ok("iscsi-inq", interop_server.url(LUN_REMOVABLE, IQN_CU_LU)))
    assert f["Removable"] == "1"


# ------------------------------------------------------------------ CHAP
def test_chap_right_secret_logs_in(interop_server):
    out = ok("iscsi-inq", interop_server.url(0, IQN_CHAP, CHAP_USER, CHAP_SECRET))
    assert "DIRECT_ACCESS" in out


@pytest.mark.parametrize("user, secret", [
    (CHAP_USER, "wrong-secret-0000"),
    ("someone-else", CHAP_SECRET),
    (None, None),
], ids=["wrong-secret", "wrong-user", "no-credentials"])
def test_chap_failures_are_login_errors(interop_server, user, secret):
    r = tool("iscsi-inq", interop_server.url(0, IQN_CHAP, user, secret))
    assert r.returncode != 0
    assert "login" in (r.stdout + r.stderr).lower(), r.stderr


# ------------------------------------------------------------------ ACL
def test_acl_admits_listed_initiator(interop_server):
    out = ok("iscsi-inq", "-i", ALLOWED_INITIATOR, interop_server.url(0, IQN_ACL))
    assert "DIRECT_ACCESS" in out


def test_acl_refuses_other_initiators(interop_server):
    for name in ("iqn.2026-11.org.pyscsi:intruder", None):
        args = ["-i", name] if name else []
        r = tool("iscsi-inq", *args, interop_server.url(0, IQN_ACL))
        assert r.returncode != 0, r.stdout
        assert "login" in (r.stdout + r.stderr).lower(), r.stderr
    # The server keeps serving the others.
    ok("iscsi-readcapacity16", interop_server.url(0, IQN_PLAIN))
