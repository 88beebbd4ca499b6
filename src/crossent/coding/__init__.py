"""The coding view of entropy (docs/theory.md §3–§4): real codes whose lengths are the measures.

- :mod:`~crossent.coding.codes`: prefix codes from code lengths (Shannon lengths, canonical
  code words, expected lengths);
- :mod:`~crossent.coding.huffman`: Huffman and Shannon codes of a distribution and their
  exact and measured cost on another distribution;
- :mod:`~crossent.coding.labels`: labels compressed with a model's per-example predictions.
"""

from crossent.coding.codes import canonical_code, expected_length, shannon_lengths
from crossent.coding.huffman import CodeCost, code_cost, huffman_code, shannon_code
from crossent.coding.labels import Summary, compress, decompress, quantise

__all__ = [
    "CodeCost",
    "Summary",
    "canonical_code",
    "code_cost",
    "compress",
    "decompress",
    "expected_length",
    "huffman_code",
    "quantise",
    "shannon_code",
    "shannon_lengths",
]
