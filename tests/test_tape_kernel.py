"""A real kernel as the tape client: Linux st (mt-st, busybox tar/dd) against our tape LUNs.

One boot of a Debian cloud kernel under qemu (TCG) with two of our tape LUNs
attached through qemu's iSCSI driver as SCSI generic devices: /dev/nst0 on a
32 MiB cartridge, /dev/nst1 on a 2 MiB one for the early-warning run.  The
guest script (GUEST) prints ``@@ step rc=N`` lines and the outputs the test
checks.
"""
from __future__ import annotations

import re

import pytest

from scsi_target.testing.external import require_tool
from tape import TapeImage
from tape_guest import boot, build_initramfs, kernel, steps
from scsi_target.testing.process import ServerProcess

pytestmark = [pytest.mark.interop, pytest.mark.slow]

GUEST = r"""
T=/dev/nst0
s() { echo "@@ $1 rc=$2"; }
mkdir -p /tmp/data/sub /tmp/out1 /tmp/out2
dd if=/dev/urandom of=/tmp/data/a bs=1024 count=700 2>/dev/null
dd if=/dev/urandom of=/tmp/data/sub/b bs=1000 count=33 2>/dev/null
echo hello > /tmp/data/c
(cd /tmp/data && md5sum a sub/b c) > /tmp/sums

mt-st -f $T status; s status $?
mt-st -f $T setblk 0; s setblk0 $?
# variable-block mode: every write() is one record; a pipe makes them of mixed sizes
tar cf - -C /tmp/data . | dd of=$T bs=10240 2>/dev/null; s tar_variable $?
tar cf /tmp/arch.tar -C /tmp/data .
mt-st -f $T setblk 10240; s setblk10240 $?
dd if=/tmp/arch.tar of=$T bs=10240 conv=sync 2>/dev/null; s dd_fixed $?
mt-st -f $T weof 1; s weof $?
echo "@@tell $(mt-st -f $T tell)"
mt-st -f $T rewind; s rewind $?

mt-st -f $T setblk 0
dd if=$T bs=65536 2>/dev/null | tar tf - > /tmp/list; s tar_list $?
echo "@@files $(grep -c . /tmp/list)"
echo "@@status1 $(mt-st -f $T status | grep -o 'File number=[0-9]*')"
mt-st -f $T rewind
dd if=$T bs=65536 2>/dev/null | tar xf - -C /tmp/out1; s tar_extract $?
(cd /tmp/out1 && md5sum -c /tmp/sums); s md5_variable $?

mt-st -f $T rewind
mt-st -f $T fsf 1; s fsf $?
echo "@@status2 $(mt-st -f $T status | grep -o 'File number=[0-9]*')"
mt-st -f $T setblk 10240
dd if=$T bs=10240 2>/dev/null | tar xf - -C /tmp/out2; s tar_fixed_extract $?
(cd /tmp/out2 && md5sum -c /tmp/sums); s md5_fixed $?

mt-st -f $T eod; s eod $?
echo "@@status3 $(mt-st -f $T status | grep -o 'File number=[0-9]*')"
mt-st -f $T bsf 2; s bsf $?
mt-st -f $T seek 0; s seek $?
echo "@@tell0 $(mt-st -f $T tell)"

E=/dev/nst1
i=0; while [ ! -e $E ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mt-st -f $E setblk 0
dd if=/dev/zero of=$E bs=65536 count=100 2> /tmp/ew; s dd_until_ew $?
echo "@@ew $(grep 'records out' /tmp/ew)"
echo "@@ewerr $(grep -i 'space' /tmp/ew)"
mt-st -f $E rewind
dd if=$E of=/dev/null bs=65536 2> /tmp/ewr; s dd_read_back $?
echo "@@ewr $(grep 'records in' /tmp/ewr)"
"""


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    for tool in ("qemu-system-x86_64", "busybox", "mt-st"):
        require_tool(tool)
    if kernel() is None:
        require_tool("vmlinuz-cloud-amd64 (linux-image-cloud-amd64)")
    tmp = tmp_path_factory.mktemp("tape-kernel")
    big, small = tmp / "big.img", tmp / "small.img"
    TapeImage.create(big, 32 << 20).close()
    TapeImage.create(small, 2 << 20, early_warning=256 << 10).close()
    initrd = build_initramfs(tmp / "initrd.cpio", GUEST)
    srv = ServerProcess.from_flags(tmp, "--tape", big, "--tape", small).start()
    try:
        out = boot(initrd, srv.url(0), extra_luns=[srv.url(1)], log=tmp / "console.log")
    finally:
        srv.stop()
    assert "@@DONE" in out, out[-3000:]
    return out


def _value(console: str, tag: str) -> str:
    m = re.search(rf"@@{tag} (.*)", console)
    return m.group(1).strip() if m else ""


def test_st_sees_a_tape_and_writes_tar_archives(console):
    st = steps(console)
    for name in ("st0", "status", "setblk0", "tar_variable", "setblk10240", "dd_fixed", "weof",
                 "rewind"):
        assert st.get(name) == 0, (name, console[-3000:])


def test_tar_round_trips_in_variable_and_fixed_block_mode(console):
    st = steps(console)
    for name in ("tar_list", "tar_extract", "md5_variable", "fsf", "tar_fixed_extract",
                 "md5_fixed"):
        assert st.get(name) == 0, (name, console[-3000:])
    assert int(_value(console, "files")) >= 4
    assert _value(console, "status1") == "File number=1"  # read to the filemark and past it
    assert _value(console, "status2") == "File number=1"


def test_mt_positioning(console):
    st = steps(console)
    for name in ("eod", "bsf", "seek"):
        assert st.get(name) == 0, (name, console[-3000:])
    assert _value(console, "status3") == "File number=3"  # two archives + the extra filemark
    assert _value(console, "tell0") == "At block 0."


def test_write_until_early_warning(console):
    st = steps(console)
    assert st.get("dd_until_ew") != 0  # dd stops: the drive reported end of medium
    written = int(_value(console, "ew").split("+")[0])
    assert 20 <= written < 40, console[-2000:]  # 2 MiB cartridge, 256 KiB zone, 64 KiB records
    assert "space" in _value(console, "ewerr").lower()
    assert st.get("dd_read_back") == 0
    assert int(_value(console, "ewr").split("+")[0]) == written
