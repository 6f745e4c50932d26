"""Directed generator nets (Goodfellow et al. 2016, sections 20.10.1-20.10.6).

``base.py``: what the implicit generators share
(:class:`~gm.models.directed.base.ImplicitGenerator`: x = g(z), the Parzen proxy and decoder
AIS).  Registered models: ``sbn`` (sigmoid belief net),
``vae``/``vae_gaussian`` (VAE and IWAE), ``gan``, ``dcgan``, ``gmmn``.
"""
