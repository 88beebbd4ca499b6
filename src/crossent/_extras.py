"""Optional dependencies: which extra of crossent installs each, and the error that says so.

The core install (torch, NumPy, rich, bitarray) computes the measures and the losses and runs
``crossent explain``. The rest comes with extras named by what they enable; a module that
needs a missing one raises :class:`MissingExtraError`, a :class:`ModuleNotFoundError` whose
message names the extra to install.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

EXTRAS = {
    "pyarrow": "classifier",
    "sklearn": "classifier",
    "matplotlib": "classifier",
    "constriction": "compress",
    "transformers": "transformers",
    "accelerate": "transformers",
    "shtab": "completion",
    "zstandard": "text",
}
"""Each optional top-level module and the extra of crossent that installs it."""


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra that installs it.

    >>> error = MissingExtraError.of("crossent train", "sklearn", "classifier")
    >>> print(error)
    crossent train needs sklearn, which is not installed: pip install 'crossent[classifier]'
    >>> isinstance(error, ImportError), error.name
    (True, 'sklearn')
    """

    @classmethod
    def of(cls, user: str, module: str, extra: str) -> MissingExtraError:
        """The error for ``user`` (what needs it), missing ``module``, installed by ``extra``."""
        message = f"{user} needs {module}, which is not installed: pip install 'crossent[{extra}]'"
        return cls(message, name=module)


def absent(extra: str) -> str | None:
    """The first module that ``extra`` installs and this Python lacks, found without importing
    anything (``None`` where every one is there).

    >>> absent("no such extra") is None
    True
    """
    for module, its_extra in EXTRAS.items():
        if its_extra == extra and not _installed(module):
            return module
    return None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # sys.modules[module] is None: imports of it are blocked
        return False


def optional_module(error: ImportError) -> str | None:
    """The optional top-level module whose absence raised ``error``, or None for any other."""
    if not isinstance(error, ModuleNotFoundError) or error.name is None:
        return None
    top = error.name.partition(".")[0]
    return top if top in EXTRAS else None


@contextmanager
def needs(user: str, extra: str | None = None) -> Iterator[None]:
    """Imports in the block that miss an optional dependency raise :class:`MissingExtraError`
    naming ``user`` and the extra to install (``extra``, else the dependency's own).

    >>> try:
    ...     with needs("crossent train"):
    ...         raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
    ... except MissingExtraError as error:
    ...     print(error)
    crossent train needs matplotlib, which is not installed: pip install 'crossent[classifier]'
    """
    try:
        yield
    except ModuleNotFoundError as error:
        module = optional_module(error)
        if module is None or isinstance(error, MissingExtraError):
            raise
        raise MissingExtraError.of(user, module, extra or EXTRAS[module]) from None
