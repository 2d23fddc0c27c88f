"""A learned reference beside the bound: a model given each patient's exact population.

The bound (``flowrbc.synthetic.bound``) is the best any predictor of the cells can do with
unlimited training data. A set model learns from a finite cohort, so the fairer yardstick at
a given training size is a model that sees each patient's exact population parameters (what
infinitely many cells reveal) and learns the mapping from the same training patients. The
parameters come from the generator's record of those patients, never from their cells.
"""

from __future__ import annotations

import numpy as np

from flowrbc.synthetic.record import PatientRecord
from flowrbc.synthetic.simulate import draw_patients


def population_features(record: PatientRecord) -> np.ndarray:
    """(n, 22): each patient's population parameters ``w, M, C, cv, cc`` of the four
    components (5 x (n, 4)), then sex (1 = woman) and age."""
    pop = record.population
    covariates = [record.sex.astype(float)[:, None], record.age.astype(float)[:, None]]
    return np.concatenate([pop.w, pop.M, pop.C, pop.cv, pop.cc] + covariates, 1)


def patients_of(samples, seed: int) -> PatientRecord:
    """The generator's record of the built-in synthetic cohort ``samples`` (seed ``seed``),
    row for row. Raises ``ValueError`` where the samples' sex or age disagree with the record:
    ``samples`` are not that seed's patients in order."""
    record = draw_patients(len(samples), seed)
    checks = {"sex": np.where(record.sex == 0, "M", "F"), "age": record.age}
    for column, expected in checks.items():
        if column in samples.columns and not np.array_equal(samples[column].to_numpy(), expected):
            raise ValueError(f"the samples' {column} is not that of the synthetic patients of seed {seed}")
    return record


def exact_population_reference(samples, seed: int, fresh_samples, fresh_seed: int,
                               targets=("hematocrit", "anemia")) -> dict[str, np.ndarray]:
    """Predictions on the fresh patients of a model *given* each patient's exact population
    parameters: the moments baseline's gradient boosting on ``population_features``, fitted on
    the training split of the synthetic cohort ``samples`` (built-in, ``seed``), chosen on its
    validation split. What a predictor of the cells could learn from the same patients if
    every cell were measured: the room between it and the moments baseline is the room a set
    model can win at that training size (the bound lies lower still: this model has to learn
    the mapping from the same few patients)."""
    from flowrbc.metrics import fit_moment_baseline

    F = population_features(patients_of(samples, seed))
    split = samples["split"].astype(str).to_numpy()
    y = {t: samples[t].to_numpy(float) for t in targets if t in samples.columns}
    names = [f"population_{i}" for i in range(F.shape[1])]
    model = fit_moment_baseline(F, y, split == "train", split == "val", names)
    return model.predict(population_features(patients_of(fresh_samples, fresh_seed)))
