"""The base every domain model shares."""

from pydantic import BaseModel, ConfigDict


class FrozenModel(BaseModel):
    """Immutable once validated; unknown fields are refused so typos are reported, not ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")
