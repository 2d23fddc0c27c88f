"""The synthetic cohort: a physiology table, the generator that draws from it and the Bayes
bound that integrates over it.

``physiology`` holds every coefficient; ``simulate`` draws patients and cells and records what
it drew (``record``); ``bound`` gives the best prediction the cells allow from that record;
``reference`` fits a model on the recorded exact populations. Import the modules directly
inside the package; this namespace re-exports their public names for callers.
"""

from flowrbc.synthetic.bound import bound_summary, cell_bound
from flowrbc.synthetic.physiology import TABLE, Physiology
from flowrbc.synthetic.record import PatientRecord, Population, mixture_indices
from flowrbc.synthetic.reference import exact_population_reference, population_features
from flowrbc.synthetic.simulate import (
    CHANNELS,
    CONDITIONS,
    GENERATOR_VERSION,
    SimulatedCohort,
    draw_patients,
    simulate_cohort,
    summary_table,
    write_simulated,
)

__all__ = [
    "CHANNELS", "CONDITIONS", "GENERATOR_VERSION", "TABLE", "PatientRecord", "Physiology", "Population",
    "SimulatedCohort", "bound_summary", "cell_bound", "draw_patients", "exact_population_reference",
    "mixture_indices", "population_features", "simulate_cohort", "summary_table", "write_simulated",
]
