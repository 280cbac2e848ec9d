"""Changes to a pipeline dict by dotted path, for tests that vary one field of a base config."""

from __future__ import annotations


def changed(config: dict, changes: dict) -> dict:
    """`config` with each dotted key set to its value ({"stages.build.targets": [...]}); None removes the key."""
    for dotted, value in changes.items():
        owner, *path = dotted.split(".")
        target = config[owner] if path else config
        for key in path[:-1]:
            target = target.setdefault(key, {})
        if value is None:
            target.pop(path[-1] if path else owner, None)
        else:
            target[path[-1] if path else owner] = value
    return config
