"""Simulated FCS files rewritten as a flow cytometer would store them: the volume and
hemoglobin channels named FSC-A / SSC-A and in instrument units (value / factor)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowrbc.io.fcs import read_fcs_data, write_fcs_arrays

FACTORS = {"volume": 0.0009, "hemoglobin": 0.0003}  # fL, pg per instrument unit: medians ~ 100k


def to_instrument_units(src: Path, dst: Path, factors: dict[str, float] = FACTORS) -> Path:
    """``dst``: the events of ``src`` (RBC Volume, RBC Hb, ...) as FSC-A = V / factor,
    SSC-A = Hb / factor, with the same sample keywords (sex, age, sample id)."""
    d = read_fcs_data(src)
    x = np.stack([d.events[:, 0] / factors["volume"], d.events[:, 1] / factors["hemoglobin"]], axis=1)
    keywords = {k: v for k, v in d.keywords.items() if not k.startswith("$P")}
    return write_fcs_arrays(dst, x.astype(np.float32), ["FSC-A", "SSC-A"], keywords=keywords)
