"""`python -m services.console`: serves the web console until SIGTERM (or Ctrl-C)."""

from __future__ import annotations

import logging
import secrets
import ssl
import sys

from aiohttp import web

from posttrain.console import create_app
from posttrain.rpc.logs import configure_logging
from services.console.settings import ConsoleSettings

log = logging.getLogger("services.console")


def main() -> int:
    settings = ConsoleSettings()
    configure_logging("console", settings.log_level, settings.log_format)
    if settings.secret_key and len(settings.secret_key) < 16:
        log.error("POSTTRAIN_CONSOLE_SECRET_KEY must be at least 16 characters")
        return 2
    if not settings.secret_key:
        log.warning("no POSTTRAIN_CONSOLE_SECRET_KEY: a random one; a restart signs everyone out")
    secret = settings.secret_key.encode() or secrets.token_bytes(32)
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        log.error("HTTPS needs both POSTTRAIN_CONSOLE_TLS_CERT_FILE and _TLS_KEY_FILE")
        return 2
    context = None
    if settings.tls_cert_file:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    scheme = "https" if context else "http"
    log.info("console on %s://%s:%d", scheme, settings.host, settings.port)
    # web.run_app stops cleanly on SIGTERM and SIGINT.
    web.run_app(
        create_app(settings.config(secret)),
        host=settings.host,
        port=settings.port,
        ssl_context=context,
        print=None,
        access_log=log,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
