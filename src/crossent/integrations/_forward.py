"""A causal LM's ``forward``, read from its source: what crossent must run again without logits.

crossent patches a forward only when it can say exactly what the forward does. The rule:
every statement of the forward's body (its docstring aside) is one of these, in this order,
and nothing else is there::

    out = self.<body>(<the forward's own parameters, passed on as they came>)     # the decoder
    hidden = out.last_hidden_state                             # or out[0]
    hidden = slice_logits_to_keep(hidden, logits_to_keep)      # or, in older releases,
    #   slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else ...
    logits = self.<head>(hidden)                               # or (hidden[:, slice_indices, :])
    logits = logits * self.<a>...  or  logits = logits / self.<a>...    # scalings: 0 or more
    if self.<c>... is not None:                                # soft-capping: 0 or 1, last;
        logits = logits / self.<c>...                          # the `if` may be absent
        logits = torch.tanh(logits)
        logits = logits * self.<c>...
    loss = None
    if labels is not None:
        loss = self.loss_function(logits, labels, self.<vocab size>..., **kwargs)
    return <Output>(loss=loss, logits=logits, <field>=out.<field>, ...)

and its decorators are transformers' ``can_return_tuple``, ``deprecate_kwarg`` (constant
arguments) and ``auto_docstring``. The logits are then ``s · (W h + b)``, soft-capped at ``c``
when the forward caps them, with ``s`` the product of the scalings: exactly the logits
:func:`crossent.torch.linear_cross_entropy` computes from the hidden rows ``s · h``, the head's
weight ``W`` and bias ``s · b``, with ``softcap=c``. Anything else between the decoder and the
loss — a norm or a product applied to the hidden states, a second head, an auxiliary loss added
to ``loss`` (mixture-of-experts routers), a scaling after the cap — changes the logits or the
loss in a way this reading cannot follow, so the forward is refused with the statement that
broke the rule.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

Chain = tuple[str, ...]  # attribute names after ``self``: ("config", "logits_scaling")


class UnsupportedModelError(TypeError):
    """A model whose forward crossent cannot run without its logits (see :mod:`._forward`).

    The message names the model, the statement of its forward that breaks the rule, and the
    model types tested.

    >>> from crossent.integrations.transformers import patch
    >>> try:
    ...     patch("mixtral")               # its forward computes router logits first
    ... except UnsupportedModelError as error:
    ...     print(str(error)[:45])
    crossent cannot patch MixtralForCausalLM: Mix
    """


@dataclass(frozen=True)
class Scale:
    """``logits = logits * self.<chain>`` (``divide`` False) or ``logits / self.<chain>``."""

    chain: Chain
    divide: bool


@dataclass(frozen=True)
class Layout:
    """What one forward does, in the terms of the rule above."""

    parameters: tuple[str, ...]  # named parameters after self, positional ones first
    positional: int  # how many of them may be given by position
    defaults: dict[str, Any]
    takes_kwargs: bool  # the forward has **kwargs
    body: str  # self.<body> computes the hidden states
    body_args: tuple[str, ...]  # forward parameters passed to it by position
    body_keywords: tuple[tuple[str, str], ...]  # (keyword, forward parameter)
    body_kwargs: bool  # **kwargs passed on to it
    hidden_index: bool  # out[0] rather than out.last_hidden_state
    keep: Callable[[Any, Any], Any] | None  # rows kept for logits_to_keep, or None
    head: str  # self.<head> is the output layer
    scales: tuple[Scale, ...]
    softcap: Chain | None
    softcap_optional: bool  # "if ... is not None:" around the cap
    vocab: Chain  # the vocabulary size the loss is given
    loss_kwargs: bool  # **kwargs passed on to the loss
    output: Callable[..., Any]  # the output class
    fields: tuple[tuple[str, str], ...]  # (output field, decoder output attribute)
    decorators: tuple[Callable[[Any], Any], ...] = field(default=())  # outermost first


def read_forward(owner: str, forward: Any, known: dict[str, Any]) -> Layout:
    """The :class:`Layout` of ``forward`` (the method of class ``owner``), or
    :class:`UnsupportedModelError` naming the statement or decorator outside the rule.

    ``known`` maps the names of transformers' own helpers (``slice_logits_to_keep``,
    ``can_return_tuple``, ``deprecate_kwarg``, ``auto_docstring``) to the objects themselves:
    a name in the source counts only if the forward's module binds it to that object.
    """
    raw = inspect.unwrap(forward) if callable(forward) else None
    if raw is None or not inspect.isfunction(raw):
        raise UnsupportedModelError(f"{owner} has no Python forward to read")
    try:
        source = textwrap.dedent(inspect.getsource(raw))
    except (OSError, TypeError) as error:
        raise UnsupportedModelError(f"{owner}.forward has no source: {error}") from error
    tree = ast.parse(source).body[0]
    if not isinstance(tree, ast.FunctionDef):
        raise UnsupportedModelError(f"{owner}.forward is not a plain function")
    reader = _Reader(owner, raw, known)
    return reader.layout(tree, _decorators(reader, tree, forward))


def _decorators(reader: _Reader, tree: ast.FunctionDef, forward: Any) -> tuple[Any, ...]:
    """The forward's wrapping decorators, outermost first, built again from transformers' own;
    refused if the source names another one, or if they do not account for every wrapper."""
    found = [d for d in (_decorator(reader, node) for node in tree.decorator_list) if d]
    wrappers = sum(1 for _ in _wrapper_chain(forward))
    if wrappers != len(found):
        reader.refuse(tree, f"{wrappers} wrappers around forward but {len(found)} decorators")
    return tuple(found)


def _decorator(reader: _Reader, node: ast.expr) -> Any:
    """The decorator ``node`` names, built from transformers' object; None for
    ``auto_docstring``, which documents the function and returns it unwrapped."""
    call = node if isinstance(node, ast.Call) else None
    name = call.func if call else node
    if not isinstance(name, ast.Name) or name.id not in DECORATORS or not reader.is_known(name.id):
        reader.refuse(node, "a decorator crossent does not know")
    if name.id == "auto_docstring":
        return None
    if call is None:
        return reader.known[name.id]
    try:
        args = [ast.literal_eval(arg) for arg in call.args]
        keywords = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
    except ValueError:
        reader.refuse(node, "a decorator given arguments that are not constants")
    if len(keywords) != len(call.keywords):
        reader.refuse(node, "a decorator given **arguments")
    return reader.known[name.id](*args, **keywords)


def _wrapper_chain(function: Any) -> Iterator[Any]:
    """The wrappers around a decorated function (each one's ``__wrapped__``), outermost first."""
    while hasattr(function, "__wrapped__"):
        yield function
        function = function.__wrapped__


DECORATORS = ("can_return_tuple", "deprecate_kwarg", "auto_docstring")
KEEP = "slice_logits_to_keep"
SLICE_INDICES = (
    "slice_indices = slice(-logits_to_keep, None) "
    "if isinstance(logits_to_keep, int) else logits_to_keep"
)
LOSS_ROLES = ("logits", "labels", "vocab_size")  # loss_function's first three
CAP = ("logits = logits / {c}", "logits = torch.tanh(logits)", "logits = logits * {c}")


def keep_by_slice(hidden: Any, logits_to_keep: Any) -> Any:
    """The rows the older form keeps: the last ``logits_to_keep`` positions (0: all), or the
    positions a tensor names."""
    indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
    return hidden[:, indices, :]


@dataclass
class _Parts:
    """What the reader has found so far."""

    out: str = ""
    hidden: str = ""
    sliced: bool = False  # the slice_indices form
    fields: dict[str, Any] = field(default_factory=dict)


class _Reader:
    """Reads one forward's statements against the rule, in order."""

    def __init__(self, owner: str, raw: Any, known: dict[str, Any]) -> None:
        self.owner, self.raw, self.known = owner, raw, known
        self.signature = inspect.signature(raw)
        kinds = {p.kind: p.name for p in self.signature.parameters.values()}
        self.varkw = kinds.get(inspect.Parameter.VAR_KEYWORD)

    def is_known(self, name: str) -> bool:
        """Whether ``name`` in the forward's module is transformers' own object of that name."""
        return name in self.known and self.raw.__globals__.get(name) is self.known[name]

    def refuse(self, node: ast.AST, why: str) -> NoReturn:
        """Raise :class:`UnsupportedModelError`: the forward's file and line, and the source."""
        code = self.raw.__code__
        line = code.co_firstlineno + getattr(node, "lineno", 1) - 1
        text = ast.unparse(node).splitlines()[0]
        raise UnsupportedModelError(
            f"{self.owner}.forward ({code.co_filename}, line {line}) has {why}: `{text}`"
        )

    def layout(self, tree: ast.FunctionDef, decorators: tuple[Any, ...]) -> Layout:
        parameters, positional, defaults = self._parameters(tree)
        statements = _Cursor(self, _without_docstring(tree.body), tree)
        parts = _Parts()
        body, args, keywords, body_kwargs = self._body(statements.take(), parameters, parts)
        hidden_index = self._hidden(statements.take(), parts)
        keep = self._keep(statements, parameters, parts)
        head = self._head(statements.take(), parts)
        scales, softcap, optional = self._arithmetic(statements)
        statements.expect("loss = None")
        vocab, loss_kwargs = self._loss(statements.take())
        output = self._return(statements.take(), parts)
        statements.finish()
        return Layout(
            parameters, positional, defaults, self.varkw is not None, body, args, keywords,
            body_kwargs, hidden_index, keep, head, scales, softcap, optional, vocab,
            loss_kwargs, output, tuple(parts.fields.items()), decorators,
        )  # fmt: skip

    def _parameters(self, tree: ast.FunctionDef) -> tuple[tuple[str, ...], int, dict[str, Any]]:
        """Named parameters after ``self`` (positional ones first), how many are positional,
        and their defaults; refused without ``labels`` or with ``*args``."""
        found = list(self.signature.parameters.values())[1:]
        if any(p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY) for p in found):
            self.refuse(tree.args, "*args or positional-only parameters")
        named = [p for p in found if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if "labels" not in [p.name for p in named]:
            self.refuse(tree.args, "no `labels` parameter")
        positional = sum(1 for p in named if p.kind is p.POSITIONAL_OR_KEYWORD)
        defaults = {p.name: p.default for p in named if p.default is not p.empty}
        return tuple(p.name for p in named), positional, defaults

    def _body(
        self, statement: ast.stmt, parameters: tuple[str, ...], parts: _Parts
    ) -> tuple[str, tuple[str, ...], tuple[tuple[str, str], ...], bool]:
        """``out = self.<body>(...)``, given the forward's own parameters and none computed:
        the decoder, its positional and keyword arguments, whether ``**kwargs`` goes on."""
        target, call = _assignment(statement)
        body = _self_attr(call.func) if isinstance(call, ast.Call) else None
        if not isinstance(target, ast.Name) or not isinstance(call, ast.Call) or body is None:
            self.refuse(statement, "a first statement other than `out = self.<decoder>(...)`")
        args = tuple(self._argument(arg, parameters, statement) for arg in call.args)
        keywords = tuple(
            (k.arg, self._argument(k.value, parameters, statement)) for k in call.keywords if k.arg
        )
        spread = [k.value for k in call.keywords if k.arg is None]
        if not all(_is_name(value, self.varkw) for value in spread):
            self.refuse(statement, "a decoder given ** of something other than the forward's **")
        if "labels" in args + tuple(name for _, name in keywords):
            self.refuse(statement, "the labels passed to the decoder")
        parts.out = target.id
        return body, args, keywords, bool(spread)

    def _argument(self, node: ast.expr, parameters: tuple[str, ...], statement: ast.stmt) -> str:
        """The forward parameter a decoder argument passes on."""
        if not isinstance(node, ast.Name) or node.id not in parameters:
            self.refuse(statement, "a decoder argument that is not one of the forward's own")
        return node.id

    def _hidden(self, statement: ast.stmt, parts: _Parts) -> bool:
        """``hidden = out.last_hidden_state`` (False) or ``hidden = out[0]`` (True)."""
        target, value = _assignment(statement)
        by_name = _attr_of(value, parts.out) == "last_hidden_state"
        by_index = _same(value, f"{parts.out}[0]")
        if not isinstance(target, ast.Name) or not (by_name or by_index):
            self.refuse(statement, "no `hidden = out.last_hidden_state` after the decoder")
        parts.hidden = target.id
        return by_index

    def _keep(
        self, statements: _Cursor, parameters: tuple[str, ...], parts: _Parts
    ) -> Callable[[Any, Any], Any] | None:
        """How ``logits_to_keep`` selects rows; None where the forward has no such parameter."""
        if "logits_to_keep" not in parameters:
            return None
        statement, h = statements.take(), parts.hidden
        if _same(statement, f"{h} = {KEEP}({h}, logits_to_keep)") and self.is_known(KEEP):
            return self.known[KEEP]  # type: ignore[no-any-return]
        if _same(statement, SLICE_INDICES):
            parts.sliced = True
            return keep_by_slice
        return self.refuse(statement, "rows kept for `logits_to_keep` in an unknown way")

    def _head(self, statement: ast.stmt, parts: _Parts) -> str:
        """``logits = self.<head>(hidden)``: the head's attribute."""
        target, call = _assignment(statement)
        argument = f"{parts.hidden}[:, slice_indices, :]" if parts.sliced else parts.hidden
        head = _self_attr(call.func) if isinstance(call, ast.Call) else None
        if (
            not _is_name(target, "logits")
            or not isinstance(call, ast.Call)
            or head is None
            or call.keywords
            or len(call.args) != 1
            or not _same(call.args[0], argument)
        ):
            self.refuse(statement, f"no `logits = self.<head>({argument})` after it")
        return head

    def _arithmetic(self, statements: _Cursor) -> tuple[tuple[Scale, ...], Chain | None, bool]:
        """Scalings of the logits, then at most one soft-cap: (scales, cap, cap optional)."""
        scales: list[Scale] = []
        while True:
            cap = self._cap(statements)
            if cap is not None:
                return tuple(scales), cap[0], cap[1]
            scale = _scale(statements.peek())
            if scale is None:
                return tuple(scales), None, False
            scales.append(scale)
            statements.skip(1)

    def _cap(self, statements: _Cursor) -> tuple[Chain, bool] | None:
        """``logits = c · tanh(logits / c)``, bare or under ``if c is not None:``:
        (c's attributes, whether under the ``if``), or None for anything else."""
        first = statements.peek()
        optional = isinstance(first, ast.If) and not first.orelse
        window = first.body if isinstance(first, ast.If) else statements.upcoming(len(CAP))
        scale = _scale(window[0]) if window else None
        if scale is None or not scale.divide or len(window) != len(CAP):
            return None
        c = "self." + ".".join(scale.chain)
        if isinstance(first, ast.If) and not (optional and _same(first.test, f"{c} is not None")):
            return None
        if not all(_same(s, t.format(c=c)) for s, t in zip(window, CAP, strict=True)):
            return None
        if not self.is_known("torch"):
            self.refuse(window[1], "a `torch` that is not torch")
        statements.skip(1 if optional else len(CAP))
        return scale.chain, optional

    def _loss(self, statement: ast.stmt) -> tuple[Chain, bool]:
        """``if labels is not None: loss = self.loss_function(logits, labels, vocab, **kwargs)``
        (arguments by position or keyword): the vocabulary size's attributes, and whether
        ``**kwargs`` is passed on."""
        shape = "`if labels is not None: loss = self.loss_function(...)`"
        is_if = isinstance(statement, ast.If) and _same(statement.test, "labels is not None")
        inner = statement.body if isinstance(statement, ast.If) and not statement.orelse else []
        target, call = _assignment(inner[0]) if is_if and len(inner) == 1 else (None, None)
        if not _is_name(target, "loss") or not isinstance(call, ast.Call):
            self.refuse(statement, f"a loss other than {shape}")
        if not _same(call.func, "self.loss_function") or len(call.args) > len(LOSS_ROLES):
            self.refuse(statement, f"a loss other than {shape}")
        roles = dict(zip(LOSS_ROLES, call.args, strict=False))
        roles.update({k.arg: k.value for k in call.keywords if k.arg})
        spread = [k.value for k in call.keywords if k.arg is None]
        vocab = _chain(roles.get("vocab_size"))
        if (
            set(roles) != set(LOSS_ROLES)
            or not _is_name(roles["logits"], "logits")
            or not _is_name(roles["labels"], "labels")
            or vocab is None
            or not all(_is_name(value, self.varkw) for value in spread)
        ):
            self.refuse(statement, "a loss given more than logits, labels, vocab size, **kwargs")
        return vocab, bool(spread)

    def _return(self, statement: ast.stmt, parts: _Parts) -> Callable[..., Any]:
        """``return Output(loss=loss, logits=logits, field=out.field, ...)``: the class; the
        fields are left in ``parts``."""
        shape = "a return other than `return <ModelOutput>(loss=loss, ...)`"
        call = statement.value if isinstance(statement, ast.Return) else None
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
            self.refuse(statement, shape)
        output = self.raw.__globals__.get(call.func.id)
        if not isinstance(output, type) or not issubclass(output, self.known["ModelOutput"]):
            self.refuse(statement, shape)
        for keyword in call.keywords:
            if keyword.arg in ("loss", "logits") and _is_name(keyword.value, keyword.arg):
                continue
            attribute = _attr_of(keyword.value, parts.out)
            if call.args or keyword.arg is None or attribute is None:
                self.refuse(statement, "an output field that is not the decoder's")
            parts.fields[keyword.arg] = attribute
        if {k.arg for k in call.keywords} < {"loss", "logits"}:
            self.refuse(statement, "an output without `loss=loss, logits=logits`")
        return output


class _Cursor:
    """The forward's statements, taken in order."""

    def __init__(self, reader: _Reader, statements: list[ast.stmt], tree: ast.AST) -> None:
        self.reader, self.statements, self.tree, self.at = reader, statements, tree, 0

    def peek(self) -> ast.stmt | None:
        return self.statements[self.at] if self.at < len(self.statements) else None

    def upcoming(self, count: int) -> list[ast.stmt]:
        """The next ``count`` statements (fewer at the end), not taken."""
        return self.statements[self.at : self.at + count]

    def skip(self, count: int) -> None:
        self.at += count

    def take(self) -> ast.stmt:
        statement = self.peek()
        if statement is None:
            self.reader.refuse(self.tree, "fewer statements than the rule's")
        self.at += 1
        return statement

    def expect(self, template: str) -> None:
        statement = self.take()
        if not _same(statement, template):
            self.reader.refuse(statement, f"a statement other than `{template}`")

    def finish(self) -> None:
        if self.peek() is not None:
            self.reader.refuse(self.statements[self.at], "a statement after the return")


def _without_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    first = body[0] if body else None
    is_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    return body[1:] if is_doc else body


def _assignment(statement: ast.AST | None) -> tuple[ast.expr | None, ast.expr | None]:
    """(target, value) of ``a = b`` or ``a: T = b``; (None, None) otherwise."""
    if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
        return statement.targets[0], statement.value
    if isinstance(statement, ast.AnnAssign) and statement.simple and statement.value is not None:
        return statement.target, statement.value
    return None, None


def _same(node: ast.AST | None, template: str) -> bool:
    """Whether ``node`` is the statement or expression ``template`` (positions aside)."""
    if node is None:
        return False
    parsed = ast.parse(template).body[0]
    if isinstance(node, ast.expr) and isinstance(parsed, ast.Expr):
        return ast.dump(node) == ast.dump(parsed.value)
    return ast.dump(node) == ast.dump(parsed)


def _is_name(node: ast.AST | None, name: str | None) -> bool:
    return isinstance(node, ast.Name) and name is not None and node.id == name


def _self_attr(node: ast.AST | None) -> str | None:
    """``x`` for ``self.x``."""
    if isinstance(node, ast.Attribute) and _is_name(node.value, "self"):
        return node.attr
    return None


def _attr_of(node: ast.AST | None, owner: str) -> str | None:
    """``x`` for ``<owner>.x``."""
    if isinstance(node, ast.Attribute) and _is_name(node.value, owner):
        return node.attr
    return None


def _chain(node: ast.AST | None) -> Chain | None:
    """("config", "x") for ``self.config.x``; None for anything but attributes of self."""
    names: list[str] = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    return tuple(reversed(names)) if names and _is_name(node, "self") else None


def _scale(statement: ast.AST | None) -> Scale | None:
    """``logits = logits * self.<chain>`` or ``logits = logits / self.<chain>``."""
    target, value = _assignment(statement)
    if not _is_name(target, "logits") or not isinstance(value, ast.BinOp):
        return None
    chain = _chain(value.right)
    if not _is_name(value.left, "logits") or chain is None:
        return None
    if isinstance(value.op, ast.Mult | ast.Div):
        return Scale(chain, isinstance(value.op, ast.Div))
    return None
