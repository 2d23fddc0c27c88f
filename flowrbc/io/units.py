"""Channel units: rescaling a channel to the model's units, and catching one left in
instrument units.

An RBC analyser reports cell volume in fL and hemoglobin content in pg; a flow cytometer's
FSC-A and SSC-A are in its own units (0 to 262 144 on an 18-bit instrument). A scale
factor per role converts them, ``x_model = FACTOR * x_file`` (``--scale volume=0.09``).
Nothing is rescaled unless asked: ``check_units`` refuses a channel whose median lies far
outside the range the model was trained on (or, without a model, the range the RBC gate
accepts), naming the channel, its median, that range and the option that rescales it.
``clinical_scales`` derives a file's factors from the analyser's MCV and MCH for the same
sample (numpy only: this module is on the ``predict`` path).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from flowrbc.errors import ChannelError

UNITS = {"volume": "fL", "hemoglobin": "pg"}
CLINICAL = {"volume": "mcv", "hemoglobin": "mch"}  # clinical column giving each role's mean
TRAINED = "the model was trained on"
FAR = 10.0  # a median beyond [lo / FAR, hi * FAR] is another unit, not an unusual sample
MAX_ROWS = 100_000  # the check's median is over evenly strided events: ~5 ms, not 60, per 10^6 events


def reference_ranges(roles: Sequence[str], trained: dict | None = None) -> dict[str, tuple[float, float, str]]:
    """Per role ``(lo, hi, what)``: the training cells' 0.1-99.9 % range of a checkpoint
    (``trained``: role -> {"p001", "p999"}), else the RBC gate's bounds."""
    from flowrbc.pp import DEFAULT_BOUNDS

    out = {}
    for role in roles:
        r = (trained or {}).get(role)
        if r and "p001" in r and "p999" in r:
            out[role] = (float(r["p001"]), float(r["p999"]), TRAINED)
        else:
            lo, hi = getattr(DEFAULT_BOUNDS, role, (math.nan, math.nan))
            out[role] = (float(lo), float(hi), "the RBC gate accepts")
    return out


def apply_scales(x: np.ndarray, roles: Sequence[str], scales: dict[str, float] | None) -> np.ndarray:
    """(n, k) columns in ``roles`` order -> float64 copy with column j times ``scales[roles[j]]``.
    A scale for a role that is not among ``roles``, or not positive and finite, is refused."""
    out = np.array(x, dtype=np.float64)  # (n, k)
    for role, factor in (scales or {}).items():
        if role not in roles:
            raise ChannelError(f"--scale {role}: unknown role; roles are {', '.join(roles)}")
        if not (math.isfinite(factor) and factor > 0):
            raise ChannelError(f"--scale {role}={factor:g}: the factor must be a positive number")
        out[:, list(roles).index(role)] *= factor
    return out


def unit_problems(x: np.ndarray, roles: Sequence[str], channels: Sequence[str],
                  reference: dict[str, tuple[float, float, str]],
                  scales: dict[str, float] | None = None, far: float = FAR) -> list[str]:
    """One sentence per role whose (already scaled) column ``x[:, j]`` has its median of
    finite values outside ``[lo / far, hi * far]``; empty when every channel looks right.
    The median is over at most ``MAX_ROWS`` evenly strided events (a unit is off by orders
    of magnitude; a subsample tells as well as every event)."""
    problems = []
    sub = x[:: max(1, len(x) // MAX_ROWS)]  # (<= ~MAX_ROWS, k)
    for j, role in enumerate(roles):
        col = sub[:, j][np.isfinite(sub[:, j])]
        lo, hi, what = reference[role]
        if not col.size or not math.isfinite(lo):
            continue
        median = float(np.median(col))
        if lo / far <= median <= hi * far:
            continue
        unit, factor = UNITS.get(role, ""), (scales or {}).get(role)
        if what == TRAINED and median > 0:  # the factor bringing the median to the range's geometric centre
            centre = math.sqrt(lo * hi)
            suggest = float(f"{centre / median * (factor or 1):.2g}")
            hint = f"about {suggest:g} puts its median at {centre:.3g} {unit}"
        else:  # no model: the sample's own analyser value is the honest reference
            mean = float(np.mean(col)) / (factor or 1)  # of the channel as stored
            hint = f"the sample's {CLINICAL[role].upper()} / the channel's mean {mean:.4g}"
        scaled = f" x {factor:g}" if factor else ""
        where = f"{'far ' if far > 1 else ''}outside the {lo:.3g}-{hi:.3g} {unit} {what}"
        problems.append(f"channel {channels[j]!r}{scaled} ({role}) has median {median:.4g}, {where}: it looks "
                        f"uncalibrated (instrument units); rescale it with --scale {role}=FACTOR ({hint})")
    return problems


def check_units(path, x: np.ndarray, roles: Sequence[str], channels: Sequence[str],
                reference: dict[str, tuple[float, float, str]],
                scales: dict[str, float] | None = None) -> None:
    """Raise ``ChannelError("<path>: ...")`` (one line) when ``unit_problems`` finds any."""
    problems = unit_problems(x, roles, channels, reference, scales)
    if problems:
        raise ChannelError(f"{path}: " + "; ".join(problems))


def no_cells_error(path, x: np.ndarray, roles: Sequence[str], channels: Sequence[str],
                   scales: dict[str, float] | None = None) -> ChannelError:
    """The error for a sample of which the RBC gate keeps nothing, with the channels whose
    median lies outside the gate's range named (a wrong ``--scale`` shows up here)."""
    why = unit_problems(x, roles, channels, reference_ranges(roles), scales, far=1.0)
    return ChannelError(f"{path}: no events pass the RBC gate ({len(x)} events)" + "".join(f"; {w}" for w in why))


def clinical_scales(x: np.ndarray, roles: Sequence[str], means: dict[str, float],
                    fixed: dict[str, float] | None = None, refine: int = 2) -> dict[str, float]:
    """Per-role factors making the mean of the gated cells equal the analyser's value
    (``means``: role -> MCV in fL or MCH in pg of the same sample); roles in ``fixed`` keep
    the factor given, other roles 1.

    First ``f = mean / mean(x)`` over finite positive events (the RBC gate needs the units
    to mean anything), then ``refine`` times ``f <- f * mean / mean(f * x)`` over the cells
    that ``pp.rbc_gate`` keeps at the current factors. x (n, k) in ``roles`` order."""
    from flowrbc.pp import rbc_gate

    factors = dict(fixed or {})
    for role, m in means.items():
        col = x[:, roles.index(role)]
        ok = np.isfinite(col) & (col > 0)
        if not ok.any() or not (math.isfinite(m) and m > 0):
            raise ChannelError(f"cannot scale {role} to the clinical {CLINICAL[role]} ({m:g}): "
                               f"no positive {role} values or no positive {CLINICAL[role]}")
        factors[role] = m / float(col[ok].mean())
    for _ in range(refine):
        scaled = apply_scales(x, roles, factors)  # (n, k)
        keep = rbc_gate(scaled[:, roles.index("volume")], scaled[:, roles.index("hemoglobin")])
        if not keep.any():
            break
        for role, m in means.items():
            factors[role] *= m / float(scaled[keep, roles.index(role)].mean())
    return factors
