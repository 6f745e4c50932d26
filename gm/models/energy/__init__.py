"""Energy-based (undirected) models (Goodfellow et al. 2016, sections 20.1-20.7).

``base.py``: :class:`~gm.models.energy.base.EnergyModel`, the base of every Boltzmann machine
here (base-rate model, SGD optimiser, the likelihood strategy: exact when log Z can be
enumerated, else AIS with a RAISE sandwich, and the validation estimates), with the configs
:class:`~gm.models.energy.base.SGDConfig` and :class:`~gm.models.energy.base.CDConfig`.
Registered models: ``bm`` (fully visible Boltzmann machine), ``rbm``, ``dbn``, ``dbm``,
``grbm`` (Gaussian-Bernoulli RBM), ``conv_rbm`` (convolutional RBM), ``crbm`` (conditional RBM).
"""
