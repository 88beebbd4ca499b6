"""The coding view of entropy (SEED.md §3–§4): real codes whose lengths are the measures."""

from crossent.coding.codes import canonical_code, expected_length, shannon_lengths

__all__ = ["canonical_code", "expected_length", "shannon_lengths"]
