"""Image operations every layer above shares: resampling, CT intensity windows, filters.

It imports only :mod:`wsnodule_core.errors` and :mod:`wsnodule_core.io`; data sets, training and
every method build on it.
"""
