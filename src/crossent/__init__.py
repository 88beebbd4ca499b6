"""crossent: cross entropy, log-likelihood and the information measures behind them.

The public names, each documented with its math and unit:

- :func:`entropy` H(p), :func:`cross_entropy` H(p, q), :func:`kl_divergence` D(p ‖ q),
  :func:`nll` (the negative log-likelihood of observed classes) and :func:`perplexity`,
  for NumPy arrays and torch tensors, in bits (``base=2``, the default) or nats (``base=math.e``).

They are imported on first use, so that ``import crossent`` (which the command line does
first) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
_MEASURES = frozenset(__all__[1:])


def __getattr__(name: str) -> Any:
    """A measure, imported from :mod:`crossent.measures` the first time it is asked for."""
    if name in _MEASURES:
        from crossent import measures

        value = getattr(measures, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'crossent' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
