"""Read the YAML configuration file into a validated :class:`Config`, with precise errors.

Three steps, each reporting :class:`Problem` values that name the key path and the line: YAML is
composed into nodes (which keep their line), the nodes become plain data with ``${VAR}``
substituted, and the data is validated by the schema's models. Pydantic's errors are translated
into the user's terms: union-branch tags are dropped from the key path, only the union branch that
fits the input is reported, and a value is never echoed unless it was written in the file itself.
The request path never imports this module: it runs at start, ``gateway check`` and reload.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from gateway.config.problems import ConfigError, KeyPath, Problem
from gateway.config.schema import Config

__all__ = [
    "Expansion",
    "LoadedConfig",
    "SourceMap",
    "SubstitutionError",
    "expand",
    "load_config",
    "load_config_text",
    "substitute",
]


@dataclass(frozen=True, slots=True)
class SourceMap:
    """Where each key of the file is: key path -> 1-based line of the key (of the item in lists)."""

    lines: Mapping[KeyPath, int] = field(default_factory=dict)

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """The line of ``path``, or of its deepest known prefix (a missing key -> its parent)."""
        key = tuple(path)
        while key not in self.lines:
            if not key:
                return None
            key = key[:-1]
        return self.lines[key]


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A valid configuration, and where it came from (for error lines and relative paths)."""

    config: Config
    source_map: SourceMap
    path: Path
    base_dir: Path


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Read, substitute and validate the file at ``path``; :class:`ConfigError` if unusable."""
    file = Path(path).absolute()
    try:
        text = file.read_bytes().decode("utf-8-sig")
    except OSError as error:
        problem = Problem((), f"cannot read the file: {error.strerror or error}")
        raise ConfigError([problem], source=str(path)) from None
    except UnicodeDecodeError as error:
        problem = Problem((), f"the file is not UTF-8 text (bad byte at offset {error.start})")
        raise ConfigError([problem], source=str(path)) from None
    loaded = load_config_text(text, source=str(path), base_dir=file.parent, environ=environ)
    return replace(loaded, path=file)


def load_config_text(
    text: str,
    *,
    source: str = "<config>",
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """Like :func:`load_config` for text already read; ``base_dir`` defaults to the current one.

    ``path`` of the result is ``base_dir`` joined with the name in ``source``.
    """
    directory = (base_dir or Path.cwd()).absolute()
    reader = _DocumentReader(os.environ if environ is None else environ)
    data = reader.read_document(text)
    source_map = SourceMap(MappingProxyType(dict(reader.lines)))
    problems = list(reader.problems)
    config: Config | None = None
    if data is not None:
        try:
            config = Config.model_validate(data)
        except ValidationError as error:
            problems += _validation_problems(error.errors(include_url=False), data, reader)
    if problems or config is None:
        lined = [p.at_line(p.line or source_map.line_of(p.path)) for p in problems]
        raise ConfigError(_unique(lined), source=source)
    return LoadedConfig(config, source_map, directory / Path(source).name, directory)


# --- ${VAR} substitution --------------------------------------------------------------------------

# A default runs to the first "}" and may not contain "${": nested references are not supported.
_REFERENCE = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>(?:(?!\$\{)[^}])*))?\}"
)


class SubstitutionError(ValueError):
    """A string refers to an unset variable, or holds a ``${`` that is not a reference."""


@dataclass(frozen=True, slots=True)
class Expansion:
    """The result of substituting one string, and what went wrong."""

    text: str
    used: tuple[str, ...] = ()  # variables whose values are now part of `text`
    unset: tuple[str, ...] = ()  # unset, without a default
    malformed: tuple[str, ...] = ()  # "${..." fragments that are not a reference


def expand(text: str, environ: Mapping[str, str]) -> Expansion:
    """Replace ``${NAME}`` and ``${NAME:-default}``; ``$${`` is a literal ``${``.

    As in the shell, the default also replaces a variable that is set but empty. A substituted
    value is never scanned again, so a secret containing ``${`` stays as it is.
    """
    parts: list[str] = []
    used: list[str] = []
    unset: list[str] = []
    malformed: list[str] = []
    position = 0
    while (dollar := text.find("$", position)) >= 0:
        parts.append(text[position:dollar])
        if text.startswith("$${", dollar):
            parts.append("${")
            position = dollar + 3
        elif not text.startswith("${", dollar):
            parts.append("$")
            position = dollar + 1
        elif reference := _REFERENCE.match(text, dollar):
            name, default = reference["name"], reference["default"]
            value = environ.get(name)
            if value is not None and (value or default is None):
                parts.append(value)
                used.append(name)
            elif default is not None:
                parts.append(default)
            else:
                parts.append(reference.group())
                unset.append(name)
            position = reference.end()
        else:
            end = text.find("}", dollar)
            fragment = text[dollar : end + 1 if end >= 0 else len(text)]
            parts.append(fragment)
            malformed.append(fragment)
            position = dollar + len(fragment)
    parts.append(text[position:])
    return Expansion("".join(parts), tuple(used), tuple(unset), tuple(malformed))


def substitute(text: str, environ: Mapping[str, str]) -> str:
    """:func:`expand`, raising :class:`SubstitutionError` for the first thing wrong."""
    expansion = expand(text, environ)
    messages = _expansion_messages(expansion)
    if messages:
        raise SubstitutionError(messages[0])
    return expansion.text


def _expansion_messages(expansion: Expansion) -> list[str]:
    unset = [
        f"environment variable {name} is not set (and has no default)" for name in expansion.unset
    ]
    malformed = [
        f'"{_shorten(fragment)}" is not a variable reference: write ${{NAME}} or'
        f' ${{NAME:-default}}, or $${{ for a literal "${{"'
        for fragment in expansion.malformed
    ]
    return unset + malformed


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- YAML -> plain data, with lines -------------------------------------------------------------

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, slots=True)
class _Substituted:
    original: str  # the text in the file, safe to show
    expanded: str  # the text after substitution, never to be shown
    secrets: tuple[str, ...]  # the values of the variables used, never to be shown


# libyaml's parser when PyYAML was built with it: the same nodes and marks, three times faster
# on a file of 10,000 routes (bench/scaling.py). A file it refuses is parsed again by the pure
# Python one, for the error message.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _DocumentReader:
    """Builds plain data from YAML nodes, recording each key path's line and every problem."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._loader: Any = None
        self._reading: set[int] = set()  # ids of the nodes being read, to catch recursive aliases
        self.lines: dict[KeyPath, int] = {}
        self.problems: list[Problem] = []
        self.unusable: list[KeyPath] = []  # values already reported, not to be validated again
        self.substituted: dict[KeyPath, _Substituted] = {}

    def read_document(self, text: str) -> Any:
        """The document's data, or None when there is nothing to validate."""
        try:
            root = self._compose(text, _Loader)
        except yaml.YAMLError:
            try:
                # libyaml words its syntax errors differently: the pure-Python parser's
                # messages are the ones the documentation and tests show.
                root = self._compose(text, yaml.SafeLoader)
            except yaml.YAMLError as error:
                self.problems.append(_yaml_problem(error, text))
                return None
        if root is None:
            self._report((), "the file is empty: a configuration needs at least `routes:`", 1)
            return None
        self.lines[()] = _line(root)
        if not isinstance(root, yaml.MappingNode):
            kind = "a list" if isinstance(root, yaml.SequenceNode) else "a single value"
            message = f"the top level must be a mapping (listen:, routes:, ...), not {kind}"
            self._report((), message, _line(root))
            return None
        return self._read(root, ())

    def _compose(self, text: str, loader: Any) -> yaml.Node | None:
        self._loader = loader(text)
        try:
            node: yaml.Node | None = self._loader.get_single_node()
            return node
        finally:
            self._loader.dispose()

    def _report(self, path: KeyPath, message: str, line: int) -> None:
        self.problems.append(Problem(path, message, line=line))

    def _read(self, node: yaml.Node, path: KeyPath) -> Any:
        if id(node) in self._reading:
            self._report(path, "an alias refers to a node that contains it", _line(node))
            self.unusable.append(path)
            return None
        self._reading.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                return self._sequence(node, path)
            return self._scalar(node, path)
        finally:
            self._reading.discard(id(node))

    def _sequence(self, node: yaml.SequenceNode, path: KeyPath) -> Any:
        if node.tag != _SEQ_TAG:
            return self._unsupported_tag(node, path)
        items = []
        for index, item in enumerate(node.value):
            self.lines[(*path, index)] = _line(item)
            items.append(self._read(item, (*path, index)))
        return items

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> Any:
        if node.tag != _MAP_TAG:
            return self._unsupported_tag(node, path)
        self._check_keys(node, path)
        assert self._loader is not None
        try:
            self._loader.flatten_mapping(node)  # `<<: *anchor` merge keys, explicit keys win
        except yaml.MarkedYAMLError as error:
            self._report(path, f"invalid merge (<<): {error.problem}", _line(node))
            self.unusable.append(path)
            return None
        data: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self._string_key(key_node)
            if key is not None:
                self.lines[(*path, key)] = _line(key_node)
                data[key] = self._read(value_node, (*path, key))
        return data

    def _check_keys(self, node: yaml.MappingNode, path: KeyPath) -> None:
        """Report non-string and duplicate keys (YAML would silently keep the last one)."""
        first_seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self._string_key(key_node)
            if key is None:
                self._report_key(key_node, path)
            elif key in first_seen:
                message = f'duplicate key "{key}" (first given at line {first_seen[key]})'
                self._report((*path, key), message, _line(key_node))
            else:
                first_seen[key] = _line(key_node)

    def _string_key(self, node: yaml.Node) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            return None
        try:
            key = self._construct(node)
        except yaml.YAMLError:
            return None
        return key if isinstance(key, str) else None

    def _report_key(self, node: yaml.Node, path: KeyPath) -> None:
        if not isinstance(node, yaml.ScalarNode):
            self._report(path, "a key must be a string, not a list or a mapping", _line(node))
            return
        try:
            kind = _kind(self._construct(node))
        except yaml.YAMLError:
            kind = f"a value tagged {_short_tag(node.tag)}"
        message = f'YAML reads this key as {kind}, not a string; quote it: "{node.value}"'
        self._report((*path, node.value), message, _line(node))

    def _scalar(self, node: yaml.Node, path: KeyPath) -> Any:
        try:
            value = self._construct(node)
        except yaml.YAMLError:
            return self._unsupported_tag(node, path)
        if not isinstance(value, str):
            return value
        expansion = expand(value, self._environ)
        for message in _expansion_messages(expansion):
            self._report(path, message, _line(node))
        if expansion.unset or expansion.malformed:
            self.unusable.append(path)
            return value
        if expansion.used:
            secrets = tuple(self._environ[name] for name in expansion.used)
            self.substituted[path] = _Substituted(value, expansion.text, secrets)
        return expansion.text

    def _construct(self, node: yaml.Node) -> Any:
        assert self._loader is not None
        return self._loader.construct_object(node, deep=True)

    def _unsupported_tag(self, node: yaml.Node, path: KeyPath) -> None:
        self._report(path, f"unsupported YAML tag {_short_tag(node.tag)}", _line(node))
        self.unusable.append(path)


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _short_tag(tag: str) -> str:
    return tag.replace("tag:yaml.org,2002:", "!!")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else f"a {type(value).__name__}"


def _yaml_problem(error: yaml.YAMLError, text: str) -> Problem:
    if isinstance(error, yaml.reader.ReaderError):
        message = f"invalid YAML: character #x{error.character:04x} is not allowed ({error.reason})"
        return Problem((), message, line=text.count("\n", 0, error.position) + 1)
    if not isinstance(error, yaml.MarkedYAMLError):
        return Problem((), f"invalid YAML: {error}")
    problem, context = error.problem, error.context
    message = f"invalid YAML: {problem or context}"
    if "'\\t'" in message:
        message += " (indent with spaces: YAML does not allow tabs)"
    elif problem and context and context.startswith("while "):
        where = f" started at line {error.context_mark.line + 1}" if error.context_mark else ""
        message += f" ({context}{where})"
    elif problem and context:
        message = f"invalid YAML: {context}, {problem}"
    mark = error.problem_mark or error.context_mark
    return Problem((), message, line=mark.line + 1 if mark else None)


# --- schema errors -> problems ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Failure:
    """One pydantic error; `is_data[i]` tells whether `loc[i]` is a key/index in the data."""

    loc: tuple[str | int, ...]
    is_data: tuple[bool, ...]
    detail: ErrorDetails | None
    message: str | None = None  # set for a union's combined message

    @property
    def path(self) -> KeyPath:
        return tuple(part for part, is_data in zip(self.loc, self.is_data, strict=True) if is_data)

    def depth_after(self, position: int) -> int:
        return sum(self.is_data[position:])


def _validation_problems(
    errors: list[ErrorDetails], data: Any, reader: _DocumentReader
) -> list[Problem]:
    failures = _choose_union_branches([_locate(error, data) for error in errors])
    failures = _without_consequences(failures)
    problems = []
    for failure in failures:
        path = failure.path
        if any(path[: len(bad)] == bad for bad in reader.unusable):
            continue
        message = failure.message or _message(failure)
        if failure.loc[-1:] == ("[key]",) and message.startswith("must "):
            message = f"the key {message}"
        problems.append(Problem(path, _redact(message, path, reader)))
    return problems


def _without_consequences(failures: list[_Failure]) -> list[_Failure]:
    """Drop errors that only follow from another one, so that each mistake is told once.

    "Too short after validation" follows from its items' own errors; a required key is "missing"
    when it was misspelt, and the unknown key's "did you mean" already says so.
    """
    paths = [f.path for f in failures]
    misspelt = {
        (*f.path[:-1], suggestion)
        for f in failures
        if _kind_of(f) == "extra_forbidden" and (suggestion := _suggestion(f.path))
    }

    def is_consequence(failure: _Failure) -> bool:
        path, kind = failure.path, _kind_of(failure)
        if kind == "too_short":
            return any(len(other) > len(path) and other[: len(path)] == path for other in paths)
        return kind == "missing" and path in misspelt

    return [f for f in failures if not is_consequence(f)]


def _kind_of(failure: _Failure) -> str | None:
    return failure.detail["type"] if failure.detail is not None else None


def _locate(error: ErrorDetails, data: Any) -> _Failure:
    """Mark the elements of `loc` that are union tags (or `[key]`): those not found in the data."""
    loc = tuple(error["loc"])
    node, flags = data, []
    for part in loc:
        found = (isinstance(node, dict) and isinstance(part, str) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        )
        if found:
            node = node[part]
        flags.append(found)
    if error["type"] == "missing" and flags:
        flags[-1] = True  # the key that is missing is part of the path
    return _Failure(loc, tuple(flags), error)


def _choose_union_branches(failures: list[_Failure]) -> list[_Failure]:
    """Keep, at each union, only what the user can act on (outermost unions first).

    Branches whose only error is that the input has the wrong type for them (a mapping given to
    `Literal["public"]`) are dropped. When every branch fails on the value itself, one combined
    message says what the value may be: `must be "public" or a mapping`.
    """
    done: set[tuple[str | int, ...]] = set()
    while groups := _union_groups(failures, done):
        prefix = min(groups, key=len)
        done.add(prefix)
        branches = groups[prefix]
        if len(branches) < 2:
            continue
        members = {id(f) for fs in branches.values() for f in fs}
        kept = [f for f in failures if id(f) not in members]
        failures = kept + _resolve_union(prefix, list(branches.values()))
    return failures


def _union_groups(
    failures: list[_Failure], done: set[tuple[str | int, ...]]
) -> dict[tuple[str | int, ...], dict[str | int, list[_Failure]]]:
    """Failures by the first unresolved tag in their `loc`: prefix -> tag -> failures."""
    groups: dict[tuple[str | int, ...], dict[str | int, list[_Failure]]] = {}
    for failure in failures:
        for position, is_data in enumerate(failure.is_data):
            prefix = failure.loc[:position]
            if not is_data and prefix not in done:
                branch = failure.loc[position]
                groups.setdefault(prefix, {}).setdefault(branch, []).append(failure)
                break
    return groups


def _resolve_union(prefix: tuple[str | int, ...], branches: list[list[_Failure]]) -> list[_Failure]:
    position = len(prefix)
    wrong_type = [_is_wrong_type(branch, position) for branch in branches]
    if all(f.depth_after(position) == 0 for branch in branches for f in branch):
        ordered = [b for b, wrong in zip(branches, wrong_type, strict=True) if not wrong]
        ordered += [b for b, wrong in zip(branches, wrong_type, strict=True) if wrong]
        message = _either([_message(f) for branch in ordered for f in branch])
        return [_Failure(prefix, branches[0][0].is_data[:position], None, message)]
    fitting = [b for b, wrong in zip(branches, wrong_type, strict=True) if not wrong]
    return [f for branch in fitting for f in branch]


def _is_wrong_type(branch: list[_Failure], position: int) -> bool:
    """The branch failed only because the value is not of its type (a list for a string...)."""
    return all(
        f.depth_after(position) == 0 and f.detail is not None and _is_type_mismatch(f.detail)
        for f in branch
    )


def _is_type_mismatch(detail: ErrorDetails) -> bool:
    kind = detail["type"]
    if kind == "literal_error":
        return not isinstance(detail["input"], str)  # every Literal of the schema is a string
    return kind.endswith("_type") or kind == "is_instance_of"


def _either(messages: list[str]) -> str:
    """`must be A`, `must be B` -> `must be A or B`."""
    phrases = list(dict.fromkeys(m.removeprefix("must be ") for m in messages))
    if not all(m.startswith("must be ") for m in messages):
        return "; or ".join(phrases)
    if len(phrases) == 1:
        return f"must be {phrases[0]}"
    return f"must be {', '.join(phrases[:-1])} or {phrases[-1]}"


_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "a boolean (true or false)",
    "bool_parsing": "a boolean (true or false)",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
}

_BOUNDS = {
    "greater_than": ("gt", "greater than"),
    "greater_than_equal": ("ge", "at least"),
    "less_than": ("lt", "less than"),
    "less_than_equal": ("le", "at most"),
}


def _message(failure: _Failure) -> str:
    """The error in the user's terms. Never built from pydantic's `input`: it may be a secret."""
    detail = failure.detail
    if detail is None:
        return failure.message or "is invalid"
    kind, ctx = detail["type"], detail.get("ctx", {})
    if kind in _TYPE_NAMES:
        return f"must be {_TYPE_NAMES[kind]}"
    if kind in _BOUNDS:
        name, words = _BOUNDS[kind]
        return f"must be {words} {ctx[name]}"
    if kind == "missing":
        return f'required key "{failure.loc[-1]}" is missing'
    if kind == "extra_forbidden":
        return _unknown_key(failure.path)
    if kind == "literal_error":
        return _one_of(str(ctx.get("expected", "")))
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind in ("too_short", "string_too_short", "too_long", "string_too_long"):
        return _length_message(kind, ctx)
    if kind == "string_pattern_mismatch":
        return f"must match the pattern {ctx['pattern']}"
    return detail["msg"].replace("Input should be ", "must be ")


def _one_of(expected: str) -> str:
    values = re.findall(r"'([^']*)'", expected)
    if not values:
        return f"must be {expected}"
    quoted = ", ".join(f'"{value}"' for value in values)
    return f'must be "{values[0]}"' if len(values) == 1 else f"must be one of: {quoted}"


def _length_message(kind: str, ctx: dict[str, Any]) -> str:
    unit = "characters" if kind.startswith("string") else "items"
    if kind.endswith("too_short"):
        least = ctx.get("min_length", 1)
        return "must not be empty" if least == 1 else f"must have at least {least} {unit}"
    return f"must have at most {ctx.get('max_length')} {unit}"


def _unknown_key(path: KeyPath) -> str:
    message = f'unknown key "{path[-1]}"' if path else "unknown key"
    suggestion = _suggestion(path)
    return f'{message} (did you mean "{suggestion}"?)' if suggestion else message


def _suggestion(path: KeyPath) -> str | None:
    """The allowed key that the unknown key at `path` was probably meant to be."""
    if not path:
        return None
    key, names = str(path[-1]), _field_names_at(path[:-1])
    same_but_spelling = {name.lower().replace("-", "_"): name for name in names}
    if found := same_but_spelling.get(key.lower().replace("-", "_")):
        return found
    return next(iter(difflib.get_close_matches(key, names, n=1, cutoff=0.6)), None)


def _field_names_at(path: KeyPath) -> list[str]:
    """The keys the schema allows at `path` (a mapping's position in the file)."""
    annotations: list[Any] = [Config]
    for part in path:
        annotations = [child for ann in annotations for child in _children(ann, part)]
    return [name for ann in annotations for model in _models(ann) for name in model.model_fields]


def _children(annotation: Any, part: str | int) -> Iterator[Any]:
    for kind in _unwrapped(annotation):
        origin = typing.get_origin(kind)
        if origin is None and isinstance(kind, type) and issubclass(kind, BaseModel):
            if isinstance(part, str) and part in kind.model_fields:
                yield kind.model_fields[part].annotation
        elif origin is dict and isinstance(part, str):
            yield typing.get_args(kind)[1]
        elif origin in (list, tuple) and isinstance(part, int):
            yield typing.get_args(kind)[0]


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    for kind in _unwrapped(annotation):
        if (
            typing.get_origin(kind) is None
            and isinstance(kind, type)
            and issubclass(kind, BaseModel)
        ):
            yield kind


def _unwrapped(annotation: Any) -> Iterator[Any]:
    """The types inside ``Annotated[...]``, ``X | Y`` and ``Optional[X]``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _unwrapped(typing.get_args(annotation)[0])
    elif origin in (typing.Union, types.UnionType):
        for member in typing.get_args(annotation):
            yield from _unwrapped(member)
    else:
        yield annotation


def _redact(message: str, path: KeyPath, reader: _DocumentReader) -> str:
    """Show ``${VAR}`` as written in the file instead of its value, which may be a secret.

    The schema's validators quote the bad value (`'x' is not HOST:PORT`); for a substituted value
    the quote is replaced by the text in the file. As a second guard, any longer value of a
    variable used anywhere is masked wherever it would appear.
    """
    record = reader.substituted.get(path)
    if record is not None:
        message = message.replace(
            repr(record.expanded), f"{record.original!r} (after substitution)"
        )
    for substituted in reader.substituted.values():
        for secret in substituted.secrets:
            if len(secret) >= _MASK_FROM_LENGTH:
                message = message.replace(secret, "***")
    return message


_MASK_FROM_LENGTH = 6


def _unique(problems: list[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))
