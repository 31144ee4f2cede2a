"""Physics workflows over our model: batched evaluation of many related structures (strained
cells, displaced supercells) for equations of state, elastic tensors and phonons (phonopy),
and dispersion (DFT-D3 through torch-dftd). Optional: ``pip install fastchgnet[workflows]``."""
