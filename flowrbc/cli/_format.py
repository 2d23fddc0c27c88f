"""Numbers for tables that stay whole in 80 columns, piped or not.

A table cell must never be cut to "2.621…": values are written with ``digits`` significant
digits in at most eight characters and a sign. Integers below 100 000 stay exact ("65536");
larger or smaller magnitudes use engineering notation, the exponent a multiple of three
written as an SI letter above one (262144 -> "262.1k", 4.3e9 -> "4.295G") and as
``e-N`` below 0.001 (0.0000123 -> "12.3e-6"). ``--json`` output keeps every digit.
"""

from __future__ import annotations

import math

_PREFIXES = {3: "k", 6: "M", 9: "G", 12: "T", 15: "P"}


def number(v, digits: int = 4) -> str:
    """One table cell: None -> "-", strings as given, numbers compact (see the module)."""
    if v is None:
        return "-"
    if isinstance(v, (str, bool)):
        return str(v)
    x = float(v)
    if not math.isfinite(x):
        return str(x)
    if x == int(x) and abs(x) < 1e5:
        return str(int(x))
    if 1e-3 <= abs(x) < 1e5:
        if abs(x) >= 10 ** (digits - 1):
            return str(round(x))  # 1234.6 -> "1235", never "1.235e+03"
        return f"{x:.{digits}g}"
    exp3 = 3 * math.floor(math.log10(abs(x)) / 3)
    mantissa = float(f"{x / 10 ** exp3:.{digits}g}")
    if abs(mantissa) >= 1000:  # 999.96k rounds to 1000k: one step up
        exp3, mantissa = exp3 + 3, mantissa / 1000
    text = f"{mantissa:.{digits}g}"
    if exp3 > 0 and exp3 in _PREFIXES:
        return text + _PREFIXES[exp3]
    return f"{text}e{exp3}"
