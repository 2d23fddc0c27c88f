"""``describe_fcs``: a JSON-ready summary of one data set (``flowrbc info``)."""

from __future__ import annotations

import numpy as np

from flowrbc.io.fcs._read import FCSData


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
