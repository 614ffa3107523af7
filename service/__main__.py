"""``dcn-serve`` (or ``python -m service``) ``[--host 127.0.0.1] [--port 8000]``; everything else from DCN_*
environment variables (service/settings.py). A misspelt variable or a bad value stops it with one line."""
from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from .app import create_app
from .logs import configure_logging
from .server import run
from .settings import Settings, settings_error


def main(argv: list[str] | None = None) -> None:
    try:
        settings = Settings()
    except ValidationError as e:
        print(f"error: {settings_error(e)}", file=sys.stderr)
        raise SystemExit(2) from None
    parser = argparse.ArgumentParser(prog="dcn-serve", description=__doc__)
    parser.add_argument("--host", default=settings.host, help="bind address (DCN_HOST)")
    parser.add_argument("--port", type=int, default=settings.port, help="port (DCN_PORT)")
    parser.add_argument("--log-level", default=settings.log_level, type=str.lower,
                        choices=["debug", "info", "warning", "error", "critical"], help="DCN_LOG_LEVEL")
    parser.add_argument("--log-format", default=settings.log_format, choices=["text", "json"],
                        help="DCN_LOG_FORMAT: json writes one object per line, with the request id")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is outside [0, 65535]")
    configure_logging(args.log_level, args.log_format)
    # One process per machine (or GPU): batching needs every request in one process; scale out with replicas.
    # uvicorn hardened (service/server.py): h11 with header limits and timeouts, a connection limit, and a
    # graceful SIGTERM (not ready at once, in-flight requests get DCN_SHUTDOWN_GRACE_S, then 503).
    settings = settings.model_copy(update={"log_level": args.log_level, "log_format": args.log_format})
    # log_config=None: uvicorn's loggers go through ours (the request id on its access lines, JSON when asked)
    run(create_app(settings), settings, args.host, args.port, log_config=None)


if __name__ == "__main__":
    main()
