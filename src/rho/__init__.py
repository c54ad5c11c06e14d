"""rho: reference-model-guided data selection for language-model training.

Selective Language Modeling (Rho-1) at its heart: the model being trained takes its loss only on
the tokens with the highest excess loss over a reference model.
"""

__version__ = "0.1.0"
