"""Pydantic models from YAML files, with errors a person can act on: the file, the line of the
bad key, its dotted path and what was expected (BadInput, so the CLI exits 2).

    cfg = load_yaml_model("recipes/quickstart.yaml", Recipe, what="recipe")
    # recipes/quickstart.yaml:9: teacher.sampling.temperature: Input should be less than or equal to 2

Used by recipes (factory/recipe.py) and the trainer's configs (trainer/config.py). An empty
file is an empty mapping (the model then names its required keys).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from storage.errors import BadInput

M = TypeVar("M", bound=BaseModel)

MAX_ERRORS = 8


def _locate(node: yaml.Node | None, loc: tuple) -> tuple[int | None, str]:
    """The 1-based line and the key path of pydantic's error location in the YAML tree. Parts of
    `loc` that are not keys (a discriminated union's tag, a validator's name) are skipped."""
    line = node.start_mark.line + 1 if node is not None else None
    path = ""
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            keys = {getattr(k, "value", None): (k, v) for k, v in node.value}
            tag = keys.get("source", (None, None))[1]
            if isinstance(tag, yaml.ScalarNode) and tag.value == part:
                continue  # pydantic names the union member chosen by `source:` first: not a key
            if part in keys:
                key, node = keys[part]
                line = key.start_mark.line + 1  # the key's line: a block value starts below it
                path += ("." if path else "") + part
                continue
            tags = {v.value for k, v in node.value if isinstance(v, yaml.ScalarNode)}
            if part in tags or part.startswith("function-") or "[" in part:
                continue  # the union member chosen by a tag, or a validator: not a key
            path += ("." if path else "") + part  # a missing (required) key: the mapping's line
            node = None
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
            path += f"[{part}]"
        else:
            path += f"[{part}]" if isinstance(part, int) else ("." if path else "") + str(part)
            node = None
    return line, path or "(top level)"


def read_yaml_text(path: str | Path, *, what: str = "config") -> str:
    """The file's text; BadInput naming the file when it is missing, a folder or not UTF-8."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{path}: is a folder; expected a {what} file (YAML)")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{path}: no such {what} file") from None
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read the {what} file: {exc.strerror}") from None


def load_yaml_model(
    path: str | Path, model: type[M], *, what: str = "config", check: Callable[[M], list[tuple[tuple, str]]] | None = None,
    text: str | None = None,
) -> M:
    """Parse and validate a YAML file; every problem is BadInput naming the file, the line, the
    key path and what was expected. `check` looks at the validated model for what pydantic
    cannot see (files on disk, one field against another) and returns (key path, message)
    pairs, reported the same way. `text`: the file's content, when the caller read it already."""
    path = Path(path)
    if text is None:
        text = read_yaml_text(path, what=what)
    node = None
    try:
        node = yaml.compose(text)
        _no_duplicate_keys(node, path)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise BadInput(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except RecursionError:
        raise BadInput(f"{path}: nested too deeply; expected a {what} of a few levels of keys") from None
    except BadInput:
        raise
    except ValueError:  # an integer of more than 4300 digits: Python's int-str conversion limit
        line = next((n.start_mark.line + 1 for n in _nodes(node) if isinstance(n, yaml.ScalarNode) and len(n.value) > 4000), None)
        raise BadInput(f"{path}{f':{line}' if line else ''}: a number of more than 4300 digits; expected a usable number") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    try:
        result = model.model_validate(data)
    except ValidationError as exc:
        raise BadInput(_describe(path, node, [(e["loc"], e["msg"]) for e in exc.errors()])) from None
    problems = check(result) if check is not None else []
    if problems:
        raise BadInput(_describe(path, node, problems))
    return result


def _describe(path: Path, node: yaml.Node | None, problems: list[tuple[tuple, str]]) -> str:
    """One line per problem: file:line: key.path: what was expected (at most MAX_ERRORS)."""
    lines = []
    for loc, msg in problems[:MAX_ERRORS]:
        line, key = _locate(node, loc)
        lines.append(f"{path}{f':{line}' if line else ''}: {key}: {msg.removeprefix('Value error, ')}")
    more = f"\n(and {len(problems) - MAX_ERRORS} more)" if len(problems) > MAX_ERRORS else ""
    return "\n".join(lines) + more


def _no_duplicate_keys(node: yaml.Node | None, path: Path) -> None:
    """PyYAML keeps the last of two equal keys without a word; a config that says a thing twice
    is refused instead, naming both lines."""
    for n in _nodes(node):
        if isinstance(n, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for k, _ in n.value:
                if isinstance(k, yaml.ScalarNode) and k.value != "<<":  # `<<` merges: not a key
                    line = k.start_mark.line + 1
                    if (k.tag, k.value) in first:
                        raise BadInput(f"{path}:{line}: duplicate key {k.value!r} (first at line {first[k.tag, k.value]}); expected each key once")
                    first[k.tag, k.value] = line


def _nodes(node: yaml.Node | None) -> Iterator[yaml.Node]:
    """Every node of a composed document; iterative, so a deep one cannot exhaust the stack."""
    stack = [node] if node is not None else []
    seen: set[int] = set()  # an alias is the same node object again
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        yield n
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                stack += (k, v)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)


def omit(dump: Any, **unset: bool) -> Any:
    """A model's dump (a wrap serializer's `handler(self)`) without each key whose flag is true.
    A key added to a config later leaves its dump, and so its hash, unchanged when it is unset."""
    if isinstance(dump, dict):
        for key, drop in unset.items():
            if drop:
                dump.pop(key, None)
    return dump
