"""Samplers from autoencoders, generative stochastic networks and diffusion (Goodfellow et al.
2016, sections 20.11-20.13).

``base.py``: the Markov-chain machinery of the autoencoder samplers
(:class:`~gm.models.chains.base.ChainSampler`: sampling, the Parzen proxy, chain-quality and
inpainting extras).  Registered models: ``cae``, ``dae``/``dae_walkback``, ``gsn``, ``diffusion``.
"""
