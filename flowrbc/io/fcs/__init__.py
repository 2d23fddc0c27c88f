"""Reading and writing FCS 2.0/3.0/3.1 files.

``read_fcs_data`` parses HEADER, TEXT and DATA with numpy alone (it is on the ``predict``
path: importing this package must not import anndata, pandas or torch). ``read_fcs`` wraps
it into an AnnData; ``write_fcs`` / ``write_fcs_arrays`` write FCS 3.1 float32.

The parts, one file each: ``_text`` (HEADER, TEXT, supplemental TEXT, the $NEXTDATA
chain), ``_data`` (DATA layout, offsets, stored values), ``_decode`` (the decoding rules:
amplification, gain, spillover, channel names), ``_read`` (``read_fcs_data``),
``_anndata`` (``read_fcs``), ``_write`` (the writer), ``_describe`` (``flowrbc info``).
"""

from flowrbc.errors import FCSError
from flowrbc.io.fcs._anndata import keywords_from_table, keywords_table, read_fcs
from flowrbc.io.fcs._describe import describe_fcs
from flowrbc.io.fcs._read import FCSData, FCSWarning, read_fcs_data
from flowrbc.io.fcs._text import HEADER_SIZE
from flowrbc.io.fcs._write import write_fcs, write_fcs_arrays

__all__ = [
    "FCSData", "FCSError", "FCSWarning", "HEADER_SIZE", "describe_fcs", "keywords_from_table",
    "keywords_table", "read_fcs", "read_fcs_data", "write_fcs", "write_fcs_arrays",
]
