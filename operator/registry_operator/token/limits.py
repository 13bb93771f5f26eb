"""Size limits on everything a client sends, so memory stays bounded whatever the input.

The service is reachable without credentials and holds per-client state, so each input is bounded
before any work is done on it. The legitimate values are tiny: user names are at most 64
characters (the CRD), passwords at most 72 bytes (what bcrypt reads; the operator refuses longer
ones), and a token request is a service name plus a few scopes.
"""

from __future__ import annotations

from typing import Any

MAX_USER_BYTES = 256  # longer names cannot exist; refused before any lookup, hashing or throttle record
MAX_PASSWORD_BYTES = 72  # bcrypt ignores the rest; longer passwords cannot exist either
# A ServiceAccount token sent as the password (about 1 KiB; longer than any htpasswd password, which is how
# it is told apart); longer ones are refused before they are decoded.
MAX_ACCOUNT_TOKEN_BYTES = 8 * 1024
MAX_BODY_BYTES = 16 * 1024  # a POST /token form; larger bodies get 413 before they are read
MAX_LINE_BYTES = 8190  # request line, so the query string too (aiohttp's default, stated here)
MAX_FIELD_BYTES = 8190  # one header, so the Basic credentials too
MAX_HEADERS = 64
# Kernel receive buffer of each connection, so the most one read hands the parser. aiohttp keeps a
# request it could not parse in a reference cycle with the read buffers that failed (and an error
# message quoting each one in full), so this bounds what each such request holds until the garbage
# is swept; with the default (up to 256 KiB per read) 64 connections sending 1 MB headers held
# 190 MiB. Token requests are tiny, so the smaller TCP window costs them nothing.
RECEIVE_BUFFER_BYTES = 16 * 1024

# A connection that has not completed a request for this long is closed, also one that never sent
# or never finished one. aiohttp's default, an hour, let 5,000 idle connections add 26 MiB and a
# slow sender keep them at no cost. Longer than the 60 s idle timeouts of common proxies in front,
# so a proxy does not reuse a connection this service is closing.
IDLE_SECONDS = 75.0

# aiohttp request handler options. No lingering: a request whose body was refused is answered and
# the connection closed, instead of reading and discarding up to 10 s of upload.
SERVER_LIMITS: dict[str, Any] = {
    "max_line_size": MAX_LINE_BYTES,
    "max_field_size": MAX_FIELD_BYTES,
    "max_headers": MAX_HEADERS,
    "lingering_time": 0.0,
    "keepalive_timeout": IDLE_SECONDS,
}
