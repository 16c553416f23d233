"""The base of the management API's response models (frostpoint/schemas.py and
frostpoint/schemas_ops.py): extra fields allowed, built on first use, and the error
shape every failure answers with. Depends on pydantic only (the CLI imports it)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter

T = TypeVar("T")


class ApiModel(BaseModel):
    # defer_build: a model builds its validator when first used, not at import (the CLI
    # imports this module on every start and uses one or two models).
    model_config = ConfigDict(extra="allow", defer_build=True)


def parse(model: type[T], data: Any) -> T:
    """`data` (a decoded JSON body) as `model`: a model class or a type such as
    list[Job]. Raises pydantic.ValidationError when the body does not fit."""
    return TypeAdapter(model).validate_python(data)


# -- errors (errors/catalog.py error_dict) -------------------------------------------
class ApiError(ApiModel):
    code: str
    kind: str  # user | platform | transient ...: the catalog's kinds
    retryable: bool
    message: str
    causes: list[str]
    actions: list[str]
    details: dict[str, Any]
    doc: str
