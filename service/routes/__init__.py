"""The HTTP and WebSocket routes, one module per concern: ``ops`` (/, health, readiness, /models, /metrics,
/docs, the KServe v2 health and metadata paths), ``classify`` (POST /classify), ``transcribe`` (POST /transcribe
and the live stream). Each module's ``add_routes(app, service)`` adds its routes to the app (not through an APIRouter, so that
``app.routes`` lists every route)."""
from __future__ import annotations

from fastapi import FastAPI, HTTPException
from fastapi.dependencies.models import Dependant
from starlette.requests import HTTPConnection

from ..state import Service
from . import classify, ops, transcribe


def _query_names(dependant: Dependant) -> set[str]:
    names = {f.alias for f in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def reject_unknown_query(connection: HTTPConnection) -> None:
    """A query parameter the route does not take is a 422 that names it (a misspelt option must not be ignored)."""
    route = connection.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if connection.scope["type"] != "http" or dependant is None or not connection.query_params:
        return
    allowed = _query_names(dependant)
    unknown = [k for k in connection.query_params if k not in allowed]
    if unknown:
        takes = f"this route takes {', '.join(sorted(allowed))}" if allowed else "this route takes no parameters"
        raise HTTPException(422, f"unknown query parameter {unknown[0]!r}; {takes}")


def include_routes(app: FastAPI, service: Service) -> None:
    for module in (ops, classify, transcribe):
        module.add_routes(app, service)
