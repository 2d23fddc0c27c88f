"""Channel roles resolved from names, labels and user overrides."""

from __future__ import annotations

import pytest

from flowrbc.errors import ChannelError
from flowrbc.io.channels import normalize, resolve_channels, select_channels


@pytest.mark.parametrize(
    "names, labels, want",
    [
        (["RBC Volume", "RBC Hb"], None, {"volume": 0, "hemoglobin": 1}),
        (["Time", "CH", "V"], None, {"volume": 2, "hemoglobin": 1}),
        (["FSC-A", "SSC-A", "FL1"], ["Cell_Volume (fL)", None, "HGB [pg]"], {"volume": 0, "hemoglobin": 2}),
        (["vol", "Hemoglobin content"], None, {"volume": 0, "hemoglobin": 1}),
        (["Haemoglobin", "MCV"], None, {"volume": 1, "hemoglobin": 0}),
        (["P1", "P2"], ["rbc-volume", "cell hb"], {"volume": 0, "hemoglobin": 1}),
    ],
)
def test_aliases(names, labels, want):
    assert resolve_channels(names, labels) == want


def test_more_specific_alias_wins():
    # "Volume" and "RBC Volume" both present: the RBC one is preferred
    assert resolve_channels(["Volume", "RBC Volume", "HC"], None)["volume"] == 1


def test_normalize():
    assert normalize("RBC Volume [fL]") == "rbcvolume"
    assert normalize("Cell_Hb (pg)") == "cellhb"
    assert normalize("Hb-Content") == "hbcontent"


def test_overrides_by_name_and_label():
    names, labels = ["FSC-A", "SSC-A", "FL2-H"], [None, "Side", "Hb stain"]
    got = resolve_channels(names, labels, {"volume": "FSC-A", "hemoglobin": "Side"})
    assert got == {"volume": 0, "hemoglobin": 1}
    # an override for one role, the other found by alias (label "Hb stain" is not an alias)
    with pytest.raises(ChannelError, match="hemoglobin"):
        resolve_channels(names, labels, {"volume": "fsc-a"})


def test_unknown_override_channel_lists_available():
    with pytest.raises(ChannelError, match=r"'Nope' \(for volume\) not found; available: FSC-A, SSC-A \(S\)"):
        resolve_channels(["FSC-A", "SSC-A"], [None, "S"], {"volume": "Nope"})


def test_unknown_role():
    with pytest.raises(ChannelError, match="unknown channel role 'size'"):
        resolve_channels(["V", "HB"], None, {"size": "V"})


def test_missing_roles_named():
    with pytest.raises(ChannelError, match=r"no channel found for volume, hemoglobin \(available: FSC-A, Time\)"):
        resolve_channels(["FSC-A", "Time"], None)
    assert resolve_channels(["FSC-A", "V"], None, roles=("volume",)) == {"volume": 1}


def test_one_channel_never_serves_two_roles():
    with pytest.raises(ChannelError, match="hemoglobin"):
        resolve_channels(["V"], ["Hb"])


def test_select_channels_overrides_then_known_channels_then_aliases():
    names, labels = ["RBC Volume", "FSC-A", "SSC-A", "RBC Hb"], [None, None, "side", None]
    assert select_channels(names, labels) == [0, 3]  # aliases
    known = [("volume", "fsc-a"), ("hemoglobin", "SIDE")]  # a checkpoint trained on these, any case
    assert select_channels(names, labels, known=known) == [1, 2]
    assert select_channels(names, labels, known=known, overrides={"volume": "RBC Volume"}) == [0, 2]
    assert select_channels(names, labels, roles=("hemoglobin", "volume"), known=known[::-1]) == [2, 1]
    assert select_channels(names, labels, known=[("volume", "Gone"), ("hemoglobin", "SSC-A")]) == [0, 2]
    with pytest.raises(ChannelError, match="no channel found for hemoglobin"):
        select_channels(["FSC-A", "Time"], None, known=[("volume", "FSC-A"), ("hemoglobin", "Hb")])
