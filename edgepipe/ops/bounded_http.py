"""A threading HTTP server with a bound on the requests it serves at once, shared by /metrics and the dashboard.

300 half-open connections made 300 threads: past `max_connections` a connection is closed at once and counted
in `owner.refused`; each request's thread gives its slot back when it ends, however it ends. A client that
went away is a debug line, not a traceback on the journal.
"""
from __future__ import annotations

import logging
import socket
import threading

log = logging.getLogger(__name__)


def bounded_server(base: type, host: str, max_connections: int, owner, what: str, backlog: int) -> type:
    """A subclass of `base` (a socketserver TCPServer with ThreadingMixIn) for `host` that serves at most
    `max_connections` requests at once; `owner.refused` counts the connections it closed unserved."""
    slots = threading.BoundedSemaphore(max_connections)

    class Bounded(base):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        request_queue_size = backlog  # accept (and refuse) a burst quickly rather than stall in the backlog

        def process_request(self, request, client_address):
            if not slots.acquire(blocking=False):
                owner.refused += 1
                self.shutdown_request(request)
                return
            try:
                super().process_request(request, client_address)
            except BaseException:
                slots.release()
                raise

        def process_request_thread(self, request, client_address):
            try:
                super().process_request_thread(request, client_address)
            finally:
                slots.release()

        def handle_error(self, request, client_address) -> None:  # a timed-out or vanished client: no traceback
            log.debug("%s: request from %s failed", what, client_address, exc_info=True)

    return Bounded
