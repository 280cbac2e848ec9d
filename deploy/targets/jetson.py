"""`jetson://user@host[:port]/path`: ssh plus the Jetson steps.

The device is probed for JetPack/L4T (`/etc/nv_tegra_release`), TensorRT and the nvpmodel power
mode; the TensorRT engine is built on the device with trtexec (an engine is tied to its GPU and
TensorRT version, so one built elsewhere is never copied); tegrastats samples power while the
runner benchmarks. The probing, trtexec and tegrastats code runs on the device in the runner.
"""

from __future__ import annotations

from typing import Any

from compress.core.errors import UsageError
from deploy.targets.ssh import SshTarget


class JetsonTarget(SshTarget):
    def check_device(self, probe: dict[str, Any], runtime: str) -> None:
        if not probe.get("jetson"):
            where = f"{self.sysroot or ''}/etc/nv_tegra_release"
            raise UsageError(f"{self.label}: not a Jetson ({where} not found); use ssh://... for other Linux devices")
        super().check_device(probe, runtime)


def describe(probe: dict[str, Any]) -> str:
    """One line about a device, for progress and the summary."""
    parts = [probe.get("model") or probe.get("hostname") or "?", probe.get("arch") or "?"]
    if probe.get("l4t"):
        parts.append(f"L4T {probe['l4t']} (JetPack {probe.get('jetpack') or '?'})")
    if probe.get("tensorrt"):
        parts.append(f"TensorRT {probe['tensorrt']}")
    if probe.get("power_mode"):
        parts.append(f"power mode {probe['power_mode'].get('name')}")
    return ", ".join(parts)
