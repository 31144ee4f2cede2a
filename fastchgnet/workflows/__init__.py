"""Physics workflows over our model: equations of state and elastic tensors through matcalc
(our ASE calculator, one strained cell at a time), phonons through phonopy (all displaced
supercells in batched model calls) and dispersion (DFT-D3 through torch-dftd). Optional:
``pip install fastchgnet[workflows]``."""
