"""Errors as JSON: the documented error responses of each route and the exception handlers that produce them.
Every error body is ``{"detail": "..."}`` (a string); 422s add the structured list as ``errors``."""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from .decode import DecodeError
from .middleware import UPLOAD_ROUTES
from .schemas import ErrorResponse

log = logging.getLogger("service")


def error_doc(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


BINARY = {"schema": {"type": "string", "format": "binary"}}
UPLOAD_ERRORS = {400: error_doc("undecodable, damaged, empty or invalid upload; an image over the pixel or "
                                "decode-memory limit; audio that cannot be analysed"),
                 404: error_doc("this instance does not serve the route's model (its checkpoint setting is empty)"),
                 408: error_doc("the upload paused too long or took too long"),
                 413: error_doc("upload, file count, decode size or recording length over the limit"),
                 415: error_doc("not multipart/form-data, or the file is not a supported format"),
                 422: error_doc("invalid or unknown parameters (detail: a string; errors: the list)"),
                 431: error_doc("too many or too large request headers"),
                 499: error_doc("the client closed the connection (recorded in metrics; nothing is sent)"),
                 503: error_doc("queue full or the work would not finish by the deadline (retry after Retry-After "
                                "seconds), or shutting down"),
                 504: error_doc("not answered within the request deadline (counted from the end of the upload)")}


class NonFiniteOutput(Exception):
    """The model produced NaN or infinite probabilities: never sent in a 200 (JSON has no NaN)."""


def add_exception_handlers(app: FastAPI) -> None:
    @app.exception_handler(DecodeError)
    async def decode_error(request: Request, exc: DecodeError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(NonFiniteOutput)
    async def non_finite_output(request: Request, exc: NonFiniteOutput) -> JSONResponse:
        log.error("non-finite model output on %s: %s", request.url.path, exc)
        return JSONResponse({"detail": f"the model produced non-finite probabilities for this recording ({exc}); "
                                       "nothing was returned"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if request.url.path in UPLOAD_ROUTES and not content_type.startswith("multipart/form-data"):
            return JSONResponse({"detail": f"expected multipart/form-data with a 'file' field, got "
                                           f"{content_type or 'no content type'}"}, status_code=415)
        # `detail` is a string, as for every other error; the structured list stays available as `errors`.
        errors = jsonable_encoder(exc.errors())
        detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
                           for e in errors) or "invalid request"
        return JSONResponse({"detail": detail, "errors": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)
