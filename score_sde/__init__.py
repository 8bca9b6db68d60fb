"""score_sde: score-based generative modeling through SDEs (Song et al., ICLR 2021) in JAX."""
__version__ = '0.1.0'
