"""Make the example patient files: ``python examples/make_examples.py`` (deterministic).

Draws a simulated cohort (flowrbc.simulate, seed 0) and keeps the first patient of each
kind below, 5,000 cells each, as FCS 3.1 files ``patient_00K.fcs`` (with the patient's sex
and age as keywords ``FLOWRBC_SEX``, ``FLOWRBC_AGE``) plus ``clinical.csv``
with their truth (hematocrit, hemoglobin, anemia, condition, ...).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

WANTED = (  # (condition, sex, anemic); None: any
    ("healthy", "M", False),
    ("iron_deficiency", "F", True),
    ("beta_thal_trait", None, None),
    ("macrocytic", None, None),
)
N_CELLS = 5000
COLUMNS = ("sample_id", "file", "sex", "age", "condition", "severity", "hematocrit", "hemoglobin",
           "rbc_count", "mcv", "mch", "mchc", "rdw", "anemia")


def main(out: Path = Path(__file__).parent) -> None:
    from flowrbc.io.fcs import write_fcs_arrays
    from flowrbc.synthetic.simulate import CHANNELS, simulate_cohort

    sim = simulate_cohort(400, N_CELLS, seed=0)
    s = sim.samples
    rows = []
    for k, (condition, sex, anemic) in enumerate(WANTED, start=1):
        pick = s["condition"] == condition
        if sex is not None:
            pick &= s["sex"] == sex
        if anemic is not None:
            pick &= s["anemia"] == anemic
        i = int(np.flatnonzero(pick.to_numpy())[0])
        name = f"patient_{k:03d}.fcs"
        cells = sim.cells[sim.offsets[i] : sim.offsets[i + 1]]
        write_fcs_arrays(out / name, cells, list(CHANNELS), labels=["Volume (fL)", "Hemoglobin (pg)"],
                         keywords={"$SMNO": str(s["sample_id"].iloc[i]), "$CYT": "flowrbc-simulator",
                                   "FLOWRBC_SEX": str(s["sex"].iloc[i]), "FLOWRBC_AGE": str(int(s["age"].iloc[i]))})
        row = {c: s[c].iloc[i] for c in COLUMNS if c in s.columns}
        row["file"] = name
        rows.append(row)
    with open(out / "clinical.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()})


if __name__ == "__main__":
    main()
