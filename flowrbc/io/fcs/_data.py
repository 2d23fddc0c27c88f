"""The DATA segment: its layout ($DATATYPE, $BYTEORD, $PnB), where it lies, its stored values.

Integer data is bit-masked to its ``$PnB`` bits and to ``ceil(log2 $PnR)`` bits (instruments
set the unused high bits); float and double data are taken as stored. A ``$PnB`` that is not
a multiple of 8 (the 10-bit ADCs of FCS 2.0 instruments) gives the bits that count, not the
storage: such values lie in whole-byte words whose size only the DATA segment's length
tells (``word_widths``). Decoding to scale values is ``_decode``'s.
"""

from __future__ import annotations

import math

import numpy as np

from flowrbc.io.fcs._text import HEADER_SIZE, Reader, int_keyword

_WORDS = (8, 16, 24, 32, 64)  # the integer widths stored as such, and the words holding narrower ones


def data_layout(r: Reader, kw: dict, par: int) -> tuple[str, str, list[int]]:
    """($DATATYPE, numpy byte order, $PnB of each parameter)."""
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
        b = int_keyword(r, kw, f"$P{i}B")
        if b is None:
            raise r.fail(f"$P{i}B is missing ($PAR={par})")
        if datatype == "I":
            if not 0 < b <= 64 or (b % 8 == 0 and b not in _WORDS):
                raise r.fail(f"$P{i}B={b}: integer widths of 8, 16, 24, 32 and 64 bits are supported, "
                             "and narrower values stored in such words")
        else:
            want = 32 if datatype == "F" else 64
            if b != want:
                r.warn(f"$P{i}B={b} for $DATATYPE={datatype}; read as {want} bits")
                b = want
        widths.append(b)
    return datatype, order, widths


def data_offsets(r: Reader, head: dict, kw: dict) -> list[tuple[str, int, int]]:
    """The DATA offsets to try, ``(where, begin, end)``: TEXT $BEGINDATA/$ENDDATA first
    (HEADER fields may be blank, shifted or 0 for large files), then the HEADER's."""
    cands: list[tuple[str, int, int]] = []
    b, e = int_keyword(r, kw, "$BEGINDATA"), int_keyword(r, kw, "$ENDDATA")
    if b is not None and e is not None and (b or e):
        cands.append(("TEXT", b, e))
    hb, he = head["data"]
    if hb is not None and he is not None and (hb or he):
        cands.append(("HEADER", hb, he))
    return cands


def word_widths(r: Reader, head: dict, kw: dict, bits: list[int], tot: int | None) -> list[int]:
    """The stored width of each integer parameter: ``bits`` ($PnB) where a whole-byte width,
    else one word shared by every narrower parameter (instruments store all their ADC values
    alike): the smallest of 8, 16, 24, 32 and 64 bits holding them whose events fill the DATA
    segment. A segment that no word fills but bit-packed values would (FCS 2.0 allows it) is
    refused as bit-packed, any other as a length that fits neither."""
    odd = [(i, b) for i, b in enumerate(bits, start=1) if b % 8]
    if not odd:
        return list(bits)
    layouts = [[b if b % 8 == 0 else w for b in bits] for w in _WORDS if w >= max(b for _, b in odd)]
    spans = [e - b + 1 for _, b, e in data_offsets(r, head, kw) if HEADER_SIZE <= b <= e]
    if not spans or not tot:  # nothing to tell the words by: data_span reports what is wrong
        return layouts[0]
    for words in layouts:
        if any(abs(n - tot * (sum(words) // 8)) <= 1 for n in spans):  # $ENDDATA may be one byte off
            return words
    i, b = odd[0]
    packed = -(-tot * sum(bits) // 8)  # whole bytes holding every bit
    if any(abs(n - packed) <= 1 for n in spans):
        raise r.fail(f"$P{i}B={b}: the DATA segment holds {tot} events bit-packed ({sum(bits)} bits per event, "
                     f"{packed} bytes), not in whole-byte words; bit-packed integer data is not supported")
    words = layouts[0]
    raise r.fail(f"$P{i}B={b}: the DATA segment's {spans[0]} bytes fit neither $TOT={tot} events in "
                 f"{words[i - 1]}-bit words ({tot * (sum(words) // 8)} bytes) nor bit-packed ({packed} bytes)")


def data_span(r: Reader, start: int, head: dict, kw: dict, event_bytes: int,
               tot: int | None) -> tuple[int, int]:
    """(first byte, n_events) of the DATA segment, choosing between TEXT and HEADER offsets.

    TEXT $BEGINDATA/$ENDDATA win; the HEADER is tried when the TEXT offsets do not fit the
    data. $ENDDATA one byte off is read with a warning; any other disagreement with $TOT is
    an error."""
    cands = data_offsets(r, head, kw)
    if len(cands) == 2 and cands[0][1:] != cands[1][1:]:
        (_, b, e), (_, hb, he) = cands
        r.warn(f"HEADER DATA offsets {hb}-{he} disagree with TEXT $BEGINDATA/$ENDDATA {b}-{e}; TEXT used")
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


def unpack_ints(seg: np.ndarray, widths: list[int], order: str, n: int) -> np.ndarray:
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


def stored_values(buf: bytes, first: int, n: int, datatype: str, order: str, widths: list[int],
                  bits: list[int], ranges: list[float | None]) -> np.ndarray:
    """The ``n`` events stored from byte ``first`` in ``widths``-bit words: (n, p) unsigned
    ints masked to their ``bits`` ($PnB) and ``$PnR`` bits, or floats / doubles as stored (a
    read-only view of ``buf``)."""
    event_bytes = sum(widths) // 8
    seg = np.frombuffer(buf, dtype=np.uint8, count=n * event_bytes, offset=first) if n else \
        np.zeros(0, dtype=np.uint8)
    if datatype != "I":
        dt = np.dtype(f"{order}f{4 if datatype == 'F' else 8}")
        return np.frombuffer(seg, dtype=dt, count=n * len(widths)).reshape(n, len(widths))
    stored = unpack_ints(seg, widths, order, n)  # (n, p)
    for j, rng in enumerate(ranges):
        keep = bits[j] if rng is None else min(bits[j], max(1, math.ceil(math.log2(rng))))
        if keep < widths[j]:
            if not stored.flags.writeable:
                stored = stored.copy()
            stored[:, j] &= stored.dtype.type((1 << keep) - 1)
    return stored
