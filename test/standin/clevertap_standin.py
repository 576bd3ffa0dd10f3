#!/usr/bin/env python3
"""Local stand-in for CleverTap's upload API (POST /1/upload), for tests and benchmarks.

Behaviour follows /work/shared/clevertap-api.md (the facts cohortsync relies on):
header authentication, `{"d": [...]}` bodies of 1..1000 records, per-record validation
answered with `unprocessed` entries, and the limit of 15 concurrent requests per account.
On top of that it offers fault switches (POST /_control) and inspection endpoints
(GET /_records, GET /_stats, POST /_reset) so tests can provoke and observe every path.

Standard library only; listens on 127.0.0.1 only. See README.md next to this file.
"""

import argparse
import bisect
import json
import os
import re
import signal
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOST = "127.0.0.1"
UPLOAD_PATH = "/1/upload"
MAX_RECORDS = 1000            # per request, documented limit
DEFAULT_MAX_CONCURRENT = 15   # per account, documented limit
MAX_EVENT_PROPS = 100         # evtData keys, documented default
MAX_BODY_BYTES = 256 << 20    # guard against runaway clients; the real API documents none
HANG_LIMIT_S = 300.0          # a hung upload is dropped after this long at the latest
HANG_SLICE_S = 0.1

IDENTITY_KEYS = ("identity", "objectId", "FBID", "GPID")
# fullmatch() is used with these: `$` would also accept a trailing newline.
PHONE_RE = re.compile(r"\+[1-9][0-9]{6,14}")
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

# Per-record error messages. The API appends "Skipped record number : <i>" directly after
# the message's final period (no space), so every message here ends with a period.
RECORD_MESSAGES = {
    509: "Event name is missing.",
    512: "Record structure is not valid.",
    513: "Restricted system event name.",
    514: "Profile data is incorrect. Gender is not valid.",
    515: "Profile data is incorrect. Email is not valid.",
    516: "Profile data is incorrect. Phone number is not valid.",
    517: "Profile data is incorrect. Employed is not valid.",
    518: "Profile data is incorrect. Education is not valid.",
    519: "Profile data is incorrect. Married is not valid.",
    520: "Profile data is incorrect. Age is not valid.",
    522: "Event has too many properties.",
    523: "Identity not specified.",
    524: "Record type is neither event nor profile.",
    525: "Timestamp is not valid.",
    526: "objectId is not valid.",
    528: "Event discarded.",
    555: "Internal server error. Please retry.",
}

# Error texts for whole-request failures (HTTP status other than 200).
HTTP_ERRORS = {
    400: "Malformed request",
    401: "Account ID is not valid",
    403: "Operation not allowed",
    404: "Not found",
    429: "Too many concurrent requests",
    500: "Internal server error",
    503: "Service unavailable",
}

DEFAULT_SETTINGS = {
    "fail_next": 0,
    "fail_status": 503,
    "status_all": None,
    "delay_ms": 0,
    "hang": False,
    "reset": 0,
    "garbage": 0,
    "record_codes": {},
    "max_concurrent": DEFAULT_MAX_CONCURRENT,
    "store": True,
}

GARBAGE_BODY = b"not json at all <<<"


def is_int(v):
    """A JSON integer (bool is an int subclass in Python but not in JSON)."""
    return isinstance(v, int) and not isinstance(v, bool)


def fail_body(code):
    return {"status": "fail", "error": HTTP_ERRORS.get(code, "Service unavailable"), "code": code}


def validate_record(rec, record_codes):
    """Return None if the record is accepted, else (code, message)."""
    if not isinstance(rec, dict):
        return 512, RECORD_MESSAGES[512]

    # Test switch: reject a chosen identity with a chosen code, whatever the record holds.
    ident = rec.get("identity")
    if record_codes and (isinstance(ident, str) or is_int(ident)):
        code = record_codes.get(str(ident))
        if code is not None:
            return code, RECORD_MESSAGES.get(code, "Record rejected.")

    rtype = rec.get("type")
    if rtype not in ("event", "profile"):
        return 524, RECORD_MESSAGES[524]

    present = [k for k in IDENTITY_KEYS if rec.get(k) not in (None, "")]
    if not present:
        return 523, RECORD_MESSAGES[523]
    if len(present) > 1:
        return 523, "More than one identity specified."
    if not (isinstance(rec[present[0]], str) or is_int(rec[present[0]])):
        return 523, "Identity is not valid."

    # ts is optional (defaults to now) for both record types; 0 and non-integers are rejected.
    if "ts" in rec and not (is_int(rec["ts"]) and rec["ts"] > 0):
        return 525, RECORD_MESSAGES[525]

    if rtype == "event":
        name = rec.get("evtName")
        if not isinstance(name, str) or not name:
            return 509, RECORD_MESSAGES[509]
        if "evtData" in rec:
            data = rec["evtData"]
            if not isinstance(data, dict):
                return 512, "Event data is not valid."
            if len(data) > MAX_EVENT_PROPS:
                return 522, RECORD_MESSAGES[522]
    else:
        data = rec.get("profileData")
        if not isinstance(data, dict):
            return 512, "Profile data is not valid."
        if "Phone" in data and not (isinstance(data["Phone"], str)
                                    and PHONE_RE.fullmatch(data["Phone"])):
            return 516, RECORD_MESSAGES[516]
        if "Email" in data and not (isinstance(data["Email"], str)
                                    and EMAIL_RE.fullmatch(data["Email"])):
            return 515, RECORD_MESSAGES[515]
    return None


def parse_control(obj, settings, accounts):
    """Validate a /_control body and return (new_settings, new_accounts).

    Everything is checked before anything is applied, so a bad body changes nothing.
    Raises ValueError with a readable message.
    """
    if not isinstance(obj, dict):
        raise ValueError("control body must be a JSON object")
    new = dict(settings)
    new_accounts = accounts

    def non_negative_int(key):
        v = obj[key]
        if not is_int(v) or v < 0:
            raise ValueError(f"{key} must be a non-negative integer")
        return v

    def http_status(key, allow_null=False):
        v = obj[key]
        if v is None and allow_null:
            return None
        if not is_int(v) or not 100 <= v <= 599:
            raise ValueError(f"{key} must be an HTTP status code" + (" or null" if allow_null else ""))
        return v

    for key in obj:
        if key in ("fail_next", "reset", "garbage", "max_concurrent"):
            new[key] = non_negative_int(key)
        elif key == "fail_status":
            new[key] = http_status(key)
        elif key == "status_all":
            new[key] = http_status(key, allow_null=True)
        elif key == "delay_ms":
            v = obj[key]
            if not (is_int(v) or isinstance(v, float)) or v < 0:
                raise ValueError("delay_ms must be a non-negative number")
            new[key] = v
        elif key in ("hang", "store"):
            if not isinstance(obj[key], bool):
                raise ValueError(f"{key} must be true or false")
            new[key] = obj[key]
        elif key == "record_codes":
            v = obj[key]
            if v is None:
                v = {}
            if not isinstance(v, dict) or not all(is_int(c) for c in v.values()):
                raise ValueError("record_codes must be an object of identity -> integer code")
            new[key] = dict(v)
        elif key == "accounts":
            v = obj[key]
            if not isinstance(v, list) or not all(
                    isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p)
                    for p in v):
                raise ValueError("accounts must be a list of [account, passcode] pairs")
            new_accounts = {(a, p) for a, p in v}
        else:
            raise ValueError(f"unknown control key: {key}")
    return new, new_accounts


class State:
    """Everything shared between request threads, guarded by one lock.

    The lock is only ever held for short bookkeeping, never while sleeping or doing I/O.
    """

    def __init__(self, accounts):
        self.lock = threading.Lock()
        self.accounts = set(accounts)          # {(account id, passcode)}
        self.settings = dict(DEFAULT_SETTINGS)
        self.seq = 0                           # upload request sequence; never reset
        self.records = []                      # accepted records, sorted by _seq
        self.in_flight = {}                    # account -> uploads currently in flight
        self.max_seen = {}                     # account -> highest in_flight ever observed
        self.reset_stats()

    def reset_stats(self):
        self.requests = 0
        self.by_status = {}
        self.records_accepted = 0
        self.records_rejected = 0
        # Keep the high-water marks consistent with requests that are still in flight.
        self.max_seen = {a: n for a, n in self.in_flight.items() if n}

    def count_status(self, status):
        key = str(status)
        self.by_status[key] = self.by_status.get(key, 0) + 1


class StandinServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128   # benchmarks open many connections at once

    def __init__(self, port, state, tls_context=None, log_file=None):
        self.state = state
        self.tls_context = tls_context
        self.log_file = log_file
        self.log_lock = threading.Lock()
        super().__init__((HOST, port), Handler)
        if tls_context is not None:
            # Handshake in the request thread (Handler.setup), not in accept() on the
            # main thread, so one slow client cannot stall the listener.
            self.socket = tls_context.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False)

    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn(), which can stall on a broken resolver.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        # Clients going away (or failing the TLS handshake) are routine here; keep stderr
        # for real bugs.
        if isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def log_request_line(self, method, path, status, nrecords, duration_s):
        if self.log_file is None:
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        line = (f"{stamp}Z {method} {path} {status} records={nrecords} "
                f"{duration_s * 1000:.1f}ms\n")
        with self.log_lock:
            self.log_file.write(line)
            self.log_file.flush()


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 + Content-Length on every response lets libcurl keep connections alive.
    protocol_version = "HTTP/1.1"
    server_version = "clevertap-standin/1"

    def version_string(self):
        return self.server_version   # no Python version in the Server header

    # ---- plumbing -------------------------------------------------------------------

    def setup(self):
        # Headers and body leave in two writes; with Nagle on, the body waits for the
        # client's delayed ACK of the headers (~40 ms a request on a kept-alive connection).
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()

    def log_message(self, format, *args):
        # The default writes every request to stderr; we log (optionally) via --log only.
        pass

    def _dispatch(self):
        start = time.monotonic()
        self._status = "-"
        self._nrecords = 0
        try:
            self._route()
        finally:
            self.server.log_request_line(self.command, self.path, self._status,
                                         self._nrecords, time.monotonic() - start)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _dispatch

    def _read_body(self):
        """Read the request body (always, so a kept-alive connection stays in sync).

        Returns bytes, or None if the framing is unusable (the connection is then closed).
        """
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                size_line = self.rfile.readline(1024)
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    return None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass   # trailers
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY_BYTES:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            n = int(length)
        except ValueError:
            return None
        if n < 0 or n > MAX_BODY_BYTES:
            return None
        return self.rfile.read(n)

    def _send(self, status, body, content_type="application/json; charset=utf-8", close=False):
        if not isinstance(body, bytes):
            body = json.dumps(body, separators=(",", ":")).encode()
        self._status = status
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (ConnectionError, ssl.SSLError):
            self.close_connection = True

    def _abort_connection(self):
        """Close abruptly so the client sees a TCP reset rather than an orderly EOF.

        SO_LINGER 0 turns close() into a RST. The fd is closed via detach(): closing the
        socket object would wait for rfile/wfile, and the server's usual shutdown(SHUT_WR)
        would send a FIN first.
        """
        self.close_connection = True
        self._status = "reset"
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            os.close(sock.detach())
        except OSError:
            pass

    # ---- routing --------------------------------------------------------------------

    def _route(self):
        body = self._read_body() if self.command in ("POST", "PUT", "PATCH") else b""
        url = urlsplit(self.path)
        if body is None:
            # Unusable framing or an absurd size: the rest of the stream cannot be trusted.
            self._send(400, fail_body(400), close=True)
            return
        route = (self.command, url.path)
        if route == ("POST", UPLOAD_PATH):
            self._upload(body)
        elif route == ("POST", "/_control"):
            self._control(body)
        elif route == ("POST", "/_reset"):
            self._reset()
        elif route == ("GET", "/_records"):
            self._records(parse_qs(url.query))
        elif route == ("GET", "/_stats"):
            self._stats()
        else:
            self._send(404, fail_body(404))

    # ---- the real API ---------------------------------------------------------------

    def _upload(self, body):
        st = self.server.state
        arrived = time.time()
        account = self.headers.get("X-CleverTap-Account-Id", "")
        passcode = self.headers.get("X-CleverTap-Passcode", "")
        with st.lock:
            st.seq += 1
            seq = st.seq
            st.requests += 1
            authorised = (account, passcode) in st.accounts

        if not authorised:
            return self._finish_upload(401, fail_body(401))
        if not self.headers.get("Content-Type", "").lower().startswith("application/json"):
            return self._finish_upload(400, fail_body(400))

        # Concurrency is counted from here until the response is about to be written.
        # The decrement happens *before* writing, so a client that waits for each response
        # before sending the next request can never trip the limit by racing our cleanup.
        # The high-water mark includes requests that get 429: it shows what the client
        # attempted, which is what tests want to assert on.
        with st.lock:
            n = st.in_flight.get(account, 0) + 1
            st.in_flight[account] = n
            if n > st.max_seen.get(account, 0):
                st.max_seen[account] = n
            s = st.settings
            over_limit = n > s["max_concurrent"]
            fault = None
            if not over_limit:
                # Decide the fault now, in arrival order, so "the next N uploads" is exact
                # even when a delay lets later requests finish first.
                if s["hang"]:
                    fault = "hang"
                elif s["reset"] > 0:
                    s["reset"] -= 1
                    fault = "reset"
                elif s["fail_next"] > 0:
                    s["fail_next"] -= 1
                    fault = ("status", s["fail_status"])
                elif s["status_all"] is not None:
                    fault = ("status", s["status_all"])
                elif s["garbage"] > 0:
                    s["garbage"] -= 1
                    fault = "garbage"
            delay_s = s["delay_ms"] / 1000.0
            record_codes = s["record_codes"]
            store = s["store"]

        def leave():
            with st.lock:
                st.in_flight[account] -= 1

        if over_limit:
            leave()
            return self._finish_upload(429, fail_body(429))

        try:
            if delay_s > 0:
                time.sleep(delay_s)
            if fault == "hang":
                deadline = time.monotonic() + HANG_LIMIT_S
                while time.monotonic() < deadline:
                    with st.lock:
                        if not st.settings["hang"]:
                            break
                    time.sleep(HANG_SLICE_S)
                result = ("drop",)
            elif fault == "reset":
                result = ("reset",)
            elif isinstance(fault, tuple):
                result = (fault[1], fail_body(fault[1]))
            elif fault == "garbage":
                result = (200, GARBAGE_BODY)
            else:
                result = self._process(body, account, seq, arrived, record_codes, store)
        finally:
            leave()

        if result[0] == "drop":
            # Orderly close, no response: the client sees an empty reply.
            self.close_connection = True
            self._status = "dropped"
            with st.lock:
                st.count_status("dropped")
        elif result[0] == "reset":
            with st.lock:
                st.count_status("reset")
            self._abort_connection()
        else:
            self._finish_upload(*result)

    def _finish_upload(self, status, body):
        with self.server.state.lock:
            self.server.state.count_status(status)
        self._send(status, body)

    def _process(self, body, account, seq, arrived, record_codes, store=True):
        """Validate and store one upload. Returns (status, response body)."""
        try:
            doc = json.loads(body, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError):
            doc = None
        records = doc.get("d") if isinstance(doc, dict) else None
        if not isinstance(records, list) or not 1 <= len(records) <= MAX_RECORDS:
            return 400, fail_body(400)
        self._nrecords = len(records)

        accepted, unprocessed = [], []
        for i, rec in enumerate(records, start=1):
            verdict = validate_record(rec, record_codes)
            if verdict is None:
                if store:
                    stored = dict(rec)
                    stored.update(_seq=seq, _at=arrived, _account=account)
                    accepted.append(stored)
                else:
                    accepted.append(None)
            else:
                code, message = verdict
                unprocessed.append({"status": "fail", "code": code,
                                    "error": f"{message}Skipped record number : {i}",
                                    "record": rec})

        st = self.server.state
        with st.lock:
            # Keep the store in request arrival order even when a later request (shorter
            # delay, smaller body) finishes first; within a request, order is as sent.
            if store:
                pos = bisect.bisect_right(st.records, seq, key=lambda r: r["_seq"])
                st.records[pos:pos] = accepted
            st.records_accepted += len(accepted)
            st.records_rejected += len(unprocessed)

        if not unprocessed:
            status = "success"
        elif not accepted:
            status = "fail"
        else:
            status = "partial"
        return 200, {"status": status, "processed": len(accepted), "unprocessed": unprocessed}

    # ---- test switches and inspection -----------------------------------------------

    def _control(self, body):
        st = self.server.state
        try:
            obj = json.loads(body or b"{}")
            with st.lock:
                st.settings, st.accounts = parse_control(obj, st.settings, st.accounts)
        except ValueError as e:   # includes json.JSONDecodeError
            return self._send(400, {"ok": False, "error": str(e)})
        self._send(200, {"ok": True})

    def _reset(self):
        st = self.server.state
        with st.lock:
            st.records = []
            st.settings = dict(DEFAULT_SETTINGS)
            st.reset_stats()
        self._send(200, {"ok": True})

    def _records(self, query):
        st = self.server.state
        wanted = query.get("account")
        with st.lock:
            records = list(st.records)   # stored dicts are never mutated, a shallow copy is enough
        if wanted:
            records = [r for r in records if r["_account"] in wanted]
        self._send(200, {"records": records})

    def _stats(self):
        st = self.server.state
        with st.lock:
            by_account = {a: {"in_flight": st.in_flight.get(a, 0),
                              "max_concurrent_seen": st.max_seen.get(a, 0)}
                          for a in sorted(set(st.in_flight) | set(st.max_seen))}
            stats = {
                "requests": st.requests,
                "by_status": dict(st.by_status),
                "records_accepted": st.records_accepted,
                "records_rejected": st.records_rejected,
                "max_concurrent_seen": max(st.max_seen.values(), default=0),
                "in_flight": sum(st.in_flight.values()),
                "by_account": by_account,
            }
        self._send(200, stats)


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def write_port_file(path, port):
    """Write atomically so a poller never reads a half-written file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Local stand-in for CleverTap's upload API.")
    ap.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1; 0 picks a free one")
    ap.add_argument("--account", action="append", required=True,
                    help="account id (repeat, paired in order with --passcode)")
    ap.add_argument("--passcode", action="append", required=True,
                    help="passcode (repeat, paired in order with --account)")
    ap.add_argument("--port-file", help="write the actual port here once listening")
    ap.add_argument("--tls-cert", help="PEM certificate: serve https")
    ap.add_argument("--tls-key", help="PEM private key for --tls-cert")
    ap.add_argument("--log", help="append one line per request to this file")
    args = ap.parse_args(argv)

    if len(args.account) != len(args.passcode):
        ap.error("--account and --passcode must be given the same number of times")
    if bool(args.tls_cert) != bool(args.tls_key):
        ap.error("--tls-cert and --tls-key go together")

    tls = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)

    log_file = open(args.log, "a", encoding="utf-8") if args.log else None
    state = State(zip(args.account, args.passcode))
    server = StandinServer(args.port, state, tls, log_file)
    port = server.server_address[1]

    def on_signal(signum, frame):
        # shutdown() waits for serve_forever() to return, and serve_forever() runs on this
        # (the main) thread, so it must be called from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # The socket is already listening (bound in the constructor): announce it.
    if args.port_file:
        write_port_file(args.port_file, port)
    print(f"listening on {'https' if tls else 'http'}://{HOST}:{port}", flush=True)

    try:
        server.serve_forever(poll_interval=0.1)   # quick exit after a signal
    finally:
        server.server_close()
        if args.port_file:
            try:
                os.unlink(args.port_file)   # a stale port file would mislead the next poller
            except OSError:
                pass
        if log_file:
            log_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
