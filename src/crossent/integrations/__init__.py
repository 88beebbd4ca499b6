"""Where crossent meets other frameworks; each integration is imported only when it is used.

- :mod:`crossent.integrations.transformers`: Hugging Face causal LMs trained on
  :func:`crossent.torch.linear_cross_entropy` without their logits (``patch(model)``), and a
  ``TrainerCallback`` that logs bits per token, perplexity and bits per byte. Needs
  ``pip install 'crossent[transformers]'``.
"""
