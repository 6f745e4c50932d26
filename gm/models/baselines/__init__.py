"""Baselines: reference models that every binary likelihood table shows (``is_baseline = True``).

``base.py``: :class:`~gm.models.baselines.base.BernoulliMixtures`, mixtures of multivariate
Bernoullis fitted by batch EM whose E-step statistics are summed over each epoch's
minibatches (Bishop 2006, PRML sec. 9.3.3), several candidate mixtures at once.
Registered models: ``independent`` (independent Bernoulli pixels, the one-component case) and
``mixture_bernoulli`` (the number of components chosen on the validation split).
Both give the exact log p(x).
"""
