"""QC flags (``flowrbc.predict``) in the words of a laboratory: what happened, what it means.

``describe(flag, case)`` -> (title, explanation); ``case`` supplies the counts the words need
(``n_events``, ``cells_used``). A flag this module does not know is shown by its name, so a
new flag is never silently dropped from a page.
"""

from __future__ import annotations

from typing import Any


def _too_few(c: dict[str, Any]) -> str:
    from flowrbc.pp import MIN_CELLS

    return (f"Only {c['cells_used']} cells passed the red-cell gate; at least {MIN_CELLS} are needed for a stable "
            "estimate of the distribution. Re-acquire the sample (longer acquisition, check the dilution) before "
            "relying on the result.")


def _gated_out(c: dict[str, Any]) -> str:
    from flowrbc.pp import MAX_GATED_OUT

    removed = c["n_events"] - c["cells_used"]
    share = removed / max(c["n_events"], 1)
    return (f"{removed} of {c['n_events']} recorded events ({share:.0%}, more than {MAX_GATED_OUT:.0%}) fell outside "
            "the red-cell gate: debris, platelets, doublets or white cells. Check the sample and the instrument; "
            "the result may not represent the red cells.")


TEXT = {
    "too_few_cells": ("Too few cells", _too_few),
    "many_gated_out": ("Many events are not red cells", _gated_out),
    "nonfinite_events": ("Unreadable events", lambda c: (
        "Some events carry no numeric value (not a number or infinite) and were left out. This usually means a "
        "faulty export; check the instrument's file settings.")),
    "outside_training_range": ("Cells outside the training range", lambda c: (
        "More than 5 % of the cells have a volume or hemoglobin content beyond the range of the cells the model "
        "was trained on (its 0.1–99.9th percentiles). The model has not seen such cells; treat the prediction "
        "with caution.")),
    "far_from_training": ("Distribution unlike the training samples", lambda c: (
        "The sample's summary values (means, spreads, percentiles of volume and hemoglobin) lie more than 5 "
        "standard deviations from the training samples' and beyond their extremes: a distribution shift. The "
        "prediction is an extrapolation; check the instrument calibration and the channel assignment.")),
    "uncalibrated": ("Model not calibrated", lambda c: (
        "The model comes from a training run that had not finished: the interval and the probability are not "
        "calibrated. Use a finished model.")),
    "covariates_unknown": ("Sex or age unknown", lambda c: (
        "The file records no sex or age for the patient and none was given (--sex, --age). The model predicts "
        "without them, with the wider interval calibrated for that case; the reference ranges shown cover both "
        "sexes.")),
}

FAILURE = ("This file could not be analysed",
           ("No prediction was made: {message}. Check that the file is the red-cell export of the analyser and "
            "that it holds the cell volume and hemoglobin channels; map other channel names with "
            "--channel volume=NAME --channel hemoglobin=NAME."))


def describe(flag: str, case: dict[str, Any]) -> tuple[str, str]:
    title, text = TEXT.get(flag, (flag, lambda c: f"QC flag '{flag}' (no description in this version)."))
    return title, text(case)
