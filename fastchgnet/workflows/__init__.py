"""Physics workflows over our model: equations of state, elastic tensors and phonons through
matcalc (and phonopy) with our ASE calculator, every strained cell and displaced supercell
evaluated ahead in batched model calls, and dispersion (DFT-D3 through torch-dftd). Optional:
``pip install fastchgnet[workflows]``."""
