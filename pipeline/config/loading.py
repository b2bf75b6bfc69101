"""Reading a config: the JSON file, `--set key=value` overrides, error messages that name the key
path, and the JSON Schema for editors."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional, get_args

from pydantic import ValidationError

from pipeline.config.base import ConfigError
from pipeline.config.sections import PipelineConfig
from pipeline.config.sources import Source


# --------------------------------------------------------------------------------------------
# loading, overriding, errors
# --------------------------------------------------------------------------------------------
_SOURCE_TAGS = {model.model_fields["name"].default for model in get_args(get_args(Source)[0])}


def _describe_error(err: dict) -> str:
    loc = [p for i, p in enumerate(err["loc"])  # drop the union tag pydantic puts after `source`
           if p not in ("function-after",) and not (i and err["loc"][i - 1] == "source" and p in _SOURCE_TAGS)]
    path = ".".join(str(p) for p in loc) or "<root>"
    path = path.replace("validate_", "validate")
    received = err.get("input")
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"{path}: unknown key (not part of the configuration schema)"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        expected = f"a number {op} {bound}"
    elif kind.startswith("int"):
        expected = "an integer" + (_field_lower_bound(err["loc"]) or "")
    elif kind.startswith("float"):
        expected = "a number"
    elif kind.startswith("bool"):
        expected = "true or false"
    elif kind == "union_tag_not_found":
        expected = f"an object with a {ctx.get('discriminator', 'name')} key choosing its kind"
    elif kind in ("literal_error", "union_tag_invalid"):
        expected = err["msg"].replace("Input should be ", "one of ").replace("Input tag", "tag")
    elif kind == "value_error":
        expected = err["msg"].removeprefix("Value error, ")
    elif kind == "missing":
        return f"{path}: required key is missing"
    else:
        expected = err["msg"][0].lower() + err["msg"][1:]
    return f"{path}: expected {expected}, got {json.dumps(received, default=str)}"


def _field_lower_bound(loc: tuple) -> Optional[str]:
    """The `ge`/`gt` bound declared on the field at `loc`, so a type error can state it too."""
    model: Any = PipelineConfig
    field = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields and part in _SOURCE_TAGS:   # the union tag: continue in that source's model
            model = next(m for m in get_args(get_args(Source)[0]) if m.model_fields["name"].default == part)
            continue
        if not fields:
            return None
        field = fields.get(part) or next((f for f in fields.values() if f.alias == part), None)
        if field is None:
            return None
        model = field.annotation
    for meta in getattr(field, "metadata", []):
        if getattr(meta, "ge", None) is not None:
            return f" >= {meta.ge}"
        if getattr(meta, "gt", None) is not None:
            return f" > {meta.gt}"
    return None


def format_validation_error(exc: ValidationError, source: str = "config") -> str:
    lines = [f"{source}: {len(exc.errors())} problem(s)"]
    for err in exc.errors():
        lines.append("  " + _describe_error(err))
    return "\n".join(lines)


def parse_config(data: dict, source: str = "config") -> PipelineConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object at the top level, got {type(data).__name__}")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config_dict(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None


def apply_override(data: dict, assignment: str) -> dict:
    """Apply one `key.path=value` override; the value is parsed as JSON, else taken as a string."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment}: expected key.path=value")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    data = copy.deepcopy(data)
    node = data
    parts = key.split(".")
    defaults = PipelineConfig().to_dict()
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        defaults = defaults.get(part) if isinstance(defaults, dict) else None
        if child is None:
            # Keep the default's `name` (the discriminator of sources), so `--set ingest.source.seed=1`
            # still means the default synthetic source.
            child = node[part] = {"name": defaults["name"]} if isinstance(defaults, dict) and "name" in defaults else {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[:i + 1])} is not a section (it holds {json.dumps(child)})")
        node = child
    node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> PipelineConfig:
    """Load a config file (or the defaults when `path` is None), apply `--set` overrides, validate."""
    data = load_config_dict(path) if path is not None else {}
    for assignment in overrides:
        data = apply_override(data, assignment)
    return parse_config(data, str(path) if path is not None else "config")


def json_schema() -> dict:
    schema = PipelineConfig.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "convpipe pipeline_config.json"
    return schema
