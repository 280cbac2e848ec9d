"""The base of every config model: unknown keys are errors; options added later stay out of cache keys."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_serializer

# Marks an option added after run dirs were made with this schema: while it is at its default it is
# left out of the dumped config, and so of every stage's cache key, so an upgrade reruns nothing.
ADDED_LATER = {"omit_when_default": True}


class Strict(BaseModel):
    """Unknown keys are errors: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @model_serializer(mode="wrap")
    def _leave_out_later_options_at_default(self, handler):
        data = handler(self)
        if isinstance(data, dict):
            for name, field in type(self).model_fields.items():
                extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
                if extra.get("omit_when_default") and name in data \
                        and getattr(self, name) == field.get_default(call_default_factory=True):
                    del data[name]
        return data
