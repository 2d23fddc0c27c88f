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

from flowrbc.errors import FCSError
from flowrbc.io.fcs._data import data_layout, data_span, stored_values, word_widths
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
    datasets: list[dict] = field(default_factory=list)  # every data set's version, events, parameters
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
    number found is ``FCSData.n_datasets``, their TEXT's account ``FCSData.datasets``.
    Raises ``FCSError("<path>: <problem>")``; where the data set asked for is unreadable and
    another is not, the message lists the data sets and the ``--dataset`` that reads.
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
    try:
        d = _read_set(r, *sets[dataset])
    except FCSError as exc:
        raise _with_other_datasets(exc, r, sets, dataset) from None
    for w in r.warnings:
        warnings.warn(f"{spath}: {w}", FCSWarning, stacklevel=2)
    d.dataset, d.n_datasets, d.datasets = dataset, len(sets), dataset_list(r, sets)
    return d


def _read_set(r: Reader, start: int, head: dict, kw: dict) -> FCSData:
    """The data set whose HEADER is at byte ``start`` (its ``head`` and TEXT ``kw`` parsed)."""
    par = int_keyword(r, kw, "$PAR")
    if par is None or par <= 0:
        raise r.fail("$PAR is missing" if par is None else f"$PAR={par} is not positive")
    if par > len(r.buf):
        raise r.fail(f"$PAR={par} is larger than the file")
    tot = int_keyword(r, kw, "$TOT")
    if tot is not None and tot < 0:
        raise r.fail(f"$TOT={tot} is negative")
    datatype, order, bits = data_layout(r, kw, par)
    words = word_widths(r, head, kw, bits, tot) if datatype == "I" else bits
    first, n = data_span(r, start, head, kw, sum(words) // 8, tot)

    meta = channel_meta(r, kw, par, datatype, bits)
    ranges = [m["range"] for m in meta]
    stored = stored_values(r.buf, first, n, datatype, order, words, bits, ranges)  # (n, p)
    events, changed = decode_values(r, stored, datatype, meta)

    names = unique_names(r, [m["name"] for m in meta])
    spill = spillover(r, kw, names)
    raw = None
    if changed:
        raw = stored.astype(stored.dtype.newbyteorder("="), copy=True)  # native order
    return FCSData(
        events=events, raw=raw, names=names, labels=[m["label"] for m in meta],
        channel_meta=meta, keywords=kw, path=r.path, warnings=list(r.warnings),
        version=head["version"], spillover=spill,
    )


def dataset_list(r: Reader, sets: list[tuple[int, dict, dict]]) -> list[dict]:
    """Each data set's FCS version, events ($TOT) and parameters ($PAR) as its TEXT states
    them (None where absent or not a number): what ``flowrbc info`` and errors list."""
    def count(kw: dict, key: str) -> int | None:
        try:
            return int_keyword(r, kw, key)
        except FCSError:
            return None

    return [{"dataset": i, "version": head["version"], "events": count(kw, "$TOT"),
             "parameters": count(kw, "$PAR")} for i, (_, head, kw) in enumerate(sets)]


def _with_other_datasets(exc: FCSError, r: Reader, sets: list, asked: int) -> FCSError:
    """``exc`` (data set ``asked`` is unreadable), told which data sets the file holds and
    which ``--dataset`` reads one, when another data set reads; else ``exc`` unchanged."""
    readable = []
    for j, s in enumerate(sets):
        if j == asked:
            continue
        try:
            _read_set(Reader(r.path, r.buf), *s)
        except FCSError:
            continue
        readable.append(j)
    if not readable:
        return exc

    def item(d: dict) -> str:
        events = "?" if d["events"] is None else d["events"]
        params = "?" if d["parameters"] is None else d["parameters"]
        return f"{d['dataset']} (FCS {d['version']}, {events} events, {params} parameters)"

    held = [item(d) for d in dataset_list(r, sets)]
    listing = ", ".join(held[:-1]) + " and " + held[-1]
    reads = " or ".join(f"--dataset {j}" for j in readable)
    return FCSError(f"{exc} (data set {asked}); the file holds data sets {listing}; {reads} reads")
