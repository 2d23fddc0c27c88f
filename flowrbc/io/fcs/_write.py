"""Writing FCS 3.1 files of little-endian float32 scale values, atomically.

The writer owns the keywords that describe a data set's layout; every other keyword given
is copied. ``$BEGINDATA``/``$ENDDATA`` are digits inside TEXT, so TEXT is laid out until
its length stops changing.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from flowrbc.errors import FCSError
from flowrbc.io.fcs._anndata import keywords_from_table
from flowrbc.io.fcs._text import HEADER_SIZE

if TYPE_CHECKING:  # pragma: no cover
    import anndata

# Keywords that describe the layout of one data set; the writer owns them.
_LAYOUT = {
    "$BEGINANALYSIS", "$ENDANALYSIS", "$BEGINDATA", "$ENDDATA", "$BEGINSTEXT", "$ENDSTEXT",
    "$BYTEORD", "$DATATYPE", "$MODE", "$NEXTDATA", "$PAR", "$TOT",
}
_LAYOUT_CHANNEL = re.compile(r"^\$P\d+[BENSG]$")


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

