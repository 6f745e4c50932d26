"""Autoregressive networks (Goodfellow et al. 2016, sections 20.10.7-20.10.10).

``base.py``: the shared base classes (:class:`~gm.models.autoregressive.base.AutoregressiveModel`,
:class:`~gm.models.autoregressive.base.OrderedBernoulliAR`), orderings, the sequential sampler
and the autoregressive-property check.  Registered models: ``fvsbn``, ``gaussian_ar``,
``neural_ar``, ``nade``, ``made``.
"""
