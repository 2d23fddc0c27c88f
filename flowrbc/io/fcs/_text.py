"""HEADER and TEXT segments: the byte offsets, the keywords, the chain of data sets.

The HEADER (58 ASCII bytes) gives the TEXT offsets; TEXT is ``/KEY/value/KEY/value/``
with any delimiter, a doubled delimiter standing for a literal one (FCS 3.1, 3.2.9).
A supplemental TEXT segment ($BEGINSTEXT-$ENDSTEXT) is optional: any fault in it is a
warning and the segment is ignored, since the primary TEXT holds every required keyword.
"""

from __future__ import annotations

import math

from flowrbc.errors import FCSError

HEADER_SIZE = 58  # "FCS3.1" + 4 spaces + six 8-byte ASCII offsets
_VERSIONS = ("2.0", "3.0", "3.1", "3.2")
_MAX_DATASETS = 1000  # a $NEXTDATA chain longer than this is treated as corrupt


class Reader:
    """State of one read: the file's bytes, its path for messages, collected warnings."""

    def __init__(self, path: str, buf: bytes):
        self.path = path
        self.buf = buf
        self.warnings: list[str] = []

    def fail(self, problem: str) -> FCSError:
        return FCSError(f"{self.path}: {problem}")

    def warn(self, problem: str) -> None:
        self.warnings.append(problem)


def parse_header(r: Reader, start: int) -> dict:
    """Parse the 58-byte HEADER of the data set beginning at byte ``start``."""
    buf = r.buf
    if start == 0 and len(buf) == 0:
        raise r.fail("empty file")
    head = buf[start : start + HEADER_SIZE]
    if not head.startswith(b"FCS"):
        what = "not an FCS file (no 'FCS' at the start)" if start == 0 else (
            f"no FCS HEADER at byte {start} (data set start from $NEXTDATA)")
        raise r.fail(what)
    if len(head) < HEADER_SIZE:
        raise r.fail(f"truncated HEADER ({len(head)} of {HEADER_SIZE} bytes)")
    version = head[3:6].decode("ascii", "replace")
    if version not in _VERSIONS:
        r.warn(f"unknown FCS version {version!r}; read as FCS 3.1")

    def offset(i: int) -> int | None:
        field_ = head[10 + 8 * i : 18 + 8 * i].strip()
        return int(field_) if field_.isdigit() else None

    text_start, text_end = offset(0), offset(1)
    if text_start is None or text_end is None:
        raise r.fail("HEADER has no valid TEXT offsets")
    return {"version": version, "text": (text_start, text_end),
            "data": (offset(2), offset(3))}


def split_text(r: Reader, seg: bytes, where: str) -> dict[str, str]:
    """Split a TEXT segment into keywords. The first byte is the delimiter; a doubled
    delimiter inside a key or value stands for one literal delimiter (FCS 3.1, 3.2.9)."""
    if len(seg) < 2:
        raise r.fail(f"{where} segment is empty")
    delim = seg[:1]
    if delim.isalnum():
        raise r.fail(f"{where} segment starts with {delim!r}, not a delimiter")
    tokens: list[bytes] = []
    cur = b""
    i, n = 1, len(seg)
    while i < n:
        j = seg.find(delim, i)
        if j < 0:  # no closing delimiter: keep the tail
            cur += seg[i:]
            tokens.append(cur)
            cur = b""
            break
        if j + 1 < n and seg[j + 1 : j + 2] == delim:
            cur += seg[i : j + 1]
            i = j + 2
            continue
        tokens.append(cur + seg[i:j])
        cur = b""
        i = j + 1
    if len(tokens) % 2:
        r.warn(f"{where} has an odd number of fields; the last one ({short(tokens[-1])}) is ignored")
        tokens = tokens[:-1]
    out: dict[str, str] = {}
    for k, v in zip(tokens[::2], tokens[1::2]):
        key = decode_bytes(k).strip().upper()
        if key:
            out.setdefault(key, decode_bytes(v))
    return out


def decode_bytes(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:  # FCS 2.0/3.0 files use 8-bit code pages
        return b.decode("latin-1")


def short(b: bytes, n: int = 20) -> str:
    s = decode_bytes(b)
    return repr(s if len(s) <= n else s[:n] + "...")


def int_keyword(r: Reader, kw: dict, key: str, default: int | None = None) -> int | None:
    v = kw.get(key)
    if v is None or not v.strip():
        return default
    try:
        return int(v.strip())
    except ValueError:
        try:  # a few writers store offsets as "1024.0"
            f = float(v.strip())
        except ValueError:
            raise r.fail(f"{key} is not a number: {v.strip()[:30]!r}") from None
        if not math.isfinite(f) or f != int(f):
            raise r.fail(f"{key} is not an integer: {v.strip()[:30]!r}")
        return int(f)


def float_keyword(v: str | None) -> float | None:
    try:
        f = float(v.strip()) if v is not None else None
    except ValueError:
        return None
    return f if f is not None and math.isfinite(f) else None


def read_text(r: Reader, start: int, head: dict) -> dict[str, str]:
    """Primary TEXT, completed by a readable supplemental TEXT, of the data set at ``start``."""
    t0, t1 = head["text"]
    if t0 < HEADER_SIZE or t1 < t0:
        raise r.fail(f"HEADER TEXT offsets {t0}-{t1} are invalid")
    if start + t1 >= len(r.buf):
        raise r.fail(f"truncated TEXT (ends at byte {start + t1}, file has {len(r.buf)} bytes)")
    kw = split_text(r, r.buf[start + t0 : start + t1 + 1], "TEXT")
    for k, v in _supplemental_text(r, start, kw, r.buf[start + t0 : start + t0 + 1]).items():
        kw.setdefault(k, v)
    return kw


def _supplemental_text(r: Reader, start: int, kw: dict, delim: bytes) -> dict[str, str]:
    """Keywords of the supplemental TEXT, or {} with a warning naming its offsets when the
    segment is absent, lies outside the file or does not begin with TEXT's delimiter (some
    instruments point $BEGINSTEXT at binary blocks of their own)."""
    try:
        s0 = int_keyword(r, kw, "$BEGINSTEXT", 0)
        s1 = int_keyword(r, kw, "$ENDSTEXT", 0)
    except FCSError as exc:
        r.warn(f"{str(exc).removeprefix(r.path + ': ')}; supplemental TEXT ignored")
        return {}
    if not s0 and not s1:
        return {}
    where = f"supplemental TEXT ($BEGINSTEXT={s0}, $ENDSTEXT={s1})"
    if s0 < HEADER_SIZE or s1 <= s0:
        r.warn(f"{where}: not a valid byte range; ignored")
        return {}
    if start + s1 >= len(r.buf):
        r.warn(f"{where} lies beyond the end of the file ({len(r.buf)} bytes); ignored")
        return {}
    seg = r.buf[start + s0 : start + s1 + 1]
    if seg[:1] != delim:
        r.warn(f"{where} starts with {seg[:1]!r}, not the TEXT delimiter {delim!r}; ignored")
        return {}
    try:
        return split_text(r, seg, "supplemental TEXT")
    except FCSError as exc:
        r.warn(f"{str(exc).removeprefix(r.path + ': ')}; supplemental TEXT ignored")
        return {}


def dataset_starts(r: Reader) -> list[tuple[int, dict, dict]]:
    """Walk the $NEXTDATA chain: (start byte, HEADER, TEXT) of each data set.

    $NEXTDATA is relative to the start of the current data set; a broken link ends the
    chain with a warning (the data sets before it stay readable)."""
    out: list[tuple[int, dict, dict]] = []
    start = 0
    while True:
        head = parse_header(r, start)
        kw = read_text(r, start, head)
        out.append((start, head, kw))
        try:
            nxt = int_keyword(r, kw, "$NEXTDATA", 0) or 0
        except FCSError:
            r.warn(f"$NEXTDATA of data set {len(out) - 1} is not a number; further data sets ignored")
            break
        if nxt == 0:
            break
        if nxt < 0 or start + nxt + HEADER_SIZE > len(r.buf) or len(out) >= _MAX_DATASETS:
            r.warn(f"$NEXTDATA={nxt} of data set {len(out) - 1} points outside the file; ignored")
            break
        if not r.buf.startswith(b"FCS", start + nxt):
            r.warn(f"$NEXTDATA={nxt} of data set {len(out) - 1} does not point at an FCS HEADER; ignored")
            break
        start += nxt
    return out

