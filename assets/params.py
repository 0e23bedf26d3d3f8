"""Asset configs inherit the engine's params (their fields and tuned defaults); this turns a
config back into those params, so no asset splits one by hand."""

from typing import Any

import dagster as dg
from pydantic import BaseModel


def engine_params(config: dg.Config, *kinds: type[BaseModel]) -> tuple[Any, ...]:
    """One instance of each of `kinds`, from the fields of `config` it declares."""
    values = config.model_dump()
    return tuple(kind.model_validate(values) for kind in kinds)
