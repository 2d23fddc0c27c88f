"""Decoding rules: channel metadata, stored values -> scale values, spillover, names.

Facts from real instrument files and FCS 3.1, section 3.3:

* for integer data with ``$PnE = f1,f2`` and ``f1 > 0`` (log amplification), the value is
  ``10 ** (f1 * x / $PnR) * f2`` (``f2 = 0`` is read as 1);
* float and double data are never log-decoded, whatever ``$PnE`` says (a warning says so);
* ``$PnG`` (gain) divides linear, non-time channels;
* the Time channel stays in ticks (``$TIMESTEP`` is recorded in its channel metadata);
* values are never clipped at ``$PnR`` (real values exceed it).
"""

from __future__ import annotations

import numpy as np

from flowrbc.io.fcs._text import Reader, float_keyword


def channel_meta(r: Reader, kw: dict, par: int, datatype: str, widths: list[int]) -> list[dict]:
    """Per-channel metadata: name, label, range, bits, amplification (f1, f2), gain, time."""
    meta = []
    timestep = float_keyword(kw.get("$TIMESTEP"))
    for i in range(1, par + 1):
        name = kw.get(f"$P{i}N", "").strip()
        if not name:
            r.warn(f"$P{i}N missing; channel named P{i}")
            name = f"P{i}"
        label = kw.get(f"$P{i}S")
        label = label.strip() if label is not None and label.strip() else None
        rng_s = kw.get(f"$P{i}R")
        rng = float_keyword(rng_s)
        if rng is None or rng <= 0:
            if rng_s is not None:
                r.warn(f"$P{i}R={rng_s.strip()[:20]!r} is not a positive number")
            rng = None
        f1, f2 = 0.0, 0.0
        amp = kw.get(f"$P{i}E")
        if amp is not None:
            parts = [float_keyword(x) for x in amp.split(",")]
            if len(parts) == 2 and None not in parts:
                f1, f2 = parts  # type: ignore[misc]
            else:
                r.warn(f"$P{i}E={amp.strip()[:20]!r} is not 'f1,f2'; channel read as linear")
        gain_s = kw.get(f"$P{i}G")
        gain = float_keyword(gain_s)
        if gain_s is not None and (gain is None or gain <= 0):
            r.warn(f"$P{i}G={gain_s.strip()[:20]!r} is not a positive number; gain ignored")
            gain = None
        is_time = name.lower() == "time" or name.lower().startswith("time ")
        m = {"name": name, "label": label, "range": rng, "bits": widths[i - 1],
             "amplification": (f1, f2), "gain": gain if gain is not None else 1.0, "time": is_time}
        if is_time and timestep is not None:
            m["timestep"] = timestep
        meta.append(m)
    return meta


def decode_values(r: Reader, stored: np.ndarray, datatype: str, meta: list[dict]) -> tuple[np.ndarray, bool]:
    """Stored values (n, p) -> float32 scale values; True when any value changed."""
    events = stored.astype(np.float32)  # (n, p)
    changed = False
    for j, m in enumerate(meta):
        f1, f2 = m["amplification"]
        if f1 > 0 and datatype != "I":
            r.warn(f"$P{j + 1}E={f1:g},{f2:g} on {datatype} data ignored (floats are never log-decoded)")
            f1 = 0.0
        if f1 > 0:
            if m["range"] is None:
                raise r.fail(f"$P{j + 1}E={f1:g},{f2:g} needs $P{j + 1}R, which is missing")
            if f2 == 0:
                r.warn(f"$P{j + 1}E={f1:g},0 read as {f1:g},1")
                f2 = 1.0
            x = stored[:, j].astype(np.float64)
            events[:, j] = (10.0 ** (f1 * x / m["range"]) * f2).astype(np.float32)
            changed = True
            if m["gain"] != 1.0:
                r.warn(f"$P{j + 1}G={m['gain']:g} on a log-amplified channel ignored")
        elif m["gain"] != 1.0 and not m["time"]:
            events[:, j] = (stored[:, j].astype(np.float64) / m["gain"]).astype(np.float32)
            changed = True
    return events, changed


def spillover(r: Reader, kw: dict, names: list[str]) -> tuple[list[str], np.ndarray] | None:
    """``$SPILLOVER`` (or ``SPILL``/``$SPILL``): ``k, name_1..name_k, k*k values``."""
    key = next((k for k in ("$SPILLOVER", "SPILL", "$SPILL", "SPILLOVER") if k in kw), None)
    if key is None:
        return None
    parts = [x.strip() for x in kw[key].replace("\n", ",").split(",")]
    try:
        k = int(parts[0])
        if k <= 0 or len(parts) != 1 + k + k * k:
            raise ValueError
        chans = parts[1 : 1 + k]
        mat = np.array([float(x) for x in parts[1 + k :]], dtype=np.float64).reshape(k, k)
        if not np.isfinite(mat).all():
            raise ValueError
    except (ValueError, IndexError):
        r.warn(f"{key} is malformed; spillover matrix ignored")
        return None
    unknown = [c for c in chans if c not in names]
    if unknown:
        r.warn(f"{key} names channels not in the file: {', '.join(unknown[:5])}")
    return chans, mat


def unique_names(r: Reader, names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            new = f"{n}_{seen[n]}"
            while new in seen:
                seen[n] += 1
                new = f"{n}_{seen[n]}"
            r.warn(f"duplicate channel name {n!r} renamed {new!r}")
            seen[new] = 1
            out.append(new)
        else:
            seen[n] = 1
            out.append(n)
    return out

