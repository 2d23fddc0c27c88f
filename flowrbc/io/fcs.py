"""Reading and writing FCS 2.0/3.0/3.1 files.

``read_fcs_data`` parses HEADER, TEXT and DATA with numpy alone (this module is on the
``predict`` path: importing it must not import anndata, pandas or torch). ``read_fcs``
wraps it into an AnnData; ``write_fcs`` / ``write_fcs_arrays`` write FCS 3.1 float32.

Decoding to scale values (FCS 3.1, section 3.3; facts from real instrument files):

* integer data is bit-masked to ``ceil(log2 $PnR)`` bits, then, for ``$PnE = f1,f2`` with
  ``f1 > 0`` (log amplification), decoded as ``10 ** (f1 * x / $PnR) * f2`` (``f2 = 0`` is
  read as 1);
* float and double data are never log-decoded, whatever ``$PnE`` says (a warning says so);
* ``$PnG`` (gain) divides linear, non-time channels;
* the Time channel stays in ticks (``$TIMESTEP`` is recorded in its channel metadata);
* values are never clipped at ``$PnR`` (real values exceed it).

Every problem that makes a correct read impossible raises ``FCSError("<path>: <problem>")``;
recoverable oddities (``$ENDDATA`` off by one, offsets that disagree, a malformed spillover
matrix) are read and reported in ``FCSData.warnings`` and as ``FCSWarning``.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from flowrbc.errors import FCSError

if TYPE_CHECKING:  # pragma: no cover
    import anndata

HEADER_SIZE = 58  # "FCS3.1" + 4 spaces + six 8-byte ASCII offsets
_VERSIONS = ("2.0", "3.0", "3.1", "3.2")
_MAX_DATASETS = 1000  # a $NEXTDATA chain longer than this is treated as corrupt

# Keywords that describe the layout of one data set; the writer owns them.
_LAYOUT = {
    "$BEGINANALYSIS", "$ENDANALYSIS", "$BEGINDATA", "$ENDDATA", "$BEGINSTEXT", "$ENDSTEXT",
    "$BYTEORD", "$DATATYPE", "$MODE", "$NEXTDATA", "$PAR", "$TOT",
}
_LAYOUT_CHANNEL = re.compile(r"^\$P\d+[BENSG]$")


class FCSWarning(UserWarning):
    """A file was read, but something in it was odd (the message says what)."""


@dataclass
class FCSData:
    """One data set of an FCS file, decoded to scale values.

    ``events`` is float32 ``(n_events, n_channels)``; ``raw`` holds the stored values
    (integers after the ``$PnR`` bit mask, or the stored floats) where decoding changed any
    value, else None. ``keywords`` has upper-case keys (``$`` kept) and the TEXT values.
    """

    events: np.ndarray  # (n_events, n_channels) float32
    raw: np.ndarray | None
    names: list[str]
    labels: list[str | None]
    channel_meta: list[dict]
    keywords: dict[str, str]
    path: str
    dataset: int = 0
    n_datasets: int = 1
    warnings: list[str] = field(default_factory=list)
    version: str = ""
    spillover: tuple[list[str], np.ndarray] | None = None  # (channel names, (k, k) matrix)

    @property
    def n_events(self) -> int:
        return int(self.events.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.events.shape[1])


# ----------------------------------------------------------------------------- parsing


class _Reader:
    """State of one read: the file's bytes, its path for messages, collected warnings."""

    def __init__(self, path: str, buf: bytes):
        self.path = path
        self.buf = buf
        self.warnings: list[str] = []

    def fail(self, problem: str) -> FCSError:
        return FCSError(f"{self.path}: {problem}")

    def warn(self, problem: str) -> None:
        self.warnings.append(problem)


def _header(r: _Reader, start: int) -> dict:
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


def _split_text(r: _Reader, seg: bytes, where: str) -> dict[str, str]:
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
        r.warn(f"{where} has an odd number of fields; the last one ({_short(tokens[-1])}) is ignored")
        tokens = tokens[:-1]
    out: dict[str, str] = {}
    for k, v in zip(tokens[::2], tokens[1::2]):
        key = _decode(k).strip().upper()
        if key:
            out.setdefault(key, _decode(v))
    return out


def _decode(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:  # FCS 2.0/3.0 files use 8-bit code pages
        return b.decode("latin-1")


def _short(b: bytes, n: int = 20) -> str:
    s = _decode(b)
    return repr(s if len(s) <= n else s[:n] + "...")


def _int_kw(r: _Reader, kw: dict, key: str, default: int | None = None) -> int | None:
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


def _text(r: _Reader, start: int, head: dict) -> dict[str, str]:
    """Primary TEXT (and supplemental TEXT when present) of the data set at ``start``."""
    t0, t1 = head["text"]
    if t0 < HEADER_SIZE or t1 < t0:
        raise r.fail(f"HEADER TEXT offsets {t0}-{t1} are invalid")
    if start + t1 >= len(r.buf):
        raise r.fail(f"truncated TEXT (ends at byte {start + t1}, file has {len(r.buf)} bytes)")
    kw = _split_text(r, r.buf[start + t0 : start + t1 + 1], "TEXT")
    s0 = _int_kw(r, kw, "$BEGINSTEXT", 0)
    s1 = _int_kw(r, kw, "$ENDSTEXT", 0)
    if s0 and s1 and s1 > s0:
        if start + s1 < len(r.buf):
            for k, v in _split_text(r, r.buf[start + s0 : start + s1 + 1], "supplemental TEXT").items():
                kw.setdefault(k, v)
        else:
            r.warn("supplemental TEXT lies beyond the end of the file; ignored")
    return kw


def _dataset_starts(r: _Reader) -> list[tuple[int, dict, dict]]:
    """Walk the $NEXTDATA chain: (start byte, HEADER, TEXT) of each data set.

    $NEXTDATA is relative to the start of the current data set; a broken link ends the
    chain with a warning (the data sets before it stay readable)."""
    out: list[tuple[int, dict, dict]] = []
    start = 0
    while True:
        head = _header(r, start)
        kw = _text(r, start, head)
        out.append((start, head, kw))
        try:
            nxt = _int_kw(r, kw, "$NEXTDATA", 0) or 0
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


def _layout(r: _Reader, kw: dict, par: int) -> tuple[str, str, list[int]]:
    mode = kw.get("$MODE", "L").strip().upper() or "L"
    if mode != "L":
        raise r.fail(f"$MODE={mode[:20]} is not supported; only list mode (L), not histograms (C, U)")
    datatype = kw.get("$DATATYPE", "").strip().upper()
    if datatype not in ("I", "F", "D"):
        what = "ASCII data ($DATATYPE=A) is not supported" if datatype == "A" else (
            f"$DATATYPE={datatype!r} is not one of I, F, D")
        raise r.fail(what)
    byteord = kw.get("$BYTEORD", "").replace(" ", "")
    parts = byteord.split(",")
    if parts and parts == [str(i) for i in range(1, len(parts) + 1)]:
        order = "<"
    elif parts and parts == [str(i) for i in range(len(parts), 0, -1)]:
        order = ">"
    else:
        raise r.fail(f"$BYTEORD={byteord!r} is not supported (only little or big endian)")
    widths = []
    for i in range(1, par + 1):
        b = _int_kw(r, kw, f"$P{i}B")
        if b is None:
            raise r.fail(f"$P{i}B is missing ($PAR={par})")
        if datatype == "I":
            if b not in (8, 16, 24, 32, 64):
                raise r.fail(f"$P{i}B={b}: only integer widths of 8, 16, 24, 32 and 64 bits are supported")
        else:
            want = 32 if datatype == "F" else 64
            if b != want:
                r.warn(f"$P{i}B={b} for $DATATYPE={datatype}; read as {want} bits")
                b = want
        widths.append(b)
    return datatype, order, widths


def _data_span(r: _Reader, start: int, head: dict, kw: dict, event_bytes: int,
               tot: int | None) -> tuple[int, int]:
    """(first byte, n_events) of the DATA segment, choosing between TEXT and HEADER offsets.

    TEXT $BEGINDATA/$ENDDATA win (HEADER fields may be blank, shifted or 0 for large files);
    the HEADER is tried when the TEXT offsets do not fit the data. $ENDDATA one byte off is
    read with a warning; any other disagreement with $TOT is an error."""
    cands: list[tuple[str, int, int]] = []
    b, e = _int_kw(r, kw, "$BEGINDATA"), _int_kw(r, kw, "$ENDDATA")
    if b is not None and e is not None and (b or e):
        cands.append(("TEXT", b, e))
    hb, he = head["data"]
    if hb is not None and he is not None and (hb or he):
        if cands and (hb, he) != (b, e):
            r.warn(f"HEADER DATA offsets {hb}-{he} disagree with TEXT $BEGINDATA/$ENDDATA {b}-{e}; TEXT used")
        cands.append(("HEADER", hb, he))
    if tot == 0:
        return (start + cands[0][1] if cands else 0), 0
    if not cands:
        raise r.fail("no DATA offsets (HEADER fields blank or 0 and no $BEGINDATA/$ENDDATA)")
    size = len(r.buf)
    problems = []
    for where, b, e in cands:
        if b < HEADER_SIZE or e < b:
            problems.append(f"{where} DATA offsets {b}-{e} are invalid")
            continue
        nbytes = e - b + 1
        if tot is None:  # $TOT absent (allowed in FCS 2.0): infer when unambiguous
            if nbytes % event_bytes == 0 and start + e < size:
                r.warn(f"$TOT missing; {nbytes // event_bytes} events inferred from the DATA size")
                return start + b, nbytes // event_bytes
            problems.append(f"$TOT missing and {where} DATA size {nbytes} is not a whole number of events")
            continue
        need = tot * event_bytes
        if abs(nbytes - need) <= 1 and start + b + need > size:
            problems.append(
                f"truncated DATA: {tot} events x {event_bytes} bytes need bytes {b}-{b + need - 1}, "
                f"file has {size - start} bytes")
            continue
        if nbytes == need:
            if where == "HEADER" and len(cands) > 1:
                r.warn("TEXT $BEGINDATA/$ENDDATA do not fit $TOT; HEADER DATA offsets used")
            return start + b, tot
        if abs(nbytes - need) == 1:
            r.warn(f"{where} $ENDDATA={e} is off by one ({nbytes} bytes for {need}); read {tot} events")
            return start + b, tot
        problems.append(
            f"$TOT={tot} x {event_bytes} bytes/event = {need} bytes but {where} DATA offsets "
            f"{b}-{e} hold {nbytes} bytes"
            + (f" ({nbytes / event_bytes:g} events)" if event_bytes else ""))
    raise r.fail(problems[0])


def _unpack_int(r: _Reader, seg: np.ndarray, widths: list[int], order: str, n: int) -> np.ndarray:
    """Integer DATA -> (n, p) unsigned ints. Same widths: one frombuffer; mixed widths or
    24-bit: per channel, the byte columns are padded to a power-of-two width and viewed."""
    p = len(widths)
    if len(set(widths)) == 1 and widths[0] != 24:
        dt = np.dtype(f"{order}u{widths[0] // 8}")
        return np.frombuffer(seg, dtype=dt, count=n * p).reshape(n, p)
    nb = [w // 8 for w in widths]
    rows = seg.reshape(n, sum(nb))  # (n, event_bytes) uint8
    out_bytes = 8 if max(widths) > 32 else 4
    out = np.empty((n, p), dtype=np.uint64 if out_bytes == 8 else np.uint32)
    col = 0
    for j, k in enumerate(nb):
        cols = rows[:, col : col + k]
        col += k
        if k in (1, 2, 4, 8):
            out[:, j] = np.ascontiguousarray(cols).view(f"{order}u{k}")[:, 0]
            continue
        pad = np.zeros((n, out_bytes), dtype=np.uint8)
        if order == "<":
            pad[:, :k] = cols
        else:
            pad[:, out_bytes - k :] = cols
        out[:, j] = pad.view(f"{order}u{out_bytes}")[:, 0]
    return out


def _float_kw(v: str | None) -> float | None:
    try:
        f = float(v.strip()) if v is not None else None
    except ValueError:
        return None
    return f if f is not None and math.isfinite(f) else None


def _channels(r: _Reader, kw: dict, par: int, datatype: str, widths: list[int]) -> list[dict]:
    """Per-channel metadata: name, label, range, bits, amplification (f1, f2), gain, time."""
    meta = []
    timestep = _float_kw(kw.get("$TIMESTEP"))
    for i in range(1, par + 1):
        name = kw.get(f"$P{i}N", "").strip()
        if not name:
            r.warn(f"$P{i}N missing; channel named P{i}")
            name = f"P{i}"
        label = kw.get(f"$P{i}S")
        label = label.strip() if label is not None and label.strip() else None
        rng_s = kw.get(f"$P{i}R")
        rng = _float_kw(rng_s)
        if rng is None or rng <= 0:
            if rng_s is not None:
                r.warn(f"$P{i}R={rng_s.strip()[:20]!r} is not a positive number")
            rng = None
        f1, f2 = 0.0, 0.0
        amp = kw.get(f"$P{i}E")
        if amp is not None:
            parts = [_float_kw(x) for x in amp.split(",")]
            if len(parts) == 2 and None not in parts:
                f1, f2 = parts  # type: ignore[misc]
            else:
                r.warn(f"$P{i}E={amp.strip()[:20]!r} is not 'f1,f2'; channel read as linear")
        gain_s = kw.get(f"$P{i}G")
        gain = _float_kw(gain_s)
        if gain_s is not None and (gain is None or gain <= 0):
            r.warn(f"$P{i}G={gain_s.strip()[:20]!r} is not a positive number; gain ignored")
            gain = None
        is_time = name.lower() == "time" or name.lower().startswith("time ")
        m = {"name": name, "label": label, "range": rng, "bits": widths[i - 1],
             "amplification": (f1, f2), "gain": gain if gain is not None else 1.0, "time": is_time}
        if is_time and timestep is not None:
            m["timestep"] = timestep
        meta.append(m)
    return meta


def _decode_values(r: _Reader, stored: np.ndarray, datatype: str, meta: list[dict]) -> tuple[np.ndarray, bool]:
    """Stored values (n, p) -> float32 scale values; True when any value changed."""
    events = stored.astype(np.float32)  # (n, p)
    changed = False
    for j, m in enumerate(meta):
        f1, f2 = m["amplification"]
        if f1 > 0 and datatype != "I":
            r.warn(f"$P{j + 1}E={f1:g},{f2:g} on {datatype} data ignored (floats are never log-decoded)")
            f1 = 0.0
        if f1 > 0:
            if m["range"] is None:
                raise r.fail(f"$P{j + 1}E={f1:g},{f2:g} needs $P{j + 1}R, which is missing")
            if f2 == 0:
                r.warn(f"$P{j + 1}E={f1:g},0 read as {f1:g},1")
                f2 = 1.0
            x = stored[:, j].astype(np.float64)
            events[:, j] = (10.0 ** (f1 * x / m["range"]) * f2).astype(np.float32)
            changed = True
            if m["gain"] != 1.0:
                r.warn(f"$P{j + 1}G={m['gain']:g} on a log-amplified channel ignored")
        elif m["gain"] != 1.0 and not m["time"]:
            events[:, j] = (stored[:, j].astype(np.float64) / m["gain"]).astype(np.float32)
            changed = True
    return events, changed


def _spillover(r: _Reader, kw: dict, names: list[str]) -> tuple[list[str], np.ndarray] | None:
    """``$SPILLOVER`` (or ``SPILL``/``$SPILL``): ``k, name_1..name_k, k*k values``."""
    key = next((k for k in ("$SPILLOVER", "SPILL", "$SPILL", "SPILLOVER") if k in kw), None)
    if key is None:
        return None
    parts = [x.strip() for x in kw[key].replace("\n", ",").split(",")]
    try:
        k = int(parts[0])
        if k <= 0 or len(parts) != 1 + k + k * k:
            raise ValueError
        chans = parts[1 : 1 + k]
        mat = np.array([float(x) for x in parts[1 + k :]], dtype=np.float64).reshape(k, k)
        if not np.isfinite(mat).all():
            raise ValueError
    except (ValueError, IndexError):
        r.warn(f"{key} is malformed; spillover matrix ignored")
        return None
    unknown = [c for c in chans if c not in names]
    if unknown:
        r.warn(f"{key} names channels not in the file: {', '.join(unknown[:5])}")
    return chans, mat


def _unique(r: _Reader, names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            new = f"{n}_{seen[n]}"
            while new in seen:
                seen[n] += 1
                new = f"{n}_{seen[n]}"
            r.warn(f"duplicate channel name {n!r} renamed {new!r}")
            seen[new] = 1
            out.append(new)
        else:
            seen[n] = 1
            out.append(n)
    return out


def read_fcs_data(path: str | os.PathLike, *, dataset: int = 0) -> FCSData:
    """Read one data set of an FCS file into decoded float32 events (numpy only).

    ``dataset`` selects among data sets chained by ``$NEXTDATA`` (0 = the first); the
    number found is ``FCSData.n_datasets``. Raises ``FCSError("<path>: <problem>")``.
    """
    spath = str(path)
    with open(spath, "rb") as fh:
        head = fh.read(HEADER_SIZE)
        if not head.startswith(b"FCS"):  # fail before reading a large non-FCS file
            _header(_Reader(spath, head), 0)
        buf = head + fh.read()
    r = _Reader(spath, buf)
    sets = _dataset_starts(r)
    if not 0 <= dataset < len(sets):
        raise r.fail(f"data set {dataset} requested but the file has {len(sets)}")
    start, head, kw = sets[dataset]

    par = _int_kw(r, kw, "$PAR")
    if par is None or par <= 0:
        raise r.fail("$PAR is missing" if par is None else f"$PAR={par} is not positive")
    if par > len(buf):
        raise r.fail(f"$PAR={par} is larger than the file")
    tot = _int_kw(r, kw, "$TOT")
    if tot is not None and tot < 0:
        raise r.fail(f"$TOT={tot} is negative")
    datatype, order, widths = _layout(r, kw, par)
    event_bytes = sum(widths) // 8
    first, n = _data_span(r, start, head, kw, event_bytes, tot)

    seg = np.frombuffer(buf, dtype=np.uint8, count=n * event_bytes, offset=first) if n else \
        np.zeros(0, dtype=np.uint8)
    meta = _channels(r, kw, par, datatype, widths)
    if datatype == "I":
        stored = _unpack_int(r, seg, widths, order, n)  # (n, p)
        for j, m in enumerate(meta):
            if m["range"] is not None:
                bits = max(1, math.ceil(math.log2(m["range"])))
                if bits < widths[j]:
                    if not stored.flags.writeable:
                        stored = stored.copy()
                    stored[:, j] &= stored.dtype.type((1 << bits) - 1)
    else:
        dt = np.dtype(f"{order}f{4 if datatype == 'F' else 8}")
        stored = np.frombuffer(seg, dtype=dt, count=n * par).reshape(n, par)
    events, changed = _decode_values(r, stored, datatype, meta)

    names = _unique(r, [m["name"] for m in meta])
    spill = _spillover(r, kw, names)
    for w in r.warnings:
        warnings.warn(f"{spath}: {w}", FCSWarning, stacklevel=2)
    raw = None
    if changed:
        raw = stored.astype(stored.dtype.newbyteorder("="), copy=True)  # native order
    return FCSData(
        events=events, raw=raw, names=names, labels=[m["label"] for m in meta],
        channel_meta=meta, keywords=kw, path=spath, dataset=dataset, n_datasets=len(sets),
        warnings=list(r.warnings), version=head["version"], spillover=spill,
    )


# ----------------------------------------------------------------------------- AnnData


def read_fcs(path: str | os.PathLike, *, dataset: int = 0) -> "anndata.AnnData":
    """Read one data set as AnnData: ``X`` decoded scale values (float32), ``var`` indexed
    by unique $PnN with ``channel``, ``marker`` ($PnS or ""), ``range``, ``bits``,
    ``amplification`` ('f1,f2'), ``gain``; ``layers["raw"]`` the stored values where
    decoding changed them; ``uns["fcs"]`` keywords as ``{"key": [...], "value": [...]}``."""
    import anndata
    import pandas as pd

    d = read_fcs_data(path, dataset=dataset)
    var = pd.DataFrame(
        {
            "channel": [m["name"] for m in d.channel_meta],
            "marker": [lab or "" for lab in d.labels],
            "range": [np.nan if m["range"] is None else float(m["range"]) for m in d.channel_meta],
            "bits": np.array([m["bits"] for m in d.channel_meta], dtype=np.int64),
            "amplification": [f"{m['amplification'][0]:g},{m['amplification'][1]:g}" for m in d.channel_meta],
            "gain": np.array([m["gain"] for m in d.channel_meta], dtype=np.float64),
        },
        index=pd.Index(d.names, name="name"),
    )
    adata = anndata.AnnData(X=d.events, var=var)
    if d.raw is not None:
        adata.layers["raw"] = d.raw
    adata.uns["fcs"] = keywords_table(d.keywords)
    adata.uns["fcs_path"] = d.path
    adata.uns["fcs_version"] = d.version
    adata.uns["fcs_dataset"] = d.dataset
    adata.uns["fcs_n_datasets"] = d.n_datasets
    adata.uns["fcs_warnings"] = np.array(d.warnings, dtype=object)
    if d.spillover is not None:
        adata.uns["fcs_spillover"] = {"channels": np.array(d.spillover[0], dtype=object),
                                      "matrix": d.spillover[1]}
    return adata


def keywords_table(keywords: dict[str, str]) -> dict[str, np.ndarray]:
    """Keywords as two equal-length string arrays (h5ad-safe: keys may contain '/')."""
    return {"key": np.array(list(keywords), dtype=object),
            "value": np.array(list(keywords.values()), dtype=object)}


def keywords_from_table(table) -> dict[str, str]:
    """Inverse of ``keywords_table`` (also accepts a DataFrame with key/value columns)."""
    if table is None:
        return {}
    keys, values = table["key"], table["value"]
    return {str(k): str(v) for k, v in zip(list(keys), list(values))}


# ----------------------------------------------------------------------------- writing


def write_fcs(adata: "anndata.AnnData", path: str | os.PathLike) -> Path:
    """Write ``adata.X`` (scale values) as FCS 3.1 float32, with names from
    ``var["channel"]`` (or ``var_names``), labels from ``var["marker"]`` and the keywords of
    ``uns["fcs"]`` other than those describing the layout (which the writer sets)."""
    X = adata.X
    if hasattr(X, "toarray"):
        X = X.toarray()
    var = adata.var
    names = list(var["channel"]) if "channel" in var else list(map(str, adata.var_names))
    labels = [str(m) if m else None for m in var["marker"]] if "marker" in var else None
    keywords = keywords_from_table(adata.uns.get("fcs"))
    return write_fcs_arrays(path, np.asarray(X), names, labels, keywords)


_DELIMITERS = ("/", "|", "\\", "!", "#", "\x0c", "\x1e", "\x1f")


def _text_bytes(kw: dict[str, str], delim: str) -> bytes:
    parts = [delim]
    for k, v in kw.items():
        parts.append(k.replace(delim, delim * 2) + delim + v.replace(delim, delim * 2) + delim)
    return "".join(parts).encode("utf-8")


def write_fcs_arrays(
    path: str | os.PathLike,
    events: np.ndarray,
    names: Sequence[str],
    labels: Sequence[str | None] | None = None,
    keywords: dict[str, str] | None = None,
) -> Path:
    """Write ``events`` ``(n, p)`` as an FCS 3.1 file of little-endian float32, atomically.

    ``keywords`` are copied except layout keywords ($BEGINDATA, $TOT, $PnB, $PnE, $PnG, ...),
    which describe what is written ($PnE = 0,0, $PnG = 1: the values are scale values).
    ``$PnR`` is kept when given, else the ceiling of the channel's largest finite value."""
    path = Path(path)
    events = np.asarray(events)
    if events.ndim != 2:
        raise FCSError(f"{path}: events must be 2-D (events x channels), got shape {events.shape}")
    n, p = events.shape
    names = [str(x) for x in names]
    if len(names) != p:
        raise FCSError(f"{path}: {len(names)} channel names for {p} columns")
    if any(not x.strip() for x in names):
        raise FCSError(f"{path}: empty channel name")
    if labels is not None and len(labels) != p:
        raise FCSError(f"{path}: {len(labels)} labels for {p} columns")
    data = np.ascontiguousarray(events, dtype="<f4")  # (n, p)

    kw: dict[str, str] = {"$BEGINANALYSIS": "0", "$ENDANALYSIS": "0", "$BEGINSTEXT": "0",
                          "$ENDSTEXT": "0", "$BEGINDATA": "", "$ENDDATA": "",
                          "$BYTEORD": "1,2,3,4", "$DATATYPE": "F", "$MODE": "L",
                          "$NEXTDATA": "0", "$PAR": str(p), "$TOT": str(n)}
    given = {str(k).strip().upper(): str(v) for k, v in (keywords or {}).items()}
    for i, name in enumerate(names, start=1):
        kw[f"$P{i}N"] = name
        kw[f"$P{i}B"] = "32"
        kw[f"$P{i}E"] = "0,0"
        kw[f"$P{i}G"] = "1"
        rng = given.get(f"$P{i}R", "").strip()
        if not rng:
            col = data[:, i - 1]
            finite = col[np.isfinite(col)]
            rng = str(max(1, math.ceil(float(finite.max())))) if finite.size else "1"
        kw[f"$P{i}R"] = rng
        if labels is not None and labels[i - 1] not in (None, ""):
            kw[f"$P{i}S"] = str(labels[i - 1])
    for k, v in given.items():
        if k in _LAYOUT or _LAYOUT_CHANNEL.match(k) or k in kw or not k or not v:
            continue
        m = re.match(r"^\$P(\d+)[A-Z]+$", k)
        if m and int(m.group(1)) > p:  # keywords of channels that are not written
            continue
        kw[k] = v

    text_all = "".join(kw) + "".join(kw.values())
    delim = next((d for d in _DELIMITERS if d not in text_all), "/")
    text_start = HEADER_SIZE
    nbytes = data.nbytes
    begin = text_start
    for _ in range(10):  # offsets are digits inside TEXT: iterate to a fixed point
        kw["$BEGINDATA"] = str(begin)
        kw["$ENDDATA"] = str(begin + nbytes - 1 if nbytes else begin)
        text = _text_bytes(kw, delim)
        new_begin = text_start + len(text)
        if new_begin == begin:
            break
        begin = new_begin
    end = begin + nbytes - 1 if nbytes else begin
    text_end = text_start + len(text) - 1

    def f8(v: int) -> bytes:
        return f"{v:>8d}".encode("ascii")

    big = end > 99_999_999
    header = b"FCS3.1    " + f8(text_start) + f8(text_end) + \
        (f8(0) + f8(0) if big else f8(begin) + f8(end)) + f8(0) + f8(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(header)
            fh.write(text)
            fh.write(data.tobytes())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# ----------------------------------------------------------------------------- summary


def describe_fcs(d: FCSData) -> dict:
    """A JSON-ready summary of one data set: channels, events, instrument, warnings and
    simple QC (non-finite values, per-channel min/median/max over finite values, RBC roles)."""
    from flowrbc.errors import ChannelError
    from flowrbc.io.channels import resolve_channels

    finite = np.isfinite(d.events)  # (n, p)
    channels = []
    for j, m in enumerate(d.channel_meta):
        col = d.events[finite[:, j], j]
        stats = (float(col.min()), float(np.median(col)), float(col.max())) if col.size else (None,) * 3
        channels.append({
            "name": d.names[j], "label": d.labels[j], "range": m["range"], "bits": m["bits"],
            "amplification": f"{m['amplification'][0]:g},{m['amplification'][1]:g}",
            "gain": m["gain"], "time": m["time"],
            "min": stats[0], "median": stats[1], "max": stats[2],
            "non_finite": int(d.n_events - col.size),
        })
    try:
        roles = {r: d.names[i] for r, i in resolve_channels(d.names, d.labels).items()}
    except ChannelError:
        roles = None
    return {
        "file": d.path, "fcs_version": d.version, "instrument": d.keywords.get("$CYT"),
        "events": d.n_events, "channels": channels, "dataset": d.dataset,
        "n_datasets": d.n_datasets, "datatype": d.keywords.get("$DATATYPE", "").strip(),
        "events_with_non_finite": int((~finite).any(axis=1).sum()),
        "roles": roles, "warnings": list(d.warnings),
    }
