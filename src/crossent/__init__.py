"""crossent: cross entropy, log-likelihood and the information measures behind them.

The public names, each documented with its math and unit:

- :func:`entropy` H(p), :func:`cross_entropy` H(p, q), :func:`kl_divergence` D(p ‖ q),
  :func:`nll` (the negative log-likelihood of observed classes) and :func:`perplexity`,
  for NumPy arrays and torch tensors, in bits (``base=2``, the default) or nats (``base=math.e``).
"""

from crossent.measures import cross_entropy, entropy, kl_divergence, nll, perplexity

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "cross_entropy",
    "entropy",
    "kl_divergence",
    "nll",
    "perplexity",
]
