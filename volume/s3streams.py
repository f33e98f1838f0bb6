"""Backup streams in an S3 bucket (AWS, Ceph RGW, MinIO...): a stream store over boto3.

Writing is a multipart upload fed as the stream is produced: parts of
``part_size`` bytes (default 16 MiB), at most ``uploads`` of them in flight
while the next one fills, so memory stays at ``(uploads + 1) * part_size``
whatever the stream's length, and no temporary file is made.  The upload is
completed only by :meth:`S3Writer.commit`, after the last byte; any failure,
or :meth:`S3Writer.abort`, aborts it, so no partial object ever appears under
the key (a killed process leaves an *unfinished upload*, invisible as an
object; :meth:`S3Streams.uploads` lists them and :meth:`S3Streams.abort_upload`
removes them).  Each part carries its Content-MD5, which the server checks.

Reading streams the object's body, reopened with a ranged GET pinned to the
object's ETag when the connection drops (so two versions are never spliced).

Credentials and region come from boto3's default chain (environment,
``~/.aws/credentials``, profile); the endpoint from ``endpoint``, else boto3's
own configuration (``AWS_ENDPOINT_URL``, ``endpoint_url`` in the profile).
boto3 is the optional extra ``scsi-target[s3]``.
"""
from __future__ import annotations

import base64
import collections
import hashlib
import io
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from .streamstore import (NoSuchStream, StoredStream, StreamExists, StreamRef, StreamStoreError,
                          StreamWriter)

__all__ = ["S3Streams", "S3Writer", "S3Ref", "Upload", "parse_s3_url", "DEFAULT_PART_SIZE",
           "MIN_PART_SIZE", "MAX_PART_SIZE", "DEFAULT_UPLOADS", "MAX_PARTS"]

DEFAULT_PART_SIZE = 16 << 20
MIN_PART_SIZE = 5 << 20          # S3's minimum for every part but the last
MAX_PART_SIZE = 1 << 30          # ours (S3 allows 5 GiB): memory is a few parts
MAX_PARTS = 10000                # S3's limit: streams up to part_size * 10000
DEFAULT_UPLOADS = 2
READ_CHUNK = 8 << 20
_RETRIES = 3
INSTALL_HINT = "s3:// needs boto3: pip install 'scsi-target[s3]' (or pip install boto3)"


def parse_s3_url(url: str, *, want_key: bool) -> tuple[str, str]:
    """``s3://BUCKET/KEY`` -> (bucket, key); with ``want_key`` False the key is a prefix."""
    if not url.startswith("s3://"):
        raise StreamStoreError(f"{url}: not an s3://BUCKET/KEY URL")
    bucket, _, key = url[5:].partition("/")
    if not bucket:
        raise StreamStoreError(f"{url}: no bucket (s3://BUCKET/KEY)")
    if want_key and (not key or key.endswith("/")):
        raise StreamStoreError(f"{url}: no object key (s3://BUCKET/KEY)")
    return bucket, key


def _boto():
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError:
        raise StreamStoreError(INSTALL_HINT) from None
    return boto3, botocore


def _describe(exc: BaseException, bucket: str, what: str) -> str:
    """One line for a boto3/botocore failure."""
    _b3, bc = _boto()
    E = bc.exceptions
    where = f"s3://{bucket}"
    if isinstance(exc, E.NoCredentialsError):
        return f"{what}: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, " \
               f"AWS_PROFILE or ~/.aws/credentials)"
    if isinstance(exc, (E.EndpointConnectionError, E.ConnectTimeoutError)):
        return f"{what}: cannot reach the S3 endpoint ({' '.join(str(exc).split())})"
    if isinstance(exc, E.ReadTimeoutError):
        return f"{what}: the S3 endpoint stopped answering ({' '.join(str(exc).split())})"
    if isinstance(exc, E.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        msg = err.get("Message") or ""
        if code in ("NoSuchBucket",) or (code == "404" and "bucket" in what):
            return f"{what}: no such bucket {where}"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return f"{what}: the S3 credentials were refused ({code})"
        if code in ("AccessDenied", "403") or status == 403:
            return f"{what}: access denied to {where} (bad credentials or no permission)"
        if code in ("NoSuchUpload",):
            return f"{what}: the multipart upload is gone (aborted by someone else?)"
        if code in ("PreconditionFailed",) or status == 412:
            # reads are pinned to the ETag of the object first seen (S3Ref.etag)
            return f"{what}: the object was replaced since it was first read"
        return f"{what}: {code or status} {' '.join(msg.split())}".rstrip()
    if isinstance(exc, E.BotoCoreError):
        return f"{what}: {' '.join(str(exc).split())}"
    if isinstance(exc, OSError):
        return f"{what}: {exc.strerror or exc}"
    return f"{what}: {type(exc).__name__}: {' '.join(str(exc).split())}"


def _is_not_found(exc: BaseException) -> bool:
    _b3, bc = _boto()
    if isinstance(exc, bc.exceptions.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")
    return False


@dataclass
class Upload:
    """An unfinished multipart upload (a writer that was killed, or one running now)."""
    key: str
    upload_id: str
    initiated: float           # Unix seconds


class S3Streams:
    """Streams as objects of one bucket."""

    def __init__(self, bucket: str, *, endpoint: str | None = None,
                 part_size: int = DEFAULT_PART_SIZE, uploads: int = DEFAULT_UPLOADS,
                 md5: bool = True, client=None) -> None:
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise StreamStoreError(f"part size {part_size} is not {MIN_PART_SIZE >> 20} MiB.."
                                   f"{MAX_PART_SIZE >> 20} MiB")
        if not 1 <= uploads <= 16:
            raise StreamStoreError(f"parts in flight {uploads} is not 1..16")
        self.bucket = bucket
        self.part_size = part_size
        self.in_flight = uploads
        # Content-MD5 of every part: the server refuses a part damaged on the way
        # (boto3 retries it).  Without it the stream's own CRC32C still detect
        # damage, but only when the stream is verified or restored.
        self.md5 = md5
        self._client = client if client is not None else self._make_client(endpoint)

    @staticmethod
    def _make_client(endpoint: str | None):
        boto3, bc = _boto()
        cfg = bc.config.Config(
            retries={"max_attempts": _RETRIES, "mode": "standard"},
            connect_timeout=10, read_timeout=120,
            max_pool_connections=32,
            # Checksums only where the API requires them: S3-compatible stores
            # (RGW 16 among them) refuse the aws-chunked trailers boto3 sends
            # by default; every part carries a Content-MD5 instead.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required")
        try:
            return boto3.session.Session().client("s3", endpoint_url=endpoint or None,
                                                  config=cfg)
        except bc.exceptions.BotoCoreError as e:
            raise StreamStoreError(_describe(e, "", "S3 client")) from None
        except ValueError as e:            # a malformed endpoint URL
            raise StreamStoreError(f"S3 endpoint {endpoint!r}: {e}") from None

    def _call(self, what: str, fn, **kw):
        try:
            return fn(Bucket=self.bucket, **kw)
        except Exception as e:       # noqa: BLE001 - every boto failure becomes one line
            raise StreamStoreError(_describe(e, self.bucket, what)) from None

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # -- checks -----------------------------------------------------------------
    def check_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as e:       # noqa: BLE001
            if _is_not_found(e):
                raise StreamStoreError(f"s3://{self.bucket}: no such bucket") from None
            raise StreamStoreError(_describe(e, self.bucket, f"s3://{self.bucket}")) from None

    def head(self, key: str) -> dict | None:
        try:
            return self._client.head_object(Bucket=self.bucket, Key=key)
        except Exception as e:       # noqa: BLE001
            if _is_not_found(e):
                return None
            raise StreamStoreError(_describe(e, self.bucket, self.url(key))) from None

    # -- writing --------------------------------------------------------------
    def create(self, key: str, *, force: bool = False) -> "S3Writer":
        """Start storing a stream under ``key`` (refused if one is there, unless ``force``)."""
        self.check_bucket()
        if not force and self.head(key) is not None:
            raise StreamExists(f"{self.url(key)} exists (give --force to replace it)")
        r = self._call(f"starting the upload of {self.url(key)}",
                       self._client.create_multipart_upload, Key=key,
                       ContentType="application/octet-stream",
                       Metadata={"diffbackup-format": "1"})
        return S3Writer(self, key, r["UploadId"], force)

    # -- reading --------------------------------------------------------------
    def ref(self, key: str) -> "S3Ref":
        h = self.head(key)
        if h is None:
            self.check_bucket()
            raise NoSuchStream(f"{self.url(key)}: no such object")
        return S3Ref(self, key, h)

    def list(self, prefix: str = "") -> list[StoredStream]:
        out: list[StoredStream] = []
        token = None
        while True:
            kw = {"Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            r = self._call(f"listing s3://{self.bucket}/{prefix}", self._client.list_objects_v2,
                           **kw)
            for o in r.get("Contents", []):
                out.append(StoredStream(o["Key"], int(o["Size"]),
                                        o["LastModified"].timestamp()))
            if not r.get("IsTruncated"):
                return out
            token = r["NextContinuationToken"]

    def uploads(self, prefix: str = "") -> list[Upload]:
        """Unfinished multipart uploads under ``prefix``."""
        out: list[Upload] = []
        kw: dict = {"Prefix": prefix}
        while True:
            r = self._call(f"listing the unfinished uploads of s3://{self.bucket}/{prefix}",
                           self._client.list_multipart_uploads, **kw)
            for u in r.get("Uploads", []):
                out.append(Upload(u["Key"], u["UploadId"], u["Initiated"].timestamp()))
            if not r.get("IsTruncated"):
                return out
            kw = {"Prefix": prefix, "KeyMarker": r.get("NextKeyMarker", ""),
                  "UploadIdMarker": r.get("NextUploadIdMarker", "")}

    def abort_upload(self, key: str, upload_id: str) -> None:
        self._call(f"aborting the upload of {self.url(key)}",
                   self._client.abort_multipart_upload, Key=key, UploadId=upload_id)

    def delete(self, key: str) -> None:
        self._call(f"deleting {self.url(key)}", self._client.delete_object, Key=key)


class _PartBody(io.RawIOBase):
    """A part's bytes as a seekable file (botocore rewinds it to retry) without a copy."""

    def __init__(self, mv: memoryview) -> None:
        self.mv = mv
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), len(self.mv) - self.pos)
        b[:n] = self.mv[self.pos:self.pos + n]
        self.pos += n
        return n

    def read(self, n: int = -1) -> bytes:
        end = len(self.mv) if n is None or n < 0 else min(len(self.mv), self.pos + n)
        data = bytes(self.mv[self.pos:end])
        self.pos = end
        return data

    def seek(self, off: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: len(self.mv)}[whence]
        self.pos = max(0, min(len(self.mv), base + off))
        return self.pos

    def tell(self) -> int:
        return self.pos

    def __len__(self) -> int:
        return len(self.mv)


class S3Writer(StreamWriter):
    """One stream being uploaded; see the module doc for the guarantees."""

    def __init__(self, store: S3Streams, key: str, upload_id: str, force: bool) -> None:
        self.store = store
        self.key = key
        self.name = store.url(key)
        self.upload_id = upload_id
        self.force = force
        self.written = 0
        self.done = False
        size = store.part_size
        self._free = collections.deque([bytearray(size)])
        self._buf = self._free.popleft()
        self._fill = 0
        self._parts: dict[int, str] = {}            # part number -> ETag
        self._inflight: collections.deque[tuple[Future, bytearray]] = collections.deque()
        self._pool = ThreadPoolExecutor(max_workers=store.in_flight,
                                        thread_name_prefix="s3-part")
        self._next = 1
        self._lock = threading.Lock()
        self.peak_buffers = 1

    # -- intake ---------------------------------------------------------------
    def write(self, data) -> int:
        if self.done:
            raise StreamStoreError(f"{self.name}: the upload was already finished")
        mv = memoryview(data).cast("B")
        n = len(mv)
        size = len(self._buf)
        while mv:
            k = min(len(mv), size - self._fill)
            self._buf[self._fill:self._fill + k] = mv[:k]
            self._fill += k
            mv = mv[k:]
            if self._fill == size:
                self._submit()
        self.written += n
        return n

    def _submit(self, last: bool = False) -> None:
        if self._next > MAX_PARTS:
            raise StreamStoreError(f"{self.name}: the stream is longer than {MAX_PARTS} parts of "
                                   f"{self.store.part_size} bytes: use a larger --part-size")
        buf, fill = self._buf, self._fill
        fut = self._pool.submit(self._upload_part, self._next, memoryview(buf)[:fill])
        self._inflight.append((fut, buf))
        self._next += 1
        # Bounded memory: at most `uploads` parts in flight plus the one filling.
        while len(self._inflight) > self.store.in_flight:
            self._reap_one()
        if last:
            return
        if self._free:
            self._buf = self._free.popleft()
        else:
            self._buf = bytearray(self.store.part_size)
            self.peak_buffers += 1
        self._fill = 0

    def _reap_one(self) -> None:
        fut, buf = self._inflight.popleft()
        fut.result()                       # a failed part raises StreamStoreError here
        self._free.append(buf)

    def _upload_part(self, number: int, mv: memoryview) -> None:
        s = self.store
        kw = {"ContentMD5": base64.b64encode(hashlib.md5(mv).digest()).decode()} if s.md5 else {}
        r = s._call(f"uploading part {number} of {self.name}", s._client.upload_part,
                    Key=self.key, UploadId=self.upload_id, PartNumber=number,
                    Body=_PartBody(mv), ContentLength=len(mv), **kw)
        with self._lock:
            self._parts[number] = r["ETag"]

    # -- ends -----------------------------------------------------------------
    def commit(self) -> None:
        """Upload what is left, then complete the upload: only now does the object appear."""
        if self.done:
            return
        try:
            if self._fill or self._next == 1:
                self._submit(last=True)
            while self._inflight:
                self._reap_one()
            s = self.store
            if not self.force and s.head(self.key) is not None:
                raise StreamExists(f"{self.name} appeared while the backup was uploading; "
                                   f"not replaced (give --force to replace it)")
            parts = [{"PartNumber": n, "ETag": self._parts[n]} for n in sorted(self._parts)]
            s._call(f"completing the upload of {self.name}", s._client.complete_multipart_upload,
                    Key=self.key, UploadId=self.upload_id,
                    MultipartUpload={"Parts": parts})
        except BaseException:
            self.abort()
            raise
        self.done = True
        self._pool.shutdown(wait=True)
        h = s.head(self.key)
        if h is None or int(h["ContentLength"]) != self.written:
            got = "no object" if h is None else f"{h['ContentLength']} bytes"
            raise StreamStoreError(f"{self.name}: the completed object has {got}, not the "
                                   f"{self.written} bytes uploaded")

    def abort(self) -> None:
        """Drop the upload (its parts are freed on the server); nothing appears under the key."""
        if self.done:
            return
        self.done = True
        for fut, _buf in self._inflight:
            fut.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._inflight.clear()
        try:
            self.store.abort_upload(self.key, self.upload_id)
        except StreamStoreError:
            pass          # an unreachable endpoint: the unfinished upload is listed by catalog


class S3Ref(StreamRef):
    """A stream object to read."""
    cheap_seek = False               # a seek is a new ranged GET

    def __init__(self, store: S3Streams, key: str, head: dict) -> None:
        self.store = store
        self.key = key
        self.name = store.url(key)
        self._size = int(head["ContentLength"])
        self.etag = head.get("ETag")
        self.modified = head["LastModified"].timestamp() if head.get("LastModified") else 0.0

    def size(self) -> int:
        return self._size

    def open(self) -> "_S3Reader":
        return _S3Reader(self)

    def read_range(self, offset: int, length: int) -> bytes:
        if length <= 0 or offset >= self._size:
            return b""
        end = min(self._size, offset + length) - 1
        s = self.store
        r = s._call(f"reading {self.name}", s._client.get_object, Key=self.key,
                    Range=f"bytes={offset}-{end}", **({"IfMatch": self.etag} if self.etag else {}))
        try:
            return r["Body"].read()
        except Exception as e:     # noqa: BLE001
            raise StreamStoreError(_describe(e, s.bucket, f"reading {self.name}")) from None


class _S3Reader(io.RawIOBase):
    """The object's bytes in order; a dropped connection resumes with a ranged GET."""

    def __init__(self, ref: S3Ref) -> None:
        self.ref = ref
        self.name = ref.name
        self.pos = 0
        self._body = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, off: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.ref.size()}[whence]
        new = max(0, base + off)
        if new != self.pos:
            self._drop()
            self.pos = new
        return self.pos

    def tell(self) -> int:
        return self.pos

    def _drop(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except Exception:     # noqa: BLE001
                pass
            self._body = None

    def _open_body(self) -> None:
        ref, s = self.ref, self.ref.store
        kw = {"IfMatch": ref.etag} if ref.etag else {}
        if self.pos:
            kw["Range"] = f"bytes={self.pos}-"
        r = s._call(f"reading {ref.name}", s._client.get_object, Key=ref.key, **kw)
        self._body = r["Body"]

    def readinto(self, b) -> int:
        want = min(len(b), READ_CHUNK, self.ref.size() - self.pos)
        if want <= 0:
            return 0
        for attempt in range(_RETRIES + 1):
            try:
                if self._body is None:
                    self._open_body()
                data = self._body.read(want)
                if not data and self.pos < self.ref.size():
                    raise StreamStoreError(f"reading {self.name}: the connection ended at byte "
                                           f"{self.pos} of {self.ref.size()}")
                break
            except StreamStoreError as e:
                self._drop()
                if attempt == _RETRIES or "the connection ended" not in str(e):
                    raise
            except Exception as e:     # noqa: BLE001 - a dropped connection: resume here
                self._drop()
                if attempt == _RETRIES:
                    raise StreamStoreError(_describe(e, self.ref.store.bucket,
                                                     f"reading {self.name}")) from None
        n = len(data)
        b[:n] = data
        self.pos += n
        return n

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.ref.size() - self.pos
        out = bytearray()
        while len(out) < n:
            chunk = bytearray(min(n - len(out), READ_CHUNK))
            k = self.readinto(chunk)
            if not k:
                break
            out += chunk[:k]
        return bytes(out)

    def close(self) -> None:
        self._drop()
        super().close()
