"""``python -m service [--host 127.0.0.1] [--port 8000]``; everything else from DCN_* environment variables."""
from __future__ import annotations

import argparse
import logging

import uvicorn

from .app import create_app
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
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level.lower(),
                timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()
