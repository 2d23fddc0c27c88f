"""Channel roles: which columns of a sample hold RBC volume and hemoglobin content.

A role is found by its aliases among the channel names ($PnN) and labels ($PnS), compared
after normalisation: lower case, units in brackets dropped ("RBC Volume [fL]" -> "rbcvolume"),
spaces, underscores, hyphens and dots removed. The user may override any role by channel
name or label (``--channel volume=FSC-A``); a checkpoint's own channel names come before the
aliases (``select_channels``).
"""

from __future__ import annotations

import re
from typing import Sequence

from flowrbc.errors import ChannelError

ROLES = ("volume", "hemoglobin")

# Aliases in order of preference (a more specific alias wins over a shorter one).
ALIASES: dict[str, tuple[str, ...]] = {
    "volume": ("rbc volume", "cell volume", "rbc vol", "volume", "vol", "mcv", "v",
               "rbcv", "corpuscular volume"),
    "hemoglobin": ("rbc hb", "rbc hgb", "cell hb", "cell hgb", "hb content", "hemoglobin content",
                   "haemoglobin content", "cellular hemoglobin", "hemoglobin", "haemoglobin",
                   "hgb", "hb", "chc", "hc", "ch", "mch", "cell hemoglobin"),
}

_UNITS = re.compile(r"[\[\(][^\]\)]*[\]\)]")
_SEPARATORS = re.compile(r"[\s_\-\.]+")


def normalize(name: str) -> str:
    """``"RBC Volume [fL]"`` -> ``"rbcvolume"``; ``"Cell_Hb (pg)"`` -> ``"cellhb"``."""
    return _SEPARATORS.sub("", _UNITS.sub("", name)).lower()


def _find(target: str, names: Sequence[str], labels: Sequence[str | None]) -> int | None:
    """Index of the channel whose name (first) or label equals ``target`` (exactly, then
    normalised); None when absent."""
    for key in (lambda s: s, normalize):
        t = key(target)
        for pool in (names, labels):
            hits = [i for i, s in enumerate(pool) if s and key(s) == t]
            if hits:
                return hits[0]
    return None


def resolve_channels(
    names: Sequence[str],
    labels: Sequence[str | None] | None = None,
    overrides: dict[str, str] | None = None,
    roles: Sequence[str] = ROLES,
) -> dict[str, int]:
    """Map each role to a column index.

    ``overrides`` (role -> channel name or label) wins; other roles are found by alias over
    names, then labels. Raises ``ChannelError`` naming an unknown override channel or the
    roles not found, with the available channels listed.
    """
    names = [str(n) for n in names]
    labels = list(labels) if labels is not None else [None] * len(names)
    available = ", ".join(
        n if not lab or lab == n else f"{n} ({lab})" for n, lab in zip(names, labels)) or "none"
    out: dict[str, int] = {}
    for role, channel in (overrides or {}).items():
        role = role.strip().lower()
        if role not in roles:
            raise ChannelError(f"unknown channel role {role!r}; roles are {', '.join(roles)}")
        idx = _find(channel, names, labels)
        if idx is None:
            raise ChannelError(f"channel {channel!r} (for {role}) not found; available: {available}")
        out[role] = idx
    for role in roles:
        if role in out:
            continue
        for alias in ALIASES.get(role, (role,)):
            idx = _find(alias, names, labels)
            if idx is not None and idx not in out.values():
                out[role] = idx
                break
    missing = [r for r in roles if r not in out]
    if missing:
        raise ChannelError(
            f"no channel found for {', '.join(missing)} (available: {available}); "
            f"map one with --channel {missing[0]}=NAME")
    return {r: out[r] for r in roles}


def select_channels(
    names: Sequence[str],
    labels: Sequence[str | None] | None,
    roles: Sequence[str] = ROLES,
    known: Sequence[tuple[str, str]] = (),
    overrides: dict[str, str] | None = None,
) -> list[int]:
    """Column of each role, in ``roles`` order: ``overrides`` (role -> channel name or label)
    first, then ``known`` ``(role, channel)`` pairs (the channels a checkpoint was trained on,
    matched to a name or label case-insensitively), then the aliases of ``resolve_channels``:
    a checkpoint trained on FSC-A reads a file's FSC-A without ``--channel``. Raises
    ``ChannelError`` as ``resolve_channels`` does."""
    lowered = {str(n).lower(): str(n) for n in names} | {str(lab).lower(): str(lab) for lab in labels or () if lab}
    wanted = {role: lowered[ch.lower()] for role, ch in known if ch.lower() in lowered}
    wanted.update(overrides or {})
    found = resolve_channels(names, labels, wanted, roles=roles)
    return [found[r] for r in roles]
