"""One FCS file -> the red cells of one sample: the single input path of ``flowrbc ingest``,
``flowrbc predict`` and the patient report, so that a file gives the same cells everywhere.

``read_sample`` reads the file (``io.fcs.read_fcs_data``) and picks the role columns
(``io.channels.select_channels``). ``gate_sample`` rescales them (``io.units.apply_scales``),
refuses a channel left in instrument units (``io.units.check_units``), keeps the events the
RBC gate accepts (``pp.rbc_gate``), refuses a file of which it keeps none, and counts what
the sample-level QC flags read (``pp.qc_flags``). The steps are two because ingest derives
a file's scale factors from its unscaled events and the clinical row its keywords match;
``load_sample`` runs both.

Every error is one line naming the file. numpy only: this is on ``flowrbc predict``'s fast path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from flowrbc import pp
from flowrbc.errors import ChannelError
from flowrbc.io.channels import ROLES, select_channels
from flowrbc.io.fcs import read_fcs_data
from flowrbc.io.units import apply_scales, check_units, no_cells_error, reference_ranges

FCS_SUFFIXES = (".fcs", ".lmd")  # Beckman Coulter's list-mode files (.LMD) are FCS data sets


@dataclass
class RawSample:
    """One file's events in the role columns, as stored (not yet scaled or gated)."""

    path: str
    events: np.ndarray = field(repr=False)  # (n_events, k) float32, in ``roles`` order
    roles: list[str]
    channels: list[str]  # the file's channel name of each role
    keywords: dict[str, str] = field(repr=False)


@dataclass
class GatedSample:
    """The red cells of one file and the event counts its QC flags read."""

    path: str
    cells: np.ndarray = field(repr=False)  # (n_cells, k) float64, ``roles`` order: scaled, RBC-gated
    n_events: int  # events in the file
    n_nonfinite: int  # events with a NaN or infinite role value
    roles: list[str]
    channels: list[str]  # the file's channel name of each role
    scales: dict[str, float]  # role -> factor applied; a role not named: 1
    keywords: dict[str, str] = field(repr=False)
    gate: np.ndarray | None = field(default=None, repr=False)  # (n_events,) bool: the events kept, file order
    events: np.ndarray | None = field(default=None, repr=False)  # (n_events, k) float64 every event, scaled

    @property
    def qc(self) -> dict[str, int]:
        """The counts ``pp.qc_flags`` reads; ingest stores them per sample."""
        return {"n_events": self.n_events, "n_gated": len(self.cells), "n_nonfinite": self.n_nonfinite}

    def qc_flags(self) -> list[str]:
        """The sample-level QC flags this file raises (``pp.qc_flags``), in that order."""
        return [name for name, raised in pp.qc_flags(self.qc).items() if raised]


def read_sample(path: str | os.PathLike, *, model_channels: Sequence[tuple[str, str]] = (),
                overrides: dict[str, str] | None = None, dataset: int = 0) -> RawSample:
    """Read data set ``dataset`` of ``path`` (``--dataset``; 0 = the first) and pick its role
    columns: ``overrides`` (role -> channel, ``--channel``), then ``model_channels`` (a
    checkpoint's ``(role, channel)`` pairs; its roles and their order are then the sample's),
    then the aliases. A file lacking a role is refused."""
    data = read_fcs_data(path, dataset=dataset)
    roles = [r for r, _ in model_channels] or list(ROLES)
    try:
        cols = select_channels(data.names, data.labels, roles, model_channels, overrides)
    except ChannelError as exc:
        if not model_channels:
            raise ChannelError(f"{path}: {exc}") from None
        need = ", ".join(f"{r} ({c!r})" for r, c in model_channels)
        raise ChannelError(f"{path}: lacks the model's channels {need}: {exc}; map them with "
                           f"--channel ROLE=NAME") from None
    return RawSample(path=str(path), events=data.events[:, cols], roles=roles,
                     channels=[data.names[c] for c in cols], keywords=data.keywords)


def gate_sample(raw: RawSample, *, scales: dict[str, float] | None = None,
                trained_ranges: dict[str, dict] | None = None) -> GatedSample:
    """Scale, check and gate ``raw``. ``scales``: role -> factor (``x = factor * stored``).
    ``trained_ranges``: a checkpoint's per-role training range (role -> {"p001", "p999"}),
    the reference of the unit check; without it the RBC gate's bounds are."""
    x = apply_scales(raw.events, raw.roles, scales)  # (n_events, k) float64
    check_units(raw.path, x, raw.roles, raw.channels, reference_ranges(raw.roles, trained_ranges), scales)
    keep = pp.rbc_gate(x[:, raw.roles.index("volume")], x[:, raw.roles.index("hemoglobin")])  # (n_events,)
    if not keep.any():
        raise no_cells_error(raw.path, x, raw.roles, raw.channels, scales)
    return GatedSample(path=raw.path, cells=x[keep], n_events=len(x),
                       n_nonfinite=int(np.count_nonzero(~np.isfinite(x).all(axis=1))), roles=list(raw.roles),
                       channels=list(raw.channels), scales=dict(scales or {}), keywords=raw.keywords,
                       gate=keep, events=x)


def load_sample(path: str | os.PathLike, *, model_channels: Sequence[tuple[str, str]] = (),
                overrides: dict[str, str] | None = None, scales: dict[str, float] | None = None,
                trained_ranges: dict[str, dict] | None = None, dataset: int = 0) -> GatedSample:
    """``read_sample`` then ``gate_sample``: what ``flowrbc predict`` and the report read."""
    raw = read_sample(path, model_channels=model_channels, overrides=overrides, dataset=dataset)
    return gate_sample(raw, scales=scales, trained_ranges=trained_ranges)
