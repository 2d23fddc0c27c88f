"""Channel units: rescaling a channel to the model's units, and catching one left in
instrument units.

An RBC analyser reports cell volume in fL and hemoglobin content in pg; a flow cytometer's
FSC-A and SSC-A are in its own units (0 to 262 144 on an 18-bit instrument). A scale
factor per role converts them, ``x_model = FACTOR * x_file`` (``--scale volume=0.09``).
Nothing is rescaled unless asked: ``check_units`` refuses a file with a channel whose median
lies far outside the range the model was trained on (or, without a model, the range the
RBC gate accepts), naming in one line every channel out of range, each with its median,
that range and the factor that rescales it.
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
    """The sentences of ``role_problems``, in ``roles`` order."""
    return list(role_problems(x, roles, channels, reference, scales, far).values())


def role_problems(x: np.ndarray, roles: Sequence[str], channels: Sequence[str],
                  reference: dict[str, tuple[float, float, str]],
                  scales: dict[str, float] | None = None, far: float = FAR) -> dict[str, str]:
    """Role -> a sentence naming its channel, its median, the range and the factor that
    rescales it; empty unless some role's (already scaled) column ``x[:, j]`` has its median
    of finite values outside ``[lo / far, hi * far]``. Then every role whose median lies
    outside ``[lo, hi]`` is named, not only the far ones: a channel a few times off would be
    refused next (by this check or the RBC gate) once the first is rescaled, and one refusal
    should give the whole corrected command. The median is over at most ``MAX_ROWS`` evenly
    strided events (a unit is off by orders of magnitude; a subsample tells as well as every
    event)."""
    sub = x[:: max(1, len(x) // MAX_ROWS)]  # (<= ~MAX_ROWS, k)
    medians, means = {}, {}
    for j, role in enumerate(roles):
        col = sub[:, j][np.isfinite(sub[:, j])]
        if col.size and math.isfinite(reference[role][0]):
            medians[role], means[role] = float(np.median(col)), float(np.mean(col))

    def beyond(role: str, f: float) -> bool:
        lo, hi, _ = reference[role]
        return not lo / f <= medians[role] <= hi * f

    if not any(beyond(role, far) for role in medians):
        return {}
    return {role: _problem(channels[j], role, medians[role], means[role], reference[role],
                           (scales or {}).get(role), far > 1 and beyond(role, far))
            for j, role in enumerate(roles) if role in medians and beyond(role, 1.0)}


def _problem(channel: str, role: str, median: float, mean: float, reference: tuple[float, float, str],
             factor: float | None, far: bool) -> str:
    """The sentence for one channel out of range (``far``: far outside); ``factor``: the
    scale already applied."""
    lo, hi, what = reference
    unit = UNITS.get(role, "")
    if what == TRAINED and median > 0:  # the factor bringing the median to the range's geometric centre
        centre = math.sqrt(lo * hi)
        suggest = float(f"{centre / median * (factor or 1):.2g}")
        hint = f"about {suggest:g} puts its median at {centre:.3g} {unit}"
    else:  # no model: the sample's own analyser value is the honest reference
        hint = f"the sample's {CLINICAL[role].upper()} / the channel's mean {mean / (factor or 1):.4g}"
    scaled = f" x {factor:g}" if factor else ""
    where = f"{'far ' if far else ''}outside the {lo:.3g}-{hi:.3g} {unit} {what}"
    return (f"channel {channel!r}{scaled} ({role}) has median {median:.4g}, {where}: it looks "
            f"uncalibrated (instrument units); rescale it with --scale {role}=FACTOR ({hint})")


def check_units(path, x: np.ndarray, roles: Sequence[str], channels: Sequence[str],
                reference: dict[str, tuple[float, float, str]],
                scales: dict[str, float] | None = None) -> None:
    """Raise ``ChannelError("<path>: ...")`` when ``unit_problems`` finds any: one line
    naming every channel out of range, so that one corrected command reads the file."""
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
