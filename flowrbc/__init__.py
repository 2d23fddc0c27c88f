"""flowrbc: clinical prediction from single-cell blood measurements with set models.

Submodules are imported on use, so ``import flowrbc`` stays cheap (the predict path
must not pay for anndata, scanpy or scikit-learn).
"""

__version__ = "0.1.0"
