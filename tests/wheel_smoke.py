"""An installed crossent works: a measure, the loss against PyTorch's, the command line, and the
compiled kernel. Run by tests/test_packaging.py in a fresh virtual environment, and by
cibuildwheel on every wheel it builds (pyproject.toml): ``python tests/wheel_smoke.py``;
``--kernel-optional`` where the platform's wheel is built without the kernel.
"""

from __future__ import annotations

import contextlib
import io
import sys


def main(kernel_optional: bool) -> None:
    import torch

    import crossent
    import crossent.torch
    from crossent.cli import main as command

    assert crossent.entropy([0.5, 0.25, 0.25]) == 1.5, "H(1/2, 1/4, 1/4) is 1.5 bits"
    logits = torch.randn(64, 1000, generator=torch.Generator().manual_seed(0))
    target = torch.arange(64) * 7
    expected = torch.nn.functional.cross_entropy(logits, target)
    loss = crossent.torch.cross_entropy(logits, target)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    kernel = crossent.torch.native_available()
    assert kernel or kernel_optional, "the wheel was built without the compiled kernel"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert command(["explain"]) == 0
    assert "1.5" in printed.getvalue(), printed.getvalue()
    print(f"crossent {crossent.__version__}: measures, loss, explain; kernel {kernel}")


if __name__ == "__main__":
    main(kernel_optional="--kernel-optional" in sys.argv[1:])
