"""Pydantic models from YAML files, with errors a person can act on: the file, the line of the
bad key, its dotted path and what was expected (BadInput, so the CLI exits 2).

    cfg = load_yaml_model("recipes/quickstart.yaml", Recipe, what="recipe")
    # recipes/quickstart.yaml:9: teacher.sampling.temperature: Input should be less than or equal to 2

Used by recipes (factory/recipe.py) and the trainer's configs (trainer/config.py). An empty
file is an empty mapping (the model then names its required keys).
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

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


def load_yaml_model(path: str | Path, model: type[M], *, what: str = "config") -> M:
    """Parse and validate a YAML file; every problem is BadInput naming the file, the line, the
    key path and what was expected."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{path}: no such {what} file") from None
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise BadInput(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = []
        for e in exc.errors()[:MAX_ERRORS]:
            line, key = _locate(node, e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{path}{f':{line}' if line else ''}: {key}: {msg}")
        more = f"\n(and {exc.error_count() - MAX_ERRORS} more)" if exc.error_count() > MAX_ERRORS else ""
        raise BadInput("\n".join(lines) + more) from None


