"""The base of every config model: unknown keys are errors; options added later stay out of cache keys."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, SerializationInfo, model_serializer

# Marks an option added after run dirs were made with this schema: while it is at its default it is
# left out of the dumped config, and so of every stage's cache key, so an upgrade reruns nothing.
ADDED_LATER = {"omit_when_default": True}
# Marks an option that changes how fast a stage runs, not what it is asked to compute (threads): added
# later too, and left out of every cache key even when set, so setting it on a finished run reruns nothing.
NOT_IN_KEY = {"omit_when_default": True, "not_in_key": True}
# model_dump's arguments for a config that goes into a cache key.
KEY_DUMP = {"mode": "json", "context": {"cache_key": True}}


class Strict(BaseModel):
    """Unknown keys are errors: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @model_serializer(mode="wrap")
    def _leave_out_later_options_at_default(self, handler, info: SerializationInfo):
        data = handler(self)
        for_key = bool((info.context or {}).get("cache_key"))
        if isinstance(data, dict):
            for name, field in type(self).model_fields.items():
                extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
                if name in data and ((extra.get("not_in_key") and for_key) or (
                        extra.get("omit_when_default")
                        and getattr(self, name) == field.get_default(call_default_factory=True))):
                    del data[name]
        return data
