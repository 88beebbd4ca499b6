"""crossent's compiled CPU kernel (``_native.c``); built where a C compiler is found."""

def levels() -> list[int]:
    """The instruction-set levels this CPU runs: 0 baseline, 1 AVX2, 2 AVX-512; best last."""

def index_rows(
    x: int,
    x_ld: int,
    out: int,
    out_ld: int,
    y: int,
    rows: int,
    classes: int,
    weight: int,
    total_weight: float,
    ignore_index: int,
    eps: float,
    z: float,
    scale: int,
    scale_step: int,
    loss: int,
    lse: int,
    level: int,
) -> int:
    """Losses (and the gradient) of float32 rows with int64 labels, from raw addresses (0 for
    none); -1, or the first row whose label is neither ``ignore_index`` nor a class."""
