"""``read_fcs_data``: one data set of an FCS file -> ``FCSData`` (numpy only).

This module is on the ``predict`` path: importing it must not import anndata, pandas or
torch. Every problem that makes a correct read impossible raises
``FCSError("<path>: <problem>")``; recoverable oddities (``$ENDDATA`` off by one, offsets
that disagree, a malformed spillover matrix, an unreadable supplemental TEXT) are read and
reported in ``FCSData.warnings`` and as ``FCSWarning``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from flowrbc.io.fcs._data import data_layout, data_span, stored_values
from flowrbc.io.fcs._decode import channel_meta, decode_values, spillover, unique_names
from flowrbc.io.fcs._text import HEADER_SIZE, Reader, dataset_starts, int_keyword, parse_header


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


def read_fcs_data(path: str | os.PathLike, *, dataset: int = 0) -> FCSData:
    """Read one data set of an FCS file into decoded float32 events (numpy only).

    ``dataset`` selects among data sets chained by ``$NEXTDATA`` (0 = the first); the
    number found is ``FCSData.n_datasets``. Raises ``FCSError("<path>: <problem>")``.
    """
    spath = str(path)
    with open(spath, "rb") as fh:
        head = fh.read(HEADER_SIZE)
        if not head.startswith(b"FCS"):  # fail before reading a large non-FCS file
            parse_header(Reader(spath, head), 0)
        buf = head + fh.read()
    r = Reader(spath, buf)
    sets = dataset_starts(r)
    if not 0 <= dataset < len(sets):
        raise r.fail(f"data set {dataset} requested but the file has {len(sets)}")
    start, head, kw = sets[dataset]

    par = int_keyword(r, kw, "$PAR")
    if par is None or par <= 0:
        raise r.fail("$PAR is missing" if par is None else f"$PAR={par} is not positive")
    if par > len(buf):
        raise r.fail(f"$PAR={par} is larger than the file")
    tot = int_keyword(r, kw, "$TOT")
    if tot is not None and tot < 0:
        raise r.fail(f"$TOT={tot} is negative")
    datatype, order, widths = data_layout(r, kw, par)
    first, n = data_span(r, start, head, kw, sum(widths) // 8, tot)

    meta = channel_meta(r, kw, par, datatype, widths)
    stored = stored_values(buf, first, n, datatype, order, widths, [m["range"] for m in meta])  # (n, p)
    events, changed = decode_values(r, stored, datatype, meta)

    names = unique_names(r, [m["name"] for m in meta])
    spill = spillover(r, kw, names)
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

