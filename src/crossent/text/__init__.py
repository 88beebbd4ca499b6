"""Text in bits: a language model's cross entropy on a text is the size of the text coded by
the model (docs/text.md).

The modules, in the order data flows: :mod:`~crossent.text.source` (a file checked as UTF-8
text) → :mod:`~crossent.text.models` (``load``: a byte model of ``crossent text train`` or a
local Hugging Face causal LM) → :mod:`~crossent.text.score` (Σ −log2 q per token, per byte,
per character; perplexity; gzip, bzip2, xz, zstd beside it) → :mod:`~crossent.text.coding`
(the text range-coded under the model, within a stated bound of those bits, and back).
:mod:`~crossent.text.train` fits the byte model with :func:`crossent.torch.cross_entropy`.
Nothing here imports torch or transformers until a model is loaded or trained.
"""
