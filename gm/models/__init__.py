"""The models, in folders that follow the book's families (Goodfellow et al. 2016, ch. 20).

- ``energy/``: undirected, energy-based models (20.1-20.8); base :class:`energy.base.EnergyModel`.
- ``directed/``: directed generator nets (20.10.1-20.10.6).
- ``autoregressive/``: autoregressive networks (20.10.7-20.10.10).
- ``chains/``: samplers from autoencoders, GSNs and diffusion (20.11-20.13).

Each family's ``base.py`` holds its shared base class, never a registered model; every other
module registers its models with ``@register``.  :mod:`gm.registry` imports them all.
``base_rate.py`` is the base-rate model shared by the energy models and the chain samplers.
"""
