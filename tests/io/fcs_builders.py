"""Raw FCS bytes for the quirk fixtures, written byte by byte (independent of the reader).

``build_fcs`` lays out HEADER (58 bytes), TEXT, DATA and optional trailing bytes, filling
$BEGINDATA/$ENDDATA (zero-padded to a fixed width, so the TEXT length does not depend on
them) unless told otherwise; the HEADER's DATA offsets can be correct, blank, zero or given.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from flowrbc.errors import FCSError
from flowrbc.io.fcs import FCSWarning, read_fcs_data

_W = 10  # digits of the offsets written into TEXT


def pack_ints(values: np.ndarray, widths: Sequence[int], order: str = "<") -> bytes:
    """Pack unsigned ints ``(n, p)`` with per-channel bit widths (multiples of 8): the words
    of the file, whatever its $PnB say."""
    values = np.asarray(values, dtype=np.uint64)
    out = bytearray()
    big = order == ">"
    for row in values:
        for v, w in zip(row, widths):
            out += int(v).to_bytes(w // 8, "big" if big else "little")
    return bytes(out)


def pack_floats(values: np.ndarray, double: bool = False, order: str = "<") -> bytes:
    return np.ascontiguousarray(values, dtype=f"{order}f{8 if double else 4}").tobytes()


def channel_keywords(names: Sequence[str], bits: Sequence[int], ranges: Sequence[int | float],
                     amps: Sequence[str] | None = None, gains: Sequence[str | None] | None = None,
                     labels: Sequence[str | None] | None = None) -> dict[str, str]:
    kw: dict[str, str] = {}
    for i, name in enumerate(names, start=1):
        kw[f"$P{i}N"] = name
        kw[f"$P{i}B"] = str(bits[i - 1])
        kw[f"$P{i}R"] = str(ranges[i - 1])
        kw[f"$P{i}E"] = amps[i - 1] if amps else "0,0"
        if gains and gains[i - 1] is not None:
            kw[f"$P{i}G"] = gains[i - 1]
        if labels and labels[i - 1] is not None:
            kw[f"$P{i}S"] = labels[i - 1]
    return kw


def build_fcs(
    keywords: dict[str, str],
    data: bytes,
    *,
    version: str = "3.1",
    header_data: str | tuple[int, int] = "auto",  # "auto", "blank", "zero" or (begin, end)
    text_offsets: bool = True,  # write $BEGINDATA/$ENDDATA into TEXT
    enddata_delta: int = 0,  # added to $ENDDATA (TEXT and HEADER when "auto")
    after: bytes = b"",
    delim: str = "/",
    text_start: int = 58,
    nextdata: int | None = None,
) -> bytes:
    kw = dict(keywords)
    if text_offsets:
        kw["$BEGINDATA"] = "0" * _W
        kw["$ENDDATA"] = "0" * _W
    if nextdata is not None:
        kw["$NEXTDATA"] = str(nextdata).zfill(_W)

    def text_of(k: dict[str, str]) -> bytes:
        s = delim + "".join(
            a.replace(delim, delim * 2) + delim + b.replace(delim, delim * 2) + delim
            for a, b in k.items())
        return s.encode("utf-8")

    text_len = len(text_of(kw))
    begin = text_start + text_len
    end = begin + len(data) - 1 + enddata_delta
    if text_offsets:
        kw["$BEGINDATA"] = str(begin).zfill(_W)
        kw["$ENDDATA"] = str(max(end, 0)).zfill(_W)
    text = text_of(kw)
    assert len(text) == text_len
    if header_data == "auto":
        hb, he = f"{begin:>8d}", f"{max(end, 0):>8d}"
    elif header_data == "blank":
        hb = he = " " * 8
    elif header_data == "zero":
        hb = he = f"{0:>8d}"
    else:
        hb, he = (f"{v:>8d}" for v in header_data)
    header = (f"FCS{version}    " + f"{text_start:>8d}" + f"{text_start + text_len - 1:>8d}"
              + hb + he + f"{0:>8d}" * 2).encode("ascii")
    assert len(header) == 58
    pad = b" " * (text_start - 58)
    return header + pad + text + data + after


def base_keywords(n: int, datatype: str = "I", byteord: str = "1,2,3,4", par: int | None = None,
                  **extra: str) -> dict[str, str]:
    kw = {"$BYTEORD": byteord, "$DATATYPE": datatype, "$MODE": "L", "$TOT": str(n)}
    if par is not None:
        kw["$PAR"] = str(par)
    kw.update(extra)
    return kw


def int_file(values: np.ndarray, widths: Sequence[int], ranges: Sequence[int], *, order: str = "<",
             names: Sequence[str] | None = None, amps=None, gains=None, labels=None,
             extra: dict[str, str] | None = None, **build) -> bytes:
    values = np.asarray(values)
    n, p = values.shape
    names = list(names or [f"C{i}" for i in range(1, p + 1)])
    kw = base_keywords(n, "I", "1,2,3,4" if order == "<" else "4,3,2,1", par=p)
    kw.update(channel_keywords(names, widths, ranges, amps, gains, labels))
    kw.update(extra or {})
    return build_fcs(kw, pack_ints(values, widths, order), **build)


def float_file(values: np.ndarray, *, double: bool = False, order: str = "<",
               names: Sequence[str] | None = None, ranges=None, amps=None, gains=None, labels=None,
               extra: dict[str, str] | None = None, **build) -> bytes:
    values = np.asarray(values)
    n, p = values.shape
    names = list(names or [f"C{i}" for i in range(1, p + 1)])
    bits = [64 if double else 32] * p
    kw = base_keywords(n, "D" if double else "F", "1,2,3,4" if order == "<" else "4,3,2,1", par=p)
    kw.update(channel_keywords(names, bits, ranges or [1024] * p, amps, gains, labels))
    kw.update(extra or {})
    return build_fcs(kw, pack_floats(values, double, order), **build)


def fc500_like(n: int = 500, seed: int = 0, first: dict[str, str] | None = None,
               second: bytes | None = None) -> tuple[bytes, np.ndarray]:
    """Two data sets laid out as a Beckman Coulter FC500 .LMD file: data set 0 is FCS 2.0 with
    four 10-bit parameters ($PnR 1024) in 16-bit little-endian words whose high bits are set,
    its DATA one byte longer than $TOT x 8 bytes; data set 1, at $NEXTDATA, is ``second``
    (a whole FCS file's bytes), by default FCS 3.0 float. ``first``: keywords replacing data
    set 0's. Returns the bytes and data set 0's stored words (n, 4)."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 1 << 16, (n, 4))  # the value in the low 10 bits, other bits set
    kw = base_keywords(n, "I", "1,2", par=4, **channel_keywords(["FS", "SS", "FL1", "FL2"], [10] * 4, [1024] * 4))
    kw.update(first or {})
    data = pack_ints(words, [16] * 4) + b"\0"  # $ENDDATA counts one byte past the last event
    start = len(build_fcs(kw, data, version="2.0", nextdata=0))
    if second is None:
        second = float_file(rng.uniform(0, 1024, (n, 6)), names=["FS", "SS", "FL1", "FL2", "FS INT", "SS INT"],
                            version="3.0")
    return build_fcs(kw, data, version="2.0", nextdata=start) + second, words


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(content)
    return p


def read(path, **kw):
    """``read_fcs_data`` with the reader's warnings silenced (tests that check them catch them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FCSWarning)
        return read_fcs_data(path, **kw)


def fails(path, match, **kw) -> str:
    """The one-line ``FCSError`` reading ``path`` raises, matching ``match``; -> its message."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FCSWarning)
        with pytest.raises(FCSError, match=match) as info:
            read_fcs_data(path, **kw)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    return msg
