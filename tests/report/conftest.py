"""A tiny trained checkpoint and simulated FCS files, shared by the report tests."""

import pytest

from flowrbc.io.builtin import synthetic_cohort
from flowrbc.synthetic.simulate import write_simulated
from flowrbc.train import TrainConfig, train_cohort

TINY = dict(width=16, depth=1, set_size=64, epochs=1, batch_size=16, device="cpu")


@pytest.fixture(scope="package")
def tiny_run(tmp_path_factory):
    """(model.pt, directory of 2 simulated FCS files with sex/age keywords)."""
    root = tmp_path_factory.mktemp("report")
    result = train_cohort(synthetic_cohort(n_patients=120, n_cells=200, seed=5), TrainConfig(**TINY),
                          root / "runs" / "tiny", plots=False)
    write_simulated(root / "fcs", n_patients=2, n_cells=400, seed=2)
    return result.run_dir / "model.pt", root / "fcs"
