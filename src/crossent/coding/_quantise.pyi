"""crossent's compiled quantiser (``_quantise.c``); built where a C compiler is found."""

def free_frequencies(
    u: int, rows: int, classes: int, labels: int, free: int, fingerprint: int
) -> tuple[int, float, float]:
    """The coder's frequencies minus 1 of C-contiguous float64 weights ``(rows, classes)`` at
    address ``u``, into ``free``, and each row's fingerprint; returns (the first refused row or
    -1, Σ float-model bits, Σ quantised-model bits) for int32 ``labels`` (address, 0: none)."""
