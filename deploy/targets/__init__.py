"""Deploy targets by URL: `local:/path`, `ssh://user@host[:port]/path`, `jetson://user@host[:port]/path`.

Query parameters, all optional: `python` (the device's interpreter, default python3), `tools`
(extra folders searched for trtexec, tegrastats, nvpmodel) and `sysroot` (read /etc/nv_tegra_release
and /proc/device-tree under this folder instead of /).
"""

from __future__ import annotations

import ipaddress
import re
import sys
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from compress.core.errors import UsageError
from deploy.targets.target import DeviceError, Target, slugify
from deploy.targets.jetson import JetsonTarget, describe
from deploy.targets.local import LocalTarget
from deploy.targets.ssh import SshOptions, SshTarget

SCHEMES = ("local", "ssh", "jetson")
QUERY_KEYS = ("python", "tools", "sysroot")
USAGE = "use local:/path, ssh://user@host[:port]/path or jetson://user@host[:port]/path"
# A DNS name or a Host alias of ~/.ssh/config, and a login name: never a leading '-' (ssh reads it as an option)
# nor shell characters (ssh puts both into ProxyCommand and other configured commands through %r and %h).
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def name_problem(user: str | None, host: str) -> str | None:
    """Why ssh must not be handed this user or host (refused here, before anything connects), or None."""
    if user is not None and not NAME.fullmatch(user):
        return f"user '{user}' is not a user name (letters, digits, '_', '.', '-')"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if not NAME.fullmatch(host) or len(host) > 253:
        return f"host '{host}' is not a host name or address (letters, digits, '_', '.', '-'; an IPv6 address in [])"
    return None


def parse_target(spec: str, ssh: SshOptions | None = None) -> Target:
    where = f"--target {spec}"
    try:
        url = urlsplit(spec)
        port = url.port
    except ValueError as error:
        raise UsageError(f"{where}: {error}") from None
    if url.scheme not in SCHEMES:
        raise UsageError(f"{where}: unknown target scheme '{url.scheme}'; {USAGE}")
    query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
    unknown = sorted(set(query) - set(QUERY_KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown option '{unknown[0]}'; known: {', '.join(QUERY_KEYS)}")
    path = unquote(url.path)
    if url.scheme == "local":
        if url.netloc or not path:
            raise UsageError(f"{where}: write a local folder as local:/path")
        return LocalTarget(spec, str(Path(path).expanduser().resolve()), query.get("python", sys.executable),
                           query.get("sysroot"), query.get("tools"), kind="local")
    if not url.hostname:
        raise UsageError(f"{where}: no host; {USAGE}")
    if path in ("", "/"):
        raise UsageError(f"{where}: no folder on the device; {USAGE}")
    if path.startswith("/~"):
        path = path[1:]
    user = unquote(url.username) if url.username else None
    problem = name_problem(user, url.hostname)
    if problem:
        raise UsageError(f"{where}: {problem}")
    cls = JetsonTarget if url.scheme == "jetson" else SshTarget
    return cls(spec, path, query.get("python", "python3"), query.get("sysroot"), query.get("tools"),
               kind=url.scheme, default_runtime="tensorrt" if url.scheme == "jetson" else "onnxruntime",
               user=user, host=url.hostname, port=port, ssh=ssh or SshOptions())


__all__ = ["SCHEMES", "DeviceError", "JetsonTarget", "LocalTarget", "SshOptions", "SshTarget", "Target",
           "describe", "parse_target", "slugify"]
