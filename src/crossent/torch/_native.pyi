"""crossent's compiled CPU kernel (``_native.c``); built where a C compiler is found."""

def levels() -> list[int]:
    """The instruction-set levels this CPU runs: 0 baseline, 1 AVX2, 2 AVX-512; best last."""

def layout() -> tuple[tuple[tuple[str, int, int], ...], int]:
    """(name, offset, size) of each field of ``struct Rows``, in order, and its size."""

def index_rows(address: int, level: int) -> int:
    """Losses (and the gradient) of the float32 rows with int64 labels that the ``struct Rows``
    at ``address`` describes; -1, or the first row whose label is neither ``ignore_index`` nor
    a class."""
