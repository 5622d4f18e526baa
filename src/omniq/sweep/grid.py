"""Grids: a dict of axes, ``zipped`` axes or a list of points, expanded to points; and
``parse_sweep_spec``, the cell magic's ``--sweep "lr=[1e-3, 1e-2]; seed=range(3)"`` read
safely (no ``eval``). Pure functions."""

from __future__ import annotations

import ast
import itertools
import operator
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..errors import ConfigError

_MAX_AXIS = 1_000_000  # values one spec axis may expand to (guards `range(10**12)`)


# ============================================================================================
# grids: pure functions
# ============================================================================================
class Zipped:
    """Axes that advance together: ``zipped(a=[1, 2], b=[3, 4])`` is the points
    ``{a: 1, b: 3}`` and ``{a: 2, b: 4}`` (not their product).

    Made by :func:`zipped`, which checks the axes; use it as a whole grid or as one value of a
    dict grid (its key there is only a label).

    Args:
        names: The parameter names, one per axis.
        rows: One tuple of values per point, in the order of ``names``.

    Examples:
        >>> from omniq.sweep import zipped
        >>> z = zipped(lr=[0.1, 0.01], momentum=[0.9, 0.99])
        >>> len(z), z.names
        (2, ('lr', 'momentum'))
        >>> z
        zipped(lr=[0.1, 0.01], momentum=[0.9, 0.99])
    """

    __slots__ = ("names", "rows")

    def __init__(self, names: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        self.names = tuple(names)
        self.rows = list(rows)

    def points(self) -> list[dict[str, Any]]:
        """The points, one dict of parameters per row.

        Returns:
            ``[{name: value, ...}, ...]`` in row order.

        Examples:
            >>> from omniq.sweep import zipped
            >>> zipped(a=[1, 2], b=[3, 4]).points()
            [{'a': 1, 'b': 3}, {'a': 2, 'b': 4}]
        """
        return [dict(zip(self.names, row)) for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Zipped) and (self.names, self.rows) == (other.names, other.rows)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        cols = ", ".join(f"{n}={[r[i] for r in self.rows]!r}" for i, n in enumerate(self.names))
        return f"zipped({cols})"


def zipped(**axes: Iterable[Any]) -> Zipped:
    """Axes of equal length that advance together (see :class:`Zipped`).

    Args:
        **axes: Parameter name -> a list (or other iterable) of values; all equally long. A set
            is sorted, so the order does not vary between processes.

    Returns:
        The zipped axes, to use as a grid or as one value of a dict grid.

    Raises:
        ConfigError: No axis, an axis that is not a list of values (a string, a dict, a
            number), axes of different lengths, or empty axes.

    Examples:
        >>> from omniq.sweep import expand_grid, zipped
        >>> expand_grid({"opt": zipped(lr=[0.1, 0.01], momentum=[0.9, 0.99]), "seed": range(2)})
        ... # doctest: +NORMALIZE_WHITESPACE
        [{'lr': 0.1, 'momentum': 0.9, 'seed': 0}, {'lr': 0.1, 'momentum': 0.9, 'seed': 1},
         {'lr': 0.01, 'momentum': 0.99, 'seed': 0}, {'lr': 0.01, 'momentum': 0.99, 'seed': 1}]
        >>> zipped(lr=[0.1, 0.01], momentum=[0.9])
        Traceback (most recent call last):
        ...
        omniq.errors.ConfigError: zipped axes have different lengths {'lr': 2, 'momentum': 1}: zipped axes must be equally long
    """
    if not axes:
        raise ConfigError("zipped() needs at least one axis, e.g. zipped(lr=[0.1, 0.01], momentum=[0.9, 0.99])")
    cols = {}
    for name, values in axes.items():
        if isinstance(values, (str, bytes, bytearray, Mapping)) or not isinstance(values, Iterable):
            raise ConfigError(f"zipped axis {name}={values!r} is not valid: expected a list of values")
        cols[name] = _ordered(values)
    lengths = {n: len(v) for n, v in cols.items()}
    if len(set(lengths.values())) != 1:
        raise ConfigError(f"zipped axes have different lengths {lengths}: zipped axes must be equally long")
    if not next(iter(lengths.values())):
        raise ConfigError(f"zipped axes {', '.join(cols)} are empty: every axis needs at least one value")
    return Zipped(list(cols), list(zip(*cols.values())))


def _ordered(values: Iterable[Any]) -> list[Any]:
    if isinstance(values, (set, frozenset)):  # iteration order of a set varies between processes
        try:
            return sorted(values)
        except TypeError:
            return sorted(values, key=repr)
    return list(values)


def _axis(name: Any, values: Any) -> list[Any]:
    if not isinstance(name, str):
        raise ConfigError(f"grid key {name!r} is not valid: parameter names must be strings")
    if isinstance(values, (str, bytes, bytearray, Mapping)) or not isinstance(values, Iterable):
        return [values]
    out = _ordered(values)
    if not out:
        raise ConfigError(f"grid[{name!r}] is empty: every axis needs at least one value")
    return out


def expand_grid(grid: Any) -> list[dict[str, Any]]:
    """The points of a grid, in grid order.

    Args:
        grid: A dict of axes (the cartesian product in key order, the last key varying
            fastest; a ``str``, ``bytes``, mapping or non-iterable value is one fixed value; a
            :class:`Zipped` value adds its axes together), a :class:`Zipped`, or a list of
            dicts (the points as given).

    Returns:
        One dict of keyword arguments per point.

    Raises:
        ConfigError: An empty grid or axis, a key that is not a string, a parameter named
            twice, a list item that is not a dict, or a grid of another type (a spec string
            goes through :func:`parse_sweep_spec` first).

    Examples:
        >>> from omniq.sweep import expand_grid
        >>> expand_grid({"lr": [0.1, 0.01], "seed": range(2), "model": "resnet"})
        ... # doctest: +NORMALIZE_WHITESPACE
        [{'lr': 0.1, 'seed': 0, 'model': 'resnet'}, {'lr': 0.1, 'seed': 1, 'model': 'resnet'},
         {'lr': 0.01, 'seed': 0, 'model': 'resnet'}, {'lr': 0.01, 'seed': 1, 'model': 'resnet'}]
        >>> expand_grid([{"n": 1}, {"n": 5}])
        [{'n': 1}, {'n': 5}]
    """
    if isinstance(grid, Zipped):
        return grid.points()
    if isinstance(grid, Mapping):
        if not grid:
            raise ConfigError("grid={} is empty: expected a dict of axes such as {'lr': [0.1, 0.01]}")
        names: list[str] = []
        columns: list[list[tuple[Any, ...]]] = []
        simple = True
        for key, spec in grid.items():
            if isinstance(spec, Zipped):
                names.extend(spec.names)
                columns.append(spec.rows)
                simple = False
            else:
                names.append(key)
                columns.append(_axis(key, spec))
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"grid names parameter(s) {', '.join(dup)} more than once: each may appear once")
        if simple:
            return [dict(zip(names, combo)) for combo in itertools.product(*columns)]
        rows = [c if isinstance(spec, Zipped) else [(v,) for v in c] for c, spec in zip(columns, grid.values())]
        chain = itertools.chain.from_iterable
        return [dict(zip(names, chain(combo))) for combo in itertools.product(*rows)]
    if isinstance(grid, (str, bytes)) or not isinstance(grid, Iterable):
        raise ConfigError(
            f"grid={grid!r} is not valid: expected a dict of axes, a list of dicts, or zipped(...)"
            + ("; for a spec string use parse_sweep_spec()" if isinstance(grid, str) else "")
        )
    points = []
    for i, p in enumerate(grid):
        if not isinstance(p, Mapping):
            raise ConfigError(f"grid[{i}]={p!r} is not valid: a list grid holds dicts of parameters")
        bad = [k for k in p if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"grid[{i}] key {bad[0]!r} is not valid: parameter names must be strings")
        points.append(dict(p))
    if not points:
        raise ConfigError("grid is empty: a sweep needs at least one point")
    return points


# ============================================================================================
# parse_sweep_spec: the cell magic's --sweep "lr=[1e-3, 1e-2]; seed=range(3)"
# ============================================================================================
_SPEC_HELP = (
    "expected 'name=values' parts such as \"lr=[1e-3, 1e-2]; seed=range(3)\" using literals, "
    "range(...), zip(...), + - * / // % ** and names from the namespace when one is given"
)
_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_MAX_INT_BITS = 100_000
_MAX_SPEC = 20_000


class _SpecError(Exception):
    """Internal: what is wrong with one node; turned into a ConfigError naming the part."""


def _strip_quotes(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1].strip()
    return text


def parse_sweep_spec(spec: str, namespace: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Parse ``"lr=[1e-3, 1e-2]; seed=range(3)"`` into a grid dict, without ``eval``.

    Parts are separated by ``;`` (or newlines, or commas). Right-hand sides may use literals,
    ``range``, ``zip`` and arithmetic; other names only from ``namespace``, when given. One
    level of surrounding quotes is stripped (IPython's ``magic_arguments`` keeps them). A
    single value is a fixed parameter (``lr=0.1`` -> ``[0.1]``); ``a, b = zip(xs, ys)`` gives a
    :class:`Zipped` entry under the key ``"a,b"``.

    Args:
        spec: The spec text, as after ``%%omniq submit --sweep``.
        namespace: Names a right-hand side may use besides literals, ``range`` and ``zip``
            (the magic passes the notebook's namespace); None allows no others.

    Returns:
        A grid dict for :func:`expand_grid` or ``oq.sweep``.

    Raises:
        ConfigError: The spec is not a string, is empty or too long, or a part is not
            ``name = value`` with a value made of what is allowed; the message names the part.

    Examples:
        >>> from omniq.sweep import expand_grid, parse_sweep_spec
        >>> grid = parse_sweep_spec("lr=[1e-3, 1e-2]; seed=range(2)")
        >>> grid
        {'lr': [0.001, 0.01], 'seed': [0, 1]}
        >>> len(expand_grid(grid))
        4
        >>> parse_sweep_spec("n=[1, 2]; a, b = zip([1, 2], [3, 4])")
        {'n': [1, 2], 'a,b': zipped(a=[1, 2], b=[3, 4])}
    """
    if not isinstance(spec, str):
        raise ConfigError(f"sweep spec {spec!r} is not valid: expected a string, {_SPEC_HELP}")
    text = _strip_quotes(spec)
    if not text:
        raise ConfigError(f"sweep spec {spec!r} is empty: {_SPEC_HELP}")
    if len(text) > _MAX_SPEC:
        raise ConfigError(f"sweep spec is {len(text)} characters long: at most {_MAX_SPEC} are allowed")
    pairs = _spec_assignments(text)
    out: dict[str, Any] = {}
    seen: set[str] = set()
    evaluator = _SafeEval(namespace)
    for targets, node, part in pairs:
        for t in targets:
            if t in seen:
                raise ConfigError(f"sweep spec part {part!r} is not valid: {t} is given more than once")
            seen.add(t)
        try:
            value = evaluator.eval(node)
            out[",".join(targets)] = _spec_axis(targets, value)
        except _SpecError as exc:
            raise ConfigError(f"sweep spec part {part!r} is not valid: {exc}; {_SPEC_HELP}") from None
        except (TypeError, ValueError, ArithmeticError, RecursionError, MemoryError) as exc:
            raise ConfigError(
                f"sweep spec part {part!r} is not valid: {type(exc).__name__}: {exc}"
            ) from None
    return out


def _spec_assignments(text: str) -> list[tuple[tuple[str, ...], ast.expr, str]]:
    """``(target names, value node, source of the part)`` per assignment."""
    try:
        stmts: list[ast.stmt] = list(_parse(text, "exec").body)  # type: ignore[attr-defined]
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        # "a=[1], b=2": comma-separated, parsed as the keywords of a call
        try:
            call = _parse(f"_({text}\n)", "eval").body  # type: ignore[attr-defined]
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            call = None
        if (
            isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "_"
            and not call.args and call.keywords and all(k.arg for k in call.keywords)
        ):
            return [((str(k.arg),), k.value, _segment(text, k, offset=-2)) for k in call.keywords]
        raise ConfigError(_syntax_message(text, exc)) from None
    out = []
    for st in stmts:
        part = _segment(text, st)
        if not isinstance(st, ast.Assign) or len(st.targets) != 1:
            raise ConfigError(f"sweep spec part {part!r} is not valid: not a single 'name=values' assignment; {_SPEC_HELP}")
        target = st.targets[0]
        if isinstance(target, ast.Name):
            names: tuple[str, ...] = (target.id,)
        elif isinstance(target, ast.Tuple) and target.elts and all(isinstance(e, ast.Name) for e in target.elts):
            names = tuple(e.id for e in target.elts)  # type: ignore[attr-defined]
        else:
            raise ConfigError(f"sweep spec part {part!r} is not valid: the left side must be a name or 'a, b'; {_SPEC_HELP}")
        out.append((names, st.value, part))
    if not out:
        raise ConfigError(f"sweep spec {text!r} has no assignments: {_SPEC_HELP}")
    return out


def _parse(text: str, mode: str) -> ast.AST:
    """``ast.parse`` without its warnings (e.g. "invalid decimal literal" for ``1a``): a spec
    that is wrong gets a ConfigError, not a warning plus one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(text, "<sweep spec>", mode)


def _segment(text: str, node: ast.AST, offset: int = 0) -> str:
    """Source of a node (single- or multi-line), for error messages."""
    lines = text.splitlines() or [text]
    try:
        if node.lineno == node.end_lineno:  # type: ignore[attr-defined]
            line = lines[node.lineno - 1]  # type: ignore[attr-defined]
            start = max(0, node.col_offset + (offset if node.lineno == 1 else 0))  # type: ignore[attr-defined]
            end = node.end_col_offset + (offset if node.lineno == 1 else 0)  # type: ignore[attr-defined]
            return line[start:end]
    except (AttributeError, IndexError, TypeError):
        pass
    return ast.get_source_segment(text, node) or text


def _syntax_message(text: str, exc: BaseException) -> str:
    if not isinstance(exc, SyntaxError) or exc.offset is None or exc.lineno is None:
        return f"sweep spec {text!r} is not valid: {exc}; {_SPEC_HELP}"
    # name the ';'-separated part holding the error
    lines = text.splitlines() or [text]
    line = lines[min(exc.lineno, len(lines)) - 1]
    col = exc.offset - 1
    start = line.rfind(";", 0, max(col, 0)) + 1
    end = line.find(";", max(col, 0))
    part = line[start: end if end >= 0 else len(line)].strip() or line.strip()
    return f"sweep spec part {part!r} is not valid: {exc.msg}; {_SPEC_HELP}"


def _spec_axis(names: tuple[str, ...], value: Any) -> Any:
    if len(names) == 1:  # like a dict grid's value: an iterable is the axis, anything else one value
        if isinstance(value, (str, bytes, bytearray, Mapping)) or not isinstance(value, Iterable):
            return [value]
        values = list(itertools.islice(value, _MAX_AXIS + 1)) if not isinstance(value, (set, frozenset)) else _ordered(value)
        if not values:
            raise _SpecError(f"{names[0]} has no values")
        if len(values) > _MAX_AXIS:
            raise _SpecError(f"{names[0]} has more than {_MAX_AXIS} values")
        return values
    if not isinstance(value, (list, tuple)) or not value:
        raise _SpecError(f"{', '.join(names)} needs a non-empty list of {len(names)}-tuples, e.g. zip(...)")
    rows = []
    for row in value:
        if not isinstance(row, (list, tuple)) or len(row) != len(names):
            raise _SpecError(f"{row!r} does not have {len(names)} values for {', '.join(names)}")
        rows.append(tuple(row))
    return Zipped(names, rows)


class _SafeEval:
    """Evaluates the few node types a spec needs; anything else is a ``_SpecError``."""

    def __init__(self, namespace: Mapping[str, Any] | None) -> None:
        self.namespace = namespace

    def eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            if node.value is Ellipsis:
                raise _SpecError("'...' is not a value")
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.eval(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise _SpecError("'**' unpacking is not allowed")
            return {self.eval(k): self.eval(v) for k, v in zip(node.keys, node.values)}  # type: ignore[arg-type]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = self.eval(node.operand)
            if not isinstance(v, (int, float, complex)) or isinstance(v, bool):
                raise _SpecError("unary + and - apply to numbers only")
            return -v if isinstance(node.op, ast.USub) else +v
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return self._binop(node)
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Name):
            if self.namespace is None:
                raise _SpecError(f"name {node.id!r} is not allowed here (no namespace was given)")
            if node.id not in self.namespace:
                raise _SpecError(f"name {node.id!r} is not defined")
            return self.namespace[node.id]
        raise _SpecError(f"{type(node).__name__} expressions are not allowed")

    def _binop(self, node: ast.BinOp) -> Any:
        left, right = self.eval(node.left), self.eval(node.right)
        op = type(node.op)
        if op is ast.Mod and isinstance(left, (str, bytes)):
            raise _SpecError("'%' formatting is not allowed")
        if (
            op is ast.Pow and isinstance(left, int) and isinstance(right, int)
            and right > 0 and max(left.bit_length(), 1) * right > _MAX_INT_BITS
        ):
            raise _SpecError("the power is too large")
        if op is ast.Mult:
            for seq, n in ((left, right), (right, left)):
                if (
                    isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int)
                    and len(seq) * max(n, 0) > _MAX_AXIS
                ):
                    raise _SpecError(f"the repetition would hold more than {_MAX_AXIS} items")
        value = _BINOPS[op](left, right)
        if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
            raise _SpecError("the number is too large")
        return value

    def _call(self, node: ast.Call) -> Any:
        fn = node.func.id if isinstance(node.func, ast.Name) else None
        if fn not in ("range", "zip"):
            raise _SpecError("only range(...) and zip(...) may be called")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise _SpecError(f"{fn}() takes plain positional arguments here")
        args = [self.eval(a) for a in node.args]
        if fn == "range":
            r = range(*args)
            if len(r) > _MAX_AXIS:
                raise _SpecError(f"range(...) has {len(r)} values: at most {_MAX_AXIS} are allowed")
            return list(r)
        if not all(isinstance(a, (list, tuple)) for a in args):
            raise _SpecError("zip() takes lists or tuples")
        return list(zip(*args))


