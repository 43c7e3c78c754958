"""The edge: what stands between the internet and ARK's services.

- :mod:`ark.edge.render`    `ark render`: the registry of renderers and the bundle they write
- :mod:`ark.edge.nginx`     Nginx sites (TLS, HSTS, auth_request, trusted headers cleared)
- :mod:`ark.edge.certs`     Let's Encrypt paths, or a local CA and one certificate per name
- :mod:`ark.edge.wireguard` keys, peers and their config files
- :mod:`ark.edge.firewall`  the default-DROP ruleset (nftables, iptables + ipset)
- :mod:`ark.edge.apply`     loading it with an automatic rollback
- :mod:`ark.edge.persist`   the confirmed ruleset, written where the system loads it at boot
- :mod:`ark.edge.audit`     what the machine actually exposes, against the port map
- :mod:`ark.edge.files`     the one place that writes (atomic, unchanged files untouched)
"""

from __future__ import annotations

from ark.edge.files import Files, FileSpec, write_atomic, write_files
from ark.edge.ports import PortMap, Service, port_map
from ark.edge.render import RENDERERS, RenderContext, make_context, render_bundle, render_files

__all__ = [
    "RENDERERS",
    "FileSpec",
    "Files",
    "PortMap",
    "RenderContext",
    "Service",
    "make_context",
    "port_map",
    "render_bundle",
    "render_files",
    "write_atomic",
    "write_files",
]
