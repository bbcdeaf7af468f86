"""Resource limits for tenant templates: work, memory and time, inside the Jinja2 sandbox.

The sandbox blocks attribute access; this bounds what a template may do with what it can
reach. Two kinds of guard, because a render runs in a thread that shares the GIL with the
worker's event loop:

- **Refused before doing it**: operations a single C call would spend seconds or gigabytes
  on (`7 ** 3000000`, `'x' * 30000000`, `'x'|center(10**9)`, `lipsum(100000)`) are
  checked on their operands and refused at once. `*`, `**`, `+` and `%` are intercepted
  binary operators, which also keeps Jinja's compiler from constant-folding them at
  compile time.
- **Counted while doing it**: every loop iteration, call, attribute/item lookup and output
  expression ticks a per-render budget (`Budget`, thread-local) that checks the deadline and
  adds up the characters produced (loops are charged their literal text per iteration), so a
  loop of 30M iterations or a macro recursion bomb stops at the deadline or the cap.

Whatever exceeds a limit raises TemplateLimitError (a SecurityError, so a TemplateError).
"""

from __future__ import annotations

import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import wraps
from typing import Any, cast

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import _PassArg

# Integers beyond this many bits have no use in a message (Python prints at most 4,300
# digits, about 14,000 bits) and each product of them costs more.
MAX_INT_BITS = 100_000
# Items of a range, and counts for batch/slice: Jinja's own MAX_RANGE.
MAX_RANGE = 100_000
# Characters produced over the whole render (every output expression, captured or not) may
# exceed the final output cap by this factor: nested macros count their output at each level.
WORK_FACTOR = 16
# Check the clock every this many ticks (a tick is a few hundred nanoseconds of template).
_CLOCK_EVERY = 64


class TemplateLimitError(SecurityError):
    """The template exceeded a resource limit (size, count or time)."""


@dataclass(frozen=True)
class Limits:
    max_output_chars: int = 1_000_000
    budget_seconds: float = 1.0


class Budget:
    """One render's allowance: a deadline and the characters produced so far."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.budget_seconds
        self.ticks = 0
        self.produced = 0  # every output value and loop iteration, captured or not
        self.output = 0  # the rendered result so far (all fields)

    def tick(self) -> None:
        self.ticks += 1
        if self.ticks % _CLOCK_EVERY == 0 and time.monotonic() > self.deadline:
            raise TemplateLimitError(
                f"template exceeded its time budget of {self.limits.budget_seconds:g} s"
            )

    def charge(self, chars: int) -> None:
        self.tick()
        self.produced += chars
        if self.produced > self.limits.max_output_chars * WORK_FACTOR:
            raise TemplateLimitError(
                f"template produced over {self.limits.max_output_chars * WORK_FACTOR} "
                "characters while rendering"
            )


_local = threading.local()
_DEFAULT = Limits()


def _budget() -> Budget | None:
    return getattr(_local, "budget", None)


def _cap() -> int:
    budget = _budget()
    return (budget.limits if budget else _DEFAULT).max_output_chars


def _tick() -> None:
    budget = _budget()
    if budget is not None:
        budget.tick()


class running:
    """`with running(limits):` a render in this thread, under a fresh budget."""

    def __init__(self, limits: Limits) -> None:
        self.budget = Budget(limits)

    def __enter__(self) -> Budget:
        self.previous = _budget()
        _local.budget = self.budget
        return self.budget

    def __exit__(self, *exc: object) -> None:
        _local.budget = self.previous


def _refuse(what: str) -> TemplateLimitError:
    return TemplateLimitError(f"{what} (limit {_cap()} characters)")


def _check_size(value: Any, what: str) -> Any:
    if isinstance(value, str | bytes | list | tuple | dict) and len(value) > _cap():
        raise _refuse(f"{what} would be {len(value)} long")
    return value


def estimate(value: Any, limit: int) -> int:
    """A lower bound of len(str(value)), walking containers only until it passes `limit`."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if not isinstance(value, list | tuple | set | frozenset):
        return 16  # numbers, None, objects: small, and their repr is not ours to predict
    total = 2
    for item in value:
        _tick()
        total += estimate(item, limit - total) + 2
        if total > limit:
            break
    return total


def _check_stringified(value: Any, what: str) -> None:
    cap = _cap()
    if estimate(value, cap) > cap:
        raise _refuse(f"{what} is over the size limit")


# --- Operators --------------------------------------------------------------------------

_SEQUENCES = (str, bytes, list, tuple)


def _bits(value: int) -> int:
    return abs(value).bit_length()


def _check_binop(operator: str, left: Any, right: Any) -> None:
    cap = _cap()
    both_ints = isinstance(left, int) and isinstance(right, int)
    if operator == "**":
        # |base| > 1: the result has about (bits of base) * exponent bits.
        if both_ints and right > 0 and abs(left) > 1 and (_bits(left) - 1) * right > MAX_INT_BITS:
            raise TemplateLimitError(f"{left!r} ** {right!r} is too large to compute")
    elif operator == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, _SEQUENCES) and isinstance(times, int) and len(seq) * times > cap:
                raise _refuse(f"repeating a value {times} times would be too long")
        if both_ints and _bits(left) + _bits(right) > MAX_INT_BITS:
            raise TemplateLimitError("the product is too large to compute")
    elif operator == "+":
        sequences = isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES)
        if sequences and len(left) + len(right) > cap:
            raise _refuse("the sum would be too long")
    elif operator == "%" and isinstance(left, str):
        _check_printf(left, right)


def _check_number(text: str, what: str) -> None:
    if text.isdigit() and int(text) > _cap():
        raise _refuse(f"{what} {text} is too wide")


def _printf_specs(fmt: str) -> Iterator[tuple[str, str]]:
    """(width, precision) of each %-conversion."""
    i = 0
    while (i := fmt.find("%", i)) != -1:
        i += 1
        if i < len(fmt) and fmt[i] == "(":
            i = fmt.find(")", i) + 1 or len(fmt)
        while i < len(fmt) and fmt[i] in "#0- +":
            i += 1
        start = i
        while i < len(fmt) and (fmt[i].isdigit() or fmt[i] == "*"):
            i += 1
        width = fmt[start:i]
        precision = ""
        if i < len(fmt) and fmt[i] == ".":
            i += 1
            start = i
            while i < len(fmt) and (fmt[i].isdigit() or fmt[i] == "*"):
                i += 1
            precision = fmt[start:i]
        yield width, precision
        if i < len(fmt) and fmt[i] == "%":
            i += 1


def _int_args(args: Any) -> list[int]:
    values = args.values() if isinstance(args, dict) else args
    values = values if isinstance(values, list | tuple) or hasattr(values, "__iter__") else ()
    if isinstance(args, str | int):
        values = (args,)
    return [v for v in values if isinstance(v, int)]


def _check_printf(fmt: str, args: Any) -> None:
    """`fmt % args` and the `format` filter: widths and precisions within the cap."""
    starred = False
    for width, precision in _printf_specs(fmt):
        for number in (width, precision):
            starred |= number == "*"
            _check_number(number, "a field width")
    if starred and any(v > _cap() for v in _int_args(args)):
        raise _refuse("a field width from the arguments is too wide")
    _check_stringified(args, "the formatted arguments")


def check_str_format(fmt: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """`'{:>10}'.format(...)`: widths within the cap, also when taken from the arguments."""
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # the format call itself raises it
    for _, _, spec, _ in fields:
        if not spec:
            continue
        nested = "{" in spec  # a width from the arguments: {:>{}}
        if nested and any(v > _cap() for v in _int_args([*args, *kwargs.values()])):
            raise _refuse("a field width from the arguments is too wide")
        number = ""
        for ch in spec + " ":
            if ch.isdigit():
                number += ch
                continue
            _check_number(number, "a field width")
            number = ""


# --- Calls: str methods, globals ------------------------------------------------------------

_WIDTH_METHODS = {"ljust", "rjust", "center", "zfill"}


def _check_method(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if not isinstance(owner, str | bytes | int | float | list | tuple | dict):
        return
    cap = _cap()
    if any(isinstance(v, int) and v > cap for v in (*args, *kwargs.values())):
        raise _refuse(f"{type(owner).__name__}.{name} with an argument over the limit")
    if not isinstance(owner, str | bytes):
        return
    if name == "translate":
        raise TemplateLimitError("str.translate is not available in templates")
    if name in _WIDTH_METHODS:
        return  # the width is an int argument, checked above
    if name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int) and len(owner) + owner.count("\t") * size > cap:  # type: ignore[arg-type]
            raise _refuse("expanding the tabs would be too long")
    elif name == "replace":
        _check_replace(owner, *args[:3])
    elif name == "join" and args:
        _check_join(owner, args[0])


def _check_replace(text: Any, old: Any = None, new: Any = None, count: Any = -1) -> None:
    if not isinstance(text, str | bytes) or not isinstance(old, str | bytes):
        return
    if not isinstance(new, str | bytes):
        new = str(new)
    found = text.count(old) if old else len(text) + 1  # type: ignore[arg-type]
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    if len(text) + found * len(new) > _cap():
        raise _refuse("the replacement would be too long")


def _check_join(separator: Any, items: Any) -> list[Any]:
    """The items, listed (join iterates them once), when the joined text fits."""
    listed = list(items) if not isinstance(items, list | tuple) else items
    cap = _cap()
    total = len(separator) * max(len(listed) - 1, 0)
    for item in listed:
        total += estimate(item, cap - total)
        if total > cap:
            raise _refuse("the joined text would be too long")
    return list(listed)


def _lipsum(real: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(real)
    def lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> Any:
        if not all(isinstance(v, int) for v in (n, min, max)) or n * max * 12 > _cap():
            raise _refuse(f"lipsum({n}, max={max}) would be too long")
        return real(n, html, min, max)

    return lipsum


def _counted_range(*args: int) -> Iterable[int]:
    values = range(*args)
    if len(values) > MAX_RANGE:
        raise TemplateLimitError(f"range of {len(values)} items (limit {MAX_RANGE})")
    return values


# --- Filters ------------------------------------------------------------------------------

# Filters that turn their whole value into text.
_STRINGIFYING = {
    "string", "tojson", "pprint", "e", "escape", "forceescape", "safe", "urlencode",
    "xmlattr", "upper", "lower", "title", "capitalize", "trim", "striptags", "urlize",
    "truncate", "wordcount", "reverse", "indent", "center", "wordwrap", "replace", "format",
}  # fmt: skip


def _check_filter(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    cap = _cap()
    if name in _STRINGIFYING:
        _check_stringified(value, f"the value of |{name}")
    text = value if isinstance(value, str) else ""
    if name == "center":
        width = args[0] if args else kwargs.get("width", 80)
        if isinstance(width, int) and width > cap:
            raise _refuse(f"|center({width})")
    elif name == "indent":
        width = args[0] if args else kwargs.get("width", 4)
        size = width if isinstance(width, int) else len(str(width))
        if len(text) + (text.count("\n") + 1) * size > cap:
            raise _refuse("|indent would be too long")
    elif name == "wordwrap":
        width = args[0] if args else kwargs.get("width", 79)
        wrap = args[2] if len(args) > 2 else kwargs.get("wrapstring") or "\n"
        width = width if isinstance(width, int) and width > 0 else 1
        breaks = len(text) // width + text.count(" ") + text.count("\n") + 1
        if len(text) + breaks * len(str(wrap)) > cap:
            raise _refuse("|wordwrap would be too long")
    elif name == "replace":
        _check_replace(str(value), *args[:3])
    elif name == "format" and isinstance(value, str):
        _check_printf(value, kwargs or args)
    elif name in ("batch", "slice"):
        count = args[0] if args else kwargs.get("linecount", kwargs.get("slices", 1))
        if isinstance(count, int) and count > MAX_RANGE:
            raise TemplateLimitError(f"|{name}({count}) (limit {MAX_RANGE})")
    elif name == "join":
        separator = args[0] if args else kwargs.get("d", "")
        if "attribute" not in kwargs and len(args) < 2:
            _check_join(str(separator), value if isinstance(value, list | tuple) else [value])
    elif name in ("sum", "list"):
        pass  # bounded by their (bounded) input; the result is checked below


def _limited_filter(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
    passes = _PassArg.from_obj(real) is not None

    @wraps(real)
    def limited(*args: Any, **kwargs: Any) -> Any:
        _tick()
        head, rest = (args[:2], args[2:]) if passes else (args[:1], args[1:])
        if head:
            _check_filter(name, head[-1], rest, kwargs)
        return _check_size(real(*args, **kwargs), f"the result of |{name}")

    return limited


# --- The environment ----------------------------------------------------------------------


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment whose templates are bounded in size, count and time."""

    # Intercepted: evaluated by call_binop at render time, never constant-folded.
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=self._finalize, **options)
        self.globals["range"] = _counted_range
        self.globals["lipsum"] = _lipsum(cast(Callable[..., Any], self.globals["lipsum"]))
        self.filters = {name: _limited_filter(name, f) for name, f in self.filters.items()}

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        _tick()
        _check_binop(operator, left, right)
        return _check_size(super().call_binop(context, operator, left, right), "the result")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        _check_method(__obj, args, kwargs)
        return _check_size(super().call(__context, __obj, *args, **kwargs), "the result of a call")

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__

        @wraps(wrapped)
        def checked(*args: Any, **kwargs: Any) -> str:
            if value.__name__ == "format_map" and args and isinstance(args[0], dict):
                check_str_format(fmt, (), args[0])
            else:
                check_str_format(fmt, args, kwargs)
            return str(_check_size(wrapped(*args, **kwargs), "the formatted text"))

        return checked

    # Hooks the generated code calls (see _generate).
    def limit_concat(self, value: Any) -> Any:
        return _check_size(value, "the concatenation")

    def limit_loop(self, iterable: Any, body_chars: int) -> Iterator[Any]:
        budget = _budget()
        for item in iterable:
            if budget is not None:
                budget.charge(body_chars)
            yield item

    def _finalize(self, value: Any) -> Any:
        budget = _budget()
        size = estimate(value, _cap())
        if size > _cap():
            raise _refuse("an output value is over the size limit")
        if budget is not None:
            budget.charge(size)
        return value

    def _generate(
        self,
        source: nodes.Template,
        name: str | None,
        filename: str | None,
        defer_init: bool = False,
    ) -> str:
        _bound_loops_and_concats(source)
        return super()._generate(source, name, filename, defer_init)


def _hook(name: str, *args: nodes.Node) -> nodes.Call:
    return nodes.Call(nodes.EnvironmentAttribute(name), list(args), [], None, None)


def _literal_chars(body: list[nodes.Node]) -> int:
    total = 0
    for node in body:
        for found in node.find_all((nodes.TemplateData, nodes.Const)):
            value = getattr(found, "data" if isinstance(found, nodes.TemplateData) else "value")
            total += len(value) if isinstance(value, str) else 0
    return total


def _bound_loops_and_concats(template: nodes.Template) -> None:
    """Every `for` iterates through limit_loop, every `~` result goes through limit_concat."""
    for loop in list(template.find_all(nodes.For)):
        cost = _literal_chars(loop.body) + 1  # at least one character: every iteration counts
        loop.iter = _hook("limit_loop", loop.iter, nodes.Const(cost))
    for parent in list(template.find_all(nodes.Node)):
        for field, child in parent.iter_fields():
            if isinstance(child, nodes.Concat):
                setattr(parent, field, _hook("limit_concat", child))
            elif isinstance(child, list):
                for i, item in enumerate(child):
                    if isinstance(item, nodes.Concat):
                        child[i] = _hook("limit_concat", item)
