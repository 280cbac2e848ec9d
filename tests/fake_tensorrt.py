"""A recording stand-in for the `tensorrt` module, for machines where TensorRT cannot be installed.

It has the TensorRT 10/11 Python API surface the builder uses, and no precision builder flags
at all (TensorRT 11 removed them), so code that reached for BuilderFlag.FP16 would fail here.
`calls` lists what the builder did, in order.
"""

from __future__ import annotations

import types
from pathlib import Path


def make_fake_tensorrt(version: str = "10.3.0", strongly_typed_flag: bool = True, parse_errors: tuple = (),
                       build_ok: bool = True) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = calls = []

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity):
            calls.append(("Logger", severity))

    class NetworkDefinitionCreationFlag:
        pass

    if strongly_typed_flag:
        NetworkDefinitionCreationFlag.STRONGLY_TYPED = 0

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class TimingCache:
        def __init__(self, data: bytes):
            self.data = bytes(data)

        def serialize(self) -> bytes:
            return self.data + b"+tactics"  # a build adds its tactic timings

    class OptimizationProfile:
        def set_shape(self, name, min_shape, opt_shape, max_shape):
            calls.append(("set_shape", name, list(min_shape), list(opt_shape), list(max_shape)))

    class BuilderConfig:
        cache = None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile",))
            return 0

        def create_timing_cache(self, data):
            calls.append(("create_timing_cache", bytes(data)))
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", cache.data, ignore_mismatch))
            if cache.data.startswith(b"other-gpu"):  # a cache from another device/version is refused
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Network:
        source = None

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            calls.append(("parse_from_file", path))
            self.network.source = Path(path).name
            return not parse_errors

        @property
        def num_errors(self):
            return len(parse_errors)

        def get_error(self, index):
            return parse_errors[index]

    class Builder:
        def __init__(self, logger):
            calls.append(("Builder",))

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return BuilderConfig()

        def create_optimization_profile(self):
            return OptimizationProfile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network",))
            return f"plan of {network.source}".encode() if build_ok else None

    for cls in (Logger, NetworkDefinitionCreationFlag, MemoryPoolType, Builder, OnnxParser):
        setattr(trt, cls.__name__, cls)
    return trt


def called(trt: types.ModuleType, name: str) -> list[tuple]:
    return [call for call in trt.calls if call[0] == name]
