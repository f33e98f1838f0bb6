"""`diffbackup` on S3: `catalog s3://BUCKET/PREFIX` and `cleanup s3://BUCKET/PREFIX`.

Backups to and restores from ``s3://`` names go through the stream stores of
``volume/streamstore.py`` like stream files do (tools/diffbackup.py); this
module only lists what a prefix holds and removes unfinished uploads.  The
store itself is ``volume/s3streams.py``, the catalog logic
``volume/streamcatalog.py`` (docs/s3-backups.md).
"""
from __future__ import annotations

import datetime
import time

from rich.console import Console
from rich.table import Table

from tools.diffbackup import EXIT_FAILED, EXIT_OK, Failure, _progress, _s3_options, out


def _store(args, url: str):
    from volume.s3streams import S3Streams, parse_s3_url
    from volume.streamstore import StreamStoreError
    try:
        bucket, prefix = parse_s3_url(url, want_key=False)
        store = S3Streams(bucket, **_s3_options(args))
        store.check_bucket()
    except StreamStoreError as e:
        raise Failure(str(e)) from None
    return store, prefix


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def cmd_catalog_s3(args) -> int:
    from volume import backup as B
    from volume.streamcatalog import chains, describe
    from volume.streamstore import StreamStoreError
    store, prefix = _store(args, args.tape)
    try:
        listed = store.list(prefix)
        entries = []
        for o in listed:
            ref = store.ref(o.name)
            entries.append(describe(ref, o.modified))
        verified: dict[str, str] = {}
        if args.verify:
            with _progress(not args.quiet) as prog:
                task = prog.add_task("verify", total=sum(e.size for e in entries))
                done = 0
                for e in entries:
                    if e.header is None:
                        continue
                    rep = B.verify([store.ref(e.name[len(f"s3://{store.bucket}/"):])])
                    s = rep.streams[0]
                    verified[e.name] = "ok" if s.ok else \
                        f"DAMAGED: {(s.errors or [d.reason for d in s.damage])[0]}"
                    done += e.size
                    prog.update(task, completed=done)
        stale = store.uploads(prefix)
    except StreamStoreError as e:
        raise Failure(str(e)) from None
    base = f"s3://{store.bucket}/"
    t = Table(title=f"{args.tape}")
    for col in ("object", "type", "generations", "blocks", "stream bytes", "created",
                "trailer", "verified"):
        t.add_column(col)
    bad = False
    for e in entries:
        h = e.header
        v = verified.get(e.name, "not checked")
        bad |= not e.ok or v.startswith("DAMAGED")
        if h is None:
            t.add_row(e.name[len(base):], "-", "-", "-", str(e.size), _when(e.modified), "-",
                      f"not a backup stream: {e.problem}")
            continue
        t.add_row(e.name[len(base):], "full" if h.full else "differential",
                  f"{h.generation_range[0]}..{h.generation_range[1]}", str(h.block_count),
                  str(e.size), _when(h.created_ns / 1e9),
                  "yes" if e.ok else f"NO ({e.problem})", v)
    Console(highlight=False, width=max(out.width, 160)).print(t)
    for c in chains(entries):
        kinds = sum(1 for m in c.members if not m.header.full)
        state = "complete" if c.complete else "INCOMPLETE"
        out.print(f"chain of full backup {c.base_id.hex()[:16]}: {len(c.members) - kinds} full, "
                  f"{kinds} differential, generations up to {c.newest}: {state}"
                  + ("" if c.complete else f" ({'; '.join(c.problems)})"), markup=False)
        bad |= not c.complete
    for u in stale:
        out.print(f"unfinished upload of {base}{u.key} started {_when(u.initiated)} "
                  f"(a killed or running backup; not an object)", markup=False)
    if stale:
        out.print(f"{len(stale)} unfinished uploads: `diffbackup cleanup {args.tape}` aborts "
                  f"those older than an hour and frees their space", markup=False)
    out.print(f"{sum(1 for e in entries if e.header is not None)} backup streams, "
              f"{len(entries)} objects", markup=False)
    return EXIT_FAILED if bad else EXIT_OK


def cmd_cleanup(args) -> int:
    from volume.streamstore import StreamStoreError
    if args.older_than < 0:
        raise Failure("--older-than must be 0 or more", 2)
    store, prefix = _store(args, args.prefix)
    now = time.time()
    aborted = kept = 0
    try:
        for u in store.uploads(prefix):
            name = f"s3://{store.bucket}/{u.key}"
            if now - u.initiated < args.older_than:
                kept += 1
                out.print(f"kept {name} (started {_when(u.initiated)}, under "
                          f"{args.older_than:g} s ago: maybe a backup running now)", markup=False)
                continue
            if args.dry_run:
                out.print(f"would abort {name} (started {_when(u.initiated)})", markup=False)
            else:
                store.abort_upload(u.key, u.upload_id)
                out.print(f"aborted {name} (started {_when(u.initiated)})", markup=False)
            aborted += 1
    except StreamStoreError as e:
        raise Failure(str(e)) from None
    verb = "would abort" if args.dry_run else "aborted"
    out.print(f"{verb} {aborted} unfinished uploads, kept {kept}", markup=False)
    return EXIT_OK
