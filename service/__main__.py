"""``python -m service [--host 127.0.0.1] [--port 8000]``; everything else from DCN_* environment variables."""
from __future__ import annotations

import argparse
import logging

from .app import create_app
from .server import run
from .settings import Settings


def main(argv: list[str] | None = None) -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--host", default=settings.host, help="bind address (DCN_HOST)")
    parser.add_argument("--port", type=int, default=settings.port, help="port (DCN_PORT)")
    parser.add_argument("--log-level", default=settings.log_level, help="DCN_LOG_LEVEL")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One process per machine (or GPU): batching needs every request in one process; scale out with replicas.
    # uvicorn hardened (service/server.py): h11 with header limits and timeouts, a connection limit, and a
    # graceful SIGTERM (not ready at once, in-flight requests get DCN_SHUTDOWN_GRACE_S, then 503).
    settings = settings.model_copy(update={"log_level": args.log_level})
    run(create_app(settings), settings, args.host, args.port)


if __name__ == "__main__":
    main()
