"""iSCSI URLs for the initiator.

Accepted form (the libiscsi syntax, so the same strings work with iscsi-inq,
qemu and our tools)::

    iscsi://[user[%secret]@]host[:port]/target-iqn/lun[?arg=value&...]
    iscsi://[user[%secret]@]host[:port][/]                  (portal URL: discovery)

* ``user:secret`` is accepted as well as ``user%secret`` (libiscsi does too).
  The user and secret are taken literally (no percent-decoding, since ``%`` is
  the separator); the target IQN is percent-decoded.
* ``host`` may be a name, an IPv4 address or a bracketed IPv6 address
  (``[::1]``); the port defaults to 3260.
* Mutual CHAP uses libiscsi's query arguments ``target_user`` and
  ``target_password`` (only meaningful when the initiator user/secret are
  given, as in libiscsi).  ``header_digest`` and ``data_digest`` take
  ``crc32c``, ``none``, ``crc32c,none`` or ``none,crc32c``.
* libiscsi's LIBISCSI_CHAP_* environment variables are deliberately not read:
  a URL means the same thing whatever the environment.
"""
from __future__ import annotations


from ..record import record
from .errors import UrlError

DEFAULT_PORT = 3260

_DIGESTS = {"crc32c": "CRC32C", "none": "None", "crc32c,none": "CRC32C,None",
            "none,crc32c": "None,CRC32C"}


@record(frozen=True)
class IscsiUrl:
    """A parsed iscsi:// URL."""
    host: str
    port: int = DEFAULT_PORT
    target: str | None = None
    lun: int = 0
    user: str | None = None
    secret: str | None = None
    target_user: str | None = None
    target_secret: str | None = None
    header_digest: str | None = None     # offer string, None = client default
    data_digest: str | None = None

    @property
    def portal(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def mutual(self) -> bool:
        return self.target_user is not None

    def __str__(self) -> str:
        auth = f"{self.user}%{'***'}@" if self.user else ""
        tail = f"/{self.target}/{self.lun}" if self.target else ""
        return f"iscsi://{auth}{self.portal}{tail}"


def _split_hostport(text: str) -> tuple[str, int]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UrlError(f"unterminated IPv6 address in {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise UrlError(f"garbage after IPv6 address in {text!r}")
        port_s = rest[1:] if rest else ""
    else:
        host, _, port_s = text.partition(":")
        if ":" in port_s:
            raise UrlError(f"IPv6 addresses must be bracketed: {text!r}")
    if not host:
        raise UrlError("missing host")
    if port_s:
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise UrlError(f"bad port {port_s!r}")
        return host, int(port_s)
    return host, DEFAULT_PORT


def parse_url(url: str, *, need_target: bool = True) -> IscsiUrl:
    """Parse an iSCSI URL; with ``need_target=False`` a portal URL is enough."""
    if not url.startswith("iscsi://"):
        raise UrlError(f"not an iscsi:// URL: {url!r}")
    rest = url[len("iscsi://"):]
    rest, _, query = rest.partition("?")
    args: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        args[key] = value
    authority, _, path = rest.partition("/")
    user = secret = None
    if "@" in authority:
        # The last '@' ends the credentials, so a secret may contain '@' (not '/').
        cred, _, authority = authority.rpartition("@")
        user, _, secret = cred.partition("%" if "%" in cred else ":")
        user, secret = user or None, secret or None
    hostport = authority
    host, port = _split_hostport(hostport)
    target = None
    lun = 0
    path = path.rstrip("/") if not need_target else path
    if path:
        target_s, slash2, lun_s = path.partition("/")
        if not target_s:
            raise UrlError(f"empty target name in {url!r}")
        if "%" in target_s:          # urllib.parse only for an escaped name (start-up)
            from urllib.parse import unquote
            target_s = unquote(target_s)
        target = target_s
        if slash2 or need_target:
            if not lun_s.isdigit():
                raise UrlError(f"missing or bad LUN in {url!r}")
            lun = int(lun_s)
    elif need_target:
        raise UrlError(f"URL has no target/lun part: {url!r} "
                       "(form: iscsi://[user[%secret]@]host[:port]/target-iqn/lun)")
    t_user, t_secret = args.get("target_user") or None, args.get("target_password") or None
    if (t_user is None) != (t_secret is None):
        raise UrlError("mutual CHAP needs both target_user and target_password")
    if t_user is not None and not (user and secret):
        raise UrlError("mutual CHAP (target_user) needs the initiator's user%secret too")
    if (user is None) != (secret is None):
        raise UrlError("CHAP needs both a user and a secret (user%secret@)")
    digests = {}
    for key in ("header_digest", "data_digest"):
        if key in args:
            val = _DIGESTS.get(args[key].lower())
            if val is None:
                raise UrlError(f"bad {key} {args[key]!r}")
            digests[key] = val
    unknown = set(args) - {"target_user", "target_password", "header_digest", "data_digest"}
    if unknown:
        raise UrlError(f"unknown URL arguments {sorted(unknown)}")
    return IscsiUrl(host, port, target, lun, user, secret, t_user, t_secret,
                    digests.get("header_digest"), digests.get("data_digest"))
