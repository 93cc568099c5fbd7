"""Validating frames and broker bodies against gateway/asyncapi.yaml (the schemas clients read)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

DOCUMENT = Path(__file__).resolve().parents[1] / "gateway" / "asyncapi.yaml"


@cache
def document() -> dict[str, Any]:
    return yaml.safe_load(DOCUMENT.read_text())


@cache
def validator(schema: str) -> jsonschema.Draft7Validator:
    """A validator for ``#/components/schemas/<schema>``, resolving refs inside the document."""
    root = {"$ref": f"#/components/schemas/{schema}", "components": document()["components"]}
    return jsonschema.Draft7Validator(root)


def problems(schema: str, value: Any) -> list[str]:
    if isinstance(value, (bytes, str)):
        value = json.loads(value)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(schema).iter_errors(value)]
