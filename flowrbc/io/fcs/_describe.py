"""``describe_fcs``: a JSON-ready summary of one data set (``flowrbc info``)."""

from __future__ import annotations

import numpy as np

from flowrbc.io.fcs._read import FCSData


def describe_fcs(d: FCSData, overrides: dict[str, str] | None = None,
                 scales: dict[str, float] | None = None) -> dict:
    """A JSON-ready summary of one data set: channels, events, instrument, every data set
    of the file (version, events, parameters), warnings and simple QC (non-finite values,
    per-channel min/median/max over finite values, RBC roles).

    ``roles`` maps each RBC role to its channel (``overrides``: role -> channel, as
    ``--channel``; None when not found and none was asked for); ``units`` gives per role
    the ``scales`` factor, the median after it, the RBC gate's range and the problem when
    the channel looks uncalibrated (``flowrbc.io.units``)."""
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
        cols = resolve_channels(d.names, d.labels, overrides)
    except ChannelError as exc:
        if overrides or scales:  # the user named roles: a missing one is their error
            raise ChannelError(f"{d.path}: {exc}") from None
        cols = None
    return {
        "file": d.path, "fcs_version": d.version, "instrument": d.keywords.get("$CYT"),
        "events": d.n_events, "channels": channels, "dataset": d.dataset,
        "n_datasets": d.n_datasets, "datasets": d.datasets, "datatype": d.keywords.get("$DATATYPE", "").strip(),
        "events_with_non_finite": int((~finite).any(axis=1).sum()),
        "roles": {r: d.names[i] for r, i in cols.items()} if cols else None,
        "units": _units(d, cols, scales) if cols else None,
        "warnings": list(d.warnings),
    }


def _units(d: FCSData, cols: dict[str, int], scales: dict[str, float] | None) -> dict:
    """Per role: channel, scale, median after scaling, the gate's range, problem or None."""
    from flowrbc.io.units import UNITS, apply_scales, reference_ranges, role_problems

    roles = list(cols)
    x = apply_scales(d.events[:, [cols[r] for r in roles]], roles, scales)  # (n, 2) role order
    ref = reference_ranges(roles)
    problems = role_problems(x, roles, [d.names[cols[r]] for r in roles], ref, scales)
    out = {}
    for j, role in enumerate(roles):
        col = x[np.isfinite(x[:, j]), j]
        out[role] = {"channel": d.names[cols[role]], "scale": (scales or {}).get(role, 1.0),
                     "median": float(np.median(col)) if col.size else None, "unit": UNITS[role],
                     "gate": list(ref[role][:2]), "problem": problems.get(role)}
    return out
