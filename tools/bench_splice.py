"""Receiver CPU of Data-In over loopback: recv_into + write against splice(2).

    python -m tools.bench_splice [--size-mib 512] [--rounds 3] [--dir /dev/shm]
                                 [--variants recv,splice,...]

A sender process streams SIZE MiB as our target sends Data-In: a 48-byte
header and a 1 MiB data segment per ``sendmsg`` (the segment a view of a
random buffer).  The receiver, a process of its own, reads each header into
user space and moves the segment into a file on DIR (tmpfs by default) at its
offset, one of these ways:

* ``recv``        -- ``recv_into`` a 4 MiB mmap buffer, ``os.pwrite`` it to the
  file every 4 MiB (what ``diffbackup full`` does today: copy skb -> user,
  then user -> page cache);
* ``recvthread``  -- the same with the writes in a thread of their own and a
  window of 4 buffers, as ``diffbackup``'s ``_Writer`` has them;
* ``splice``      -- ``os.splice`` socket -> pipe -> file at the offset
  (``offset_dst``), pipe grown with F_SETPIPE_SZ to PIPE bytes; ``splice64k``,
  ``splice256k`` the same with smaller pipes, ``splicemove`` with
  SPLICE_F_MOVE|SPLICE_F_MORE;
* ``vmsplice``    -- ``recv_into`` the buffer, then ``vmsplice`` (ctypes) it into
  the pipe and splice the pipe to the file (both copies still happen);
* ``mmap``        -- ``recv_into`` straight into a shared mapping of the output
  file (one copy, skb -> page cache, plus a page fault per 4 KiB page), for
  comparison.

Reported: the receiver's CPU (user + system, getrusage of its process) and wall
time, median of ROUNDS, the variants interleaved round by round.  Each output
is checked against the sent bytes.

RESULT (2 cores shared with other work, kernel 6.18, Python 3.11, 512 MiB to
/dev/shm, pipe-max-size 1 MiB; ``--rounds 11``, 2026-12-01; receiver CPU, median
and range of the 11 rounds, vs ``recv``):

    recv        0.328 s (0.296-0.393)   sys 0.321
    splice      0.309 s (0.219-0.376)   -6%   pipe 1 MiB
    splice256k  0.342 s                 +4%
    splice64k   0.384 s                 +17%  (the default pipe: 16x the splice calls)
    splicemove  0.326 s                 -0%   (SPLICE_F_MOVE is ignored by the kernel)
    vmsplice    0.354 s                 +8%
    mmap        0.519 s                 +58%  (a fault and a zero-fill per tmpfs page)
    mmappop     0.479 s                 +46%  (MADV_POPULATE_WRITE first)

Other runs of recv against splice: 9 rounds 0.296 s / 0.276 s (-7%); 7 rounds
0.326 / 0.289 (-11%), with ``recvthread`` 0.325 (the writer thread changes
nothing); 11 rounds of 64 MiB -10%; 3 rounds of 2 GiB 1.195 / 1.176 (-2%).  So
splice(2) saves well under the 20% of receiver CPU it had to save to be worth a
second receive path, and the client keeps ``recv_into`` + ``write``.

Where it goes (perf record of one round each, share of the receiver's samples):
with ``recv`` about 36% is the recv copy (``_copy_to_iter``) and 23% the tmpfs
write (``copy_folio_from_iter_atomic``), the rest page-cache allocation, memcg
charging and TCP.  With ``splice`` the recv copy is gone, but pipe -> tmpfs
file is ``iter_file_splice_write`` -> ``shmem_file_write_iter``, still a copy
(``memcpy`` of the pipe's skb pages into the page cache), and it costs 26-30%
instead of the write's 23%, most likely because it is now the first read of
bytes the sender wrote on the other core; pipe bookkeeping takes most of the
rest.  Splicing a socket to a file saves a copy only where the file system
can take pages without copying them, which tmpfs (and every page-cache file
system's splice_write) does not.
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import mmap
import os
import random
import resource
import socket
import statistics
import struct
import sys
import tempfile
import time

MiB = 1 << 20
SEG = 1 * MiB          # Data-In segment (MaxRecvDataSegmentLength diffbackup offers)
CHUNK = 4 * MiB        # one READ's buffer (READ_CHUNK_BLOCKS * 512)
BHS = 48
MADV_POPULATE_WRITE = 23   # Linux 5.14 (not in Python 3.11's mmap module)


def _sender(port: int, total: int) -> None:
    src = bytearray(random.Random(1).randbytes(CHUNK))
    view = memoryview(src)
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    off = 0
    while off < total:
        n = min(SEG, total - off)
        hdr = struct.pack(">QQ", off, n).ljust(BHS, b"\0")
        data = view[off % CHUNK:off % CHUNK + n]
        bufs = [hdr, data]
        left = BHS + n
        while left:
            k = s.sendmsg(bufs)
            left -= k
            if left:
                flat = memoryview(b"".join(bytes(b) for b in bufs))[k:]
                bufs = [flat]
        off += n
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()


def _recv_exact(sock, view) -> None:
    got = 0
    while got < len(view):
        k = sock.recv_into(view[got:])
        if not k:
            raise EOFError("sender closed")
        got += k


def _header(sock, hbuf) -> tuple[int, int]:
    _recv_exact(sock, hbuf)
    return struct.unpack_from(">QQ", hbuf)


def recv_receiver(sock, fd: int, total: int, opts) -> None:
    buf = mmap.mmap(-1, CHUNK)
    view = memoryview(buf)
    hbuf = memoryview(bytearray(BHS))
    done = 0
    base = 0
    while done < total:
        off, n = _header(sock, hbuf)
        at = off - base
        _recv_exact(sock, view[at:at + n])
        done += n
        if at + n == CHUNK or done == total:
            w = 0
            while w < at + n:
                w += os.pwrite(fd, view[w:at + n], base + w)
            base += CHUNK


def recvthread_receiver(sock, fd: int, total: int, opts) -> None:
    """recv_into buffers of a window, written by a thread of its own (diffbackup's
    _Writer): the write may run on the other core than the recv that filled it."""
    import queue
    import threading
    free: queue.Queue = queue.Queue()
    for _ in range(opts.depth):
        free.put(mmap.mmap(-1, CHUNK))
    todo: queue.Queue = queue.Queue(opts.depth)

    def writer() -> None:
        while (item := todo.get()) is not None:
            buf, base, end = item
            view = memoryview(buf)
            w = 0
            while w < end:
                w += os.pwrite(fd, view[w:end], base + w)
            view.release()
            free.put(buf)

    t = threading.Thread(target=writer)
    t.start()
    hbuf = memoryview(bytearray(BHS))
    done = base = 0
    buf = free.get()
    view = memoryview(buf)
    try:
        while done < total:
            off, n = _header(sock, hbuf)
            at = off - base
            _recv_exact(sock, view[at:at + n])
            done += n
            if at + n == CHUNK or done == total:
                view.release()
                todo.put((buf, base, at + n))
                base += CHUNK
                if done < total:
                    buf = free.get()
                    view = memoryview(buf)
    finally:
        todo.put(None)
        t.join()


def _pipe(size: int) -> tuple[int, int]:
    r, w = os.pipe()
    if size:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)
    return r, w


def splice_receiver(sock, fd: int, total: int, opts) -> None:
    r, w = _pipe(opts.pipe)
    flags = opts.flags
    hbuf = memoryview(bytearray(BHS))
    sfd = sock.fileno()
    done = 0
    try:
        while done < total:
            off, n = _header(sock, hbuf)
            left = n
            while left:
                k = os.splice(sfd, w, min(left, opts.pipe or 65536), flags=flags)
                if not k:
                    raise EOFError("sender closed")
                left -= k
                while k:
                    m = os.splice(r, fd, k, offset_dst=off, flags=flags)
                    k -= m
                    off += m
            done += n
    finally:
        os.close(r)
        os.close(w)


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def vmsplice_receiver(sock, fd: int, total: int, opts) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.vmsplice.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_size_t,
                              ctypes.c_uint]
    libc.vmsplice.restype = ctypes.c_ssize_t
    r, w = _pipe(opts.pipe)
    buf = mmap.mmap(-1, CHUNK)
    view = memoryview(buf)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    hbuf = memoryview(bytearray(BHS))
    done = base = 0
    try:
        while done < total:
            off, n = _header(sock, hbuf)
            at = off - base
            _recv_exact(sock, view[at:at + n])
            done += n
            if at + n == CHUNK or done == total:
                pos, end = 0, at + n
                while pos < end:
                    iov = _Iovec(addr + pos, min(end - pos, opts.pipe))
                    k = libc.vmsplice(w, ctypes.byref(iov), 1, 0)
                    if k < 0:
                        raise OSError(ctypes.get_errno(), "vmsplice")
                    while k:
                        m = os.splice(r, fd, k, offset_dst=base + pos)
                        k -= m
                        pos += m
                base += CHUNK
    finally:
        del view
        os.close(r)
        os.close(w)


def mmap_receiver(sock, fd: int, total: int, opts) -> None:
    os.ftruncate(fd, total)
    m = mmap.mmap(fd, total, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    if opts.populate:
        m.madvise(MADV_POPULATE_WRITE)
    view = memoryview(m)
    hbuf = memoryview(bytearray(BHS))
    done = 0
    while done < total:
        off, n = _header(sock, hbuf)
        _recv_exact(sock, view[off:off + n])
        done += n
    view.release()
    m.close()


VARIANTS = {
    "recv": (recv_receiver, {}),
    "recvthread": (recvthread_receiver, {"depth": 4}),
    "splice": (splice_receiver, {"pipe": None, "flags": 0}),
    "splice64k": (splice_receiver, {"pipe": 65536, "flags": 0}),
    "splice256k": (splice_receiver, {"pipe": 262144, "flags": 0}),
    "splicemove": (splice_receiver, {"pipe": None, "flags": os.SPLICE_F_MOVE | os.SPLICE_F_MORE}),
    "vmsplice": (vmsplice_receiver, {"pipe": None}),
    "mmap": (mmap_receiver, {"populate": False}),
    "mmappop": (mmap_receiver, {"populate": True}),
}


class _Opts:
    def __init__(self, **kw) -> None:
        self.__dict__.update(kw)


def _pipe_max() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return int(f.read())
    except OSError:
        return 65536


def run_one(name: str, total: int, directory: str) -> tuple[float, float, float, float]:
    """(user, sys, wall, check) of one receive of ``total`` bytes by ``name``."""
    fn, kw = VARIANTS[name]
    kw = dict(kw)
    if "pipe" in kw and kw["pipe"] is None:
        kw["pipe"] = _pipe_max()
    opts = _Opts(**kw)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    path = os.path.join(directory, f"bench-splice-{name}.out")
    rfd, wfd = os.pipe()
    sender = os.fork()
    if sender == 0:
        try:
            lsock.close()
            _sender(port, total)
        finally:
            os._exit(0)
    receiver = os.fork()
    if receiver == 0:
        try:
            os.close(rfd)
            sock, _ = lsock.accept()
            lsock.close()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            fn(sock, fd, total, opts)
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            os.close(fd)
            sock.send(b"x")
            sock.close()
            os.write(wfd, struct.pack("ddd", r1.ru_utime - r0.ru_utime,
                                      r1.ru_stime - r0.ru_stime, wall))
        finally:
            os._exit(0)
    lsock.close()
    os.close(wfd)
    raw = b""
    while len(raw) < 24:
        k = os.read(rfd, 24 - len(raw))
        if not k:
            break
        raw += k
    os.close(rfd)
    os.waitpid(sender, 0)
    os.waitpid(receiver, 0)
    if len(raw) < 24:
        raise SystemExit(f"receiver {name} failed")
    user, sys_, wall = struct.unpack("ddd", raw)
    _check(path, total)
    os.unlink(path)
    return user, sys_, wall


def _check(path: str, total: int) -> None:
    src = random.Random(1).randbytes(CHUNK)
    with open(path, "rb") as f:
        off = 0
        while off < total:
            got = f.read(min(CHUNK, total - off))
            if got != src[:len(got)]:
                raise SystemExit(f"{path}: wrong data near offset {off}")
            off += len(got)
        if f.read(1):
            raise SystemExit(f"{path}: longer than {total}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_splice", description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm")
                    else tempfile.gettempdir())
    ap.add_argument("--variants", default=",".join(VARIANTS))
    a = ap.parse_args(argv)
    names = [v for v in a.variants.split(",") if v]
    for v in names:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r} (one of {', '.join(VARIANTS)})")
    total = a.size_mib * MiB
    print(f"{a.size_mib} MiB to {a.dir}, {SEG // MiB} MiB segments, pipe-max-size "
          f"{_pipe_max()}, {a.rounds} rounds", flush=True)
    res: dict[str, list] = {v: [] for v in names}
    for _ in range(a.rounds):
        for v in names:
            res[v].append(run_one(v, total, a.dir))
    base = statistics.median(u + s for u, s, _ in res[names[0]])
    for v in names:
        rs = res[v]
        cpu = statistics.median(u + s for u, s, _ in rs)
        print(f"  {v:11s} cpu {cpu:.3f} s (user {statistics.median(u for u, _, _ in rs):.3f}, "
              f"sys {statistics.median(s for _, s, _ in rs):.3f})  wall "
              f"{statistics.median(w for _, _, w in rs):.3f} s  "
              f"{(cpu / base - 1) * 100:+.0f}% vs {names[0]}  (min "
              f"{min(u + s for u, s, _ in rs):.3f}; every round: "
              f"{' '.join(f'{u + s:.3f}' for u, s, _ in rs)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
