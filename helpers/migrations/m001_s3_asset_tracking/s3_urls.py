"""S3 addresses: parsing a legacy URL into bucket and key (AST-1), content types from key extensions (AST-2)."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import unquote

CONTENT_TYPES: dict[str, str] = {
    "mp4": "video/mp4",
    "webm": "video/webm",
    "mov": "video/quicktime",
    "py": "text/x-python",
    "js": "text/javascript",
    "ts": "text/typescript",
    "txt": "text/plain",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "vtt": "text/vtt",
    "srt": "application/x-subrip",
    "m3u8": "application/vnd.apple.mpegurl",
    "mpd": "application/dash+xml",
    "json": "application/json",
}


_S3_ENDPOINT = re.compile(r"s3(?:[.-](?:dualstack\.)?[a-z0-9-]+)?\.amazonaws\.com(?:\.cn)?")


_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


SIGNED_QUERY = re.compile(r"(?:^|&)(?:X-Amz-Signature|Signature|X-Amz-Credential)=", re.IGNORECASE)


class ParsedUrl(NamedTuple):
    bucket: str
    key: str
    presigned: bool
    url: str  # without its query string


def content_type_for_key(key: str) -> str | None:
    """AST-2: the content type the key's file extension names, None when it names none we know."""
    dot = key.rfind(".")
    if dot < 1 or key[dot - 1] == "/":  # no extension, or a file name that is only one (".mp4")
        return None
    extension = key[dot + 1 :]  # holds a "/" when the dot is in a folder name: then no type matches
    return CONTENT_TYPES.get(extension) or CONTENT_TYPES.get(extension.lower())


def parse_s3_url(url: str) -> ParsedUrl | None:
    """Bucket and (percent-decoded) key of a virtual-hosted or path-style S3 object URL, else None."""
    scheme_end = url.find("://")
    host_end = url.find("/", scheme_end + 3)
    if scheme_end < 0 or host_end < 0:
        return None
    style = _s3_host_style(url[:host_end])
    if style is None:
        return None
    base, _, query = url.partition("?")
    path = base[host_end + 1 :].partition("#")[0]
    bucket, key = (style, path) if style else path.partition("/")[::2]
    if "%" in key:
        key = unquote(key)
    if not bucket or not key:
        return None
    return ParsedUrl(bucket, key, SIGNED_QUERY.search(query) is not None, base)


@lru_cache(maxsize=1024)
def _s3_host_style(origin: str) -> str | None:
    """For "scheme://host": the bucket of a virtual-hosted S3 host, "" for a path-style one, None if not S3.

    Cached: a deployment's URLs share a handful of hosts, and this runs for every URL."""
    scheme, _, host = origin.partition("://")
    if scheme.lower() not in ("http", "https"):
        return None
    host = host.rpartition("@")[2].partition(":")[0].lower()
    if _S3_ENDPOINT.fullmatch(host):
        return ""
    for dot in (i for i, char in enumerate(host) if char == "."):
        if _S3_ENDPOINT.fullmatch(host, dot + 1):
            bucket = host[:dot]
            return bucket if _BUCKET_NAME.fullmatch(bucket) else None
    return None


def is_s3_object_prefix(prefix: str) -> bool:
    """Whether prefix + key is the plain S3 URL of exactly that key (the fast path of rule A1).

    Memoised in a plain dict (cheaper than lru_cache on this hot path); a deployment has a handful of
    prefixes, and the memo is dropped if odd data ever fills it."""
    known = _S3_PREFIXES.get(prefix)
    if known is None:
        parsed = parse_s3_url(prefix + "k") if prefix.startswith("https://") else None
        known = parsed is not None and parsed.key == "k" and parsed.url == prefix + "k"
        if len(_S3_PREFIXES) >= 4096:
            _S3_PREFIXES.clear()
        _S3_PREFIXES[prefix] = known
    return known


_S3_PREFIXES: dict[str, bool] = {}

