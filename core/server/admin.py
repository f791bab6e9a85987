"""`admin_only`: the FastAPI dependency of routes that change the server (flush the cache, load or
unload adapters).

With `api_key` set, the API-key middleware already requires the key on every route but /health,
admin routes included. Without one, an admin route answers only clients on the loopback interface:
anyone else gets 403, so a server bound to a public address without a key cannot be reconfigured
from the network. Declare a route admin with `dependencies=[Depends(admin_only)]`.
"""
from __future__ import annotations

import ipaddress

from fastapi import Request

from jackfield.server.errors import APIError


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def admin_only(request: Request) -> None:
    if request.app.state.server.settings.api_key:
        return  # the middleware has checked the key
    host = request.client.host if request.client else None
    if not _is_loopback(host):
        raise APIError(403, f"{request.url.path} is an admin route: without --api-key it answers only local "
                            f"clients, and this request came from {host}", code="admin_only")
