"""What the mParticle and Braze stand-ins share: the server, the request plumbing, the
fault switches and the command line.

clevertap_standin.py predates this module and keeps its own copy of the plumbing; the
switch names and their meaning are the same, so a test drives all three alike.

Standard library only; listens on 127.0.0.1 only. See README.md next to this file.
"""

import argparse
import json
import os
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
MAX_BODY_BYTES = 256 << 20    # guard against runaway clients
HANG_LIMIT_S = 300.0          # a hung request is dropped after this long at the latest
HANG_SLICE_S = 0.1
GARBAGE_BODY = b"not json at all <<<"

# Switches every stand-in understands; a vendor module adds its own on top.
COMMON_SETTINGS = {
    "fail_next": 0,
    "fail_status": 503,
    "status_all": None,
    "retry_after": 1,         # seconds sent as Retry-After with a 429; null sends none
    "delay_ms": 0,
    "hang": False,
    "reset": 0,
    "garbage": 0,
    "record_errors": {},
    "max_concurrent": 100,
    "store": True,
}


def is_int(v):
    """A JSON integer (bool is an int subclass in Python but not in JSON)."""
    return isinstance(v, int) and not isinstance(v, bool)


def reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body):
    """The JSON document in body, or None when it is not JSON (NaN and Infinity included)."""
    try:
        return json.loads(body, parse_constant=reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def parse_common_control(key, value, new):
    """Apply one common /_control key to new. Returns False for a key it does not know.

    Raises ValueError for a bad value.
    """
    if key in ("fail_next", "reset", "garbage", "max_concurrent"):
        if not is_int(value) or value < 0:
            raise ValueError(f"{key} must be a non-negative integer")
    elif key in ("fail_status", "status_all"):
        if not (value is None and key == "status_all") and not (is_int(value) and 100 <= value <= 599):
            raise ValueError(f"{key} must be an HTTP status code"
                             + (" or null" if key == "status_all" else ""))
    elif key == "retry_after":
        if value is not None and (not is_int(value) or value < 0):
            raise ValueError("retry_after must be a non-negative integer or null")
    elif key == "delay_ms":
        if not (is_int(value) or isinstance(value, float)) or value < 0:
            raise ValueError("delay_ms must be a non-negative number")
    elif key in ("hang", "store"):
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false")
    elif key == "record_errors":
        value = {} if value is None else value
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ValueError("record_errors must be an object of identity -> error text")
        value = dict(value)
    else:
        return False
    new[key] = value
    return True


class State:
    """Everything shared between request threads, guarded by one lock.

    The lock is only ever held for short bookkeeping, never while sleeping or doing I/O.
    """

    def __init__(self, credentials, defaults):
        self.lock = threading.Lock()
        self.credentials = set(credentials)    # what the vendor module compares against
        self.defaults = dict(defaults)
        self.settings = dict(defaults)
        self.seq = 0                           # API request sequence; never reset
        self.records = []                      # accepted objects, sorted by _seq
        self.in_flight = {}                    # credential label -> requests in flight
        self.max_seen = {}
        self.reset_data()
        self.reset_stats()

    def reset_data(self):
        self.records = []

    def reset_stats(self):
        self.requests = 0
        self.by_status = {}
        self.records_accepted = 0
        self.records_rejected = 0
        self.max_seen = {a: n for a, n in self.in_flight.items() if n}

    def count_status(self, status):
        key = str(status)
        self.by_status[key] = self.by_status.get(key, 0) + 1


class StandinServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128   # benchmarks open many connections at once

    def __init__(self, port, state, handler, tls_context=None, log_file=None):
        self.state = state
        self.log_file = log_file
        self.log_lock = threading.Lock()
        super().__init__((HOST, port), handler)
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


class BaseHandler(BaseHTTPRequestHandler):
    """Plumbing, test endpoints and the fault switches; the vendor subclass supplies:

    API_PATH, error_body(status) -> (body, extra headers), authenticate() -> (label or
    None, status, body), process(body, label, seq, arrived, settings) -> (status, body,
    headers), and optionally extra_routes() and parse_control_key().
    """

    protocol_version = "HTTP/1.1"   # with Content-Length everywhere: keep-alive for libcurl
    server_version = "standin/1"
    API_PATH = None

    def version_string(self):
        return self.server_version

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
        pass   # --log only

    def _dispatch(self):
        start = time.monotonic()
        self._status = "-"
        self._nrecords = 0
        try:
            self._route()
        finally:
            # The path without its query: a test may filter /_records by an api key.
            self.server.log_request_line(self.command, urlsplit(self.path).path, self._status,
                                         self._nrecords, time.monotonic() - start)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _dispatch

    def _read_body(self):
        """The request body (always read, so a kept-alive connection stays in sync), or None
        if the framing is unusable."""
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
                        pass
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

    def send(self, status, body, headers=None, close=False):
        """Answer. body: bytes, or a JSON value, or None for an empty body."""
        if body is None:
            body = b""
        elif not isinstance(body, bytes):
            body = json.dumps(body, separators=(",", ":")).encode()
        self._status = status
        try:
            self.send_response(status)
            if body:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (ConnectionError, ssl.SSLError):
            self.close_connection = True

    def _abort_connection(self):
        """Close with a TCP reset (SO_LINGER 0) rather than an orderly EOF."""
        self.close_connection = True
        self._status = "reset"
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            os.close(sock.detach())
        except OSError:
            pass

    def _route(self):
        body = self._read_body() if self.command in ("POST", "PUT", "PATCH") else b""
        url = urlsplit(self.path)
        if body is None:
            self.send(400, self.error_body(400)[0], close=True)
            return
        route = (self.command, url.path)
        if route == ("POST", self.API_PATH):
            self._api(body)
        elif route == ("POST", "/_control"):
            self._control(body)
        elif route == ("POST", "/_reset"):
            self._reset()
        elif route == ("GET", "/_records"):
            self._records(parse_qs(url.query))
        elif route == ("GET", "/_stats"):
            self._stats()
        elif not self.extra_routes(route, parse_qs(url.query)):
            self.send(404, self.error_body(404)[0])

    def extra_routes(self, route, query):
        return False

    def content_type_ok(self):
        return self.headers.get("Content-Type", "").lower().startswith("application/json")

    def fault_answer(self, status, settings):
        body, headers = self.error_body(status)
        if status == 429 and settings["retry_after"] is not None:
            headers = dict(headers, **{"Retry-After": str(settings["retry_after"])})
        return status, body, headers

    # ---- the API path: authentication, concurrency, faults, then the vendor's checks ----

    def _api(self, body):
        st = self.server.state
        arrived = time.time()
        with st.lock:
            st.seq += 1
            seq = st.seq
            st.requests += 1
        label, status, err = self.authenticate()
        if label is None:
            return self._finish(status, err, {})
        if not self.content_type_ok():
            return self._finish(400, *self.error_body(400))

        # In flight from here until just before the answer is written, so a client that
        # waits for each answer can never trip the limit. The high-water mark counts
        # attempts that get 429 too: tests assert on what the client tried.
        with st.lock:
            n = st.in_flight.get(label, 0) + 1
            st.in_flight[label] = n
            st.max_seen[label] = max(n, st.max_seen.get(label, 0))
            s = st.settings
            over_limit = n > s["max_concurrent"]
            fault = None
            if not over_limit:
                # Decided now, in arrival order, so "the next N" is exact even when a delay
                # lets later requests finish first.
                if s["hang"]:
                    fault = "hang"
                elif s["reset"] > 0:
                    s["reset"] -= 1
                    fault = "reset"
                elif s["fail_next"] > 0:
                    s["fail_next"] -= 1
                    fault = s["fail_status"]
                elif s["status_all"] is not None:
                    fault = s["status_all"]
                elif s["garbage"] > 0:
                    s["garbage"] -= 1
                    fault = "garbage"
            settings = dict(s)

        def leave():
            with st.lock:
                st.in_flight[label] -= 1

        if over_limit:
            leave()
            return self._finish(*self.fault_answer(429, settings))
        try:
            if settings["delay_ms"] > 0:
                time.sleep(settings["delay_ms"] / 1000.0)
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
            elif fault == "garbage":
                result = (self.GARBAGE_STATUS, GARBAGE_BODY, {})
            elif fault is not None:
                result = self.fault_answer(fault, settings)
            else:
                result = self.process(body, label, seq, arrived, settings)
        finally:
            leave()

        if result[0] == "drop":
            self.close_connection = True   # orderly close, no answer: an empty reply
            self._status = "dropped"
            with st.lock:
                st.count_status("dropped")
        elif result[0] == "reset":
            with st.lock:
                st.count_status("reset")
            self._abort_connection()
        else:
            self._finish(*result)

    def _finish(self, status, body, headers):
        with self.server.state.lock:
            self.server.state.count_status(status)
        self.send(status, body, headers)

    def store(self, seq, accepted, rejected):
        """Keep accepted objects in request arrival order (a later request may finish first)."""
        st = self.server.state
        with st.lock:
            if accepted and accepted[0] is not None:
                pos = len(st.records)
                while pos > 0 and st.records[pos - 1]["_seq"] > seq:
                    pos -= 1
                st.records[pos:pos] = accepted
            st.records_accepted += len(accepted)
            st.records_rejected += rejected

    # ---- test switches and inspection ----------------------------------------------

    def parse_control_key(self, key, value, new, new_credentials):
        """Vendor keys; returns (handled, new_credentials)."""
        return False, new_credentials

    def _control(self, body):
        st = self.server.state
        obj = parse_json(body or b"{}")
        try:
            if not isinstance(obj, dict):
                raise ValueError("control body must be a JSON object")
            with st.lock:
                new = dict(st.settings)
                creds = st.credentials
                for key, value in obj.items():
                    if parse_common_control(key, value, new):
                        continue
                    handled, creds = self.parse_control_key(key, value, new, creds)
                    if not handled:
                        raise ValueError(f"unknown control key: {key}")
                st.settings, st.credentials = new, creds
        except ValueError as e:
            return self.send(400, {"ok": False, "error": str(e)})
        self.send(200, {"ok": True})

    def _reset(self):
        st = self.server.state
        with st.lock:
            st.reset_data()
            st.settings = dict(st.defaults)
            st.reset_stats()
        self.send(200, {"ok": True})

    RECORDS_FILTER = "_key"

    def _records(self, query):
        st = self.server.state
        with st.lock:
            records = list(st.records)
        wanted = query.get(self.RECORDS_FILTER.lstrip("_"))
        if wanted:
            records = [r for r in records if r[self.RECORDS_FILTER] in wanted]
        self.send(200, {"records": records})

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
        self.send(200, stats)


def write_port_file(path, port):
    """Write atomically so a poller never reads a half-written file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


def common_arguments(description):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1; 0 picks a free one")
    ap.add_argument("--port-file", help="write the actual port here once listening")
    ap.add_argument("--tls-cert", help="PEM certificate: serve https")
    ap.add_argument("--tls-key", help="PEM private key for --tls-cert")
    ap.add_argument("--log", help="append one line per request to this file")
    return ap


def serve(ap, args, state, handler):
    """Run until SIGTERM/SIGINT; returns the exit status."""
    if bool(args.tls_cert) != bool(args.tls_key):
        ap.error("--tls-cert and --tls-key go together")
    tls = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)

    log_file = open(args.log, "a", encoding="utf-8") if args.log else None
    server = StandinServer(args.port, state, handler, tls, log_file)
    port = server.server_address[1]

    def on_signal(signum, frame):
        # shutdown() waits for serve_forever(), which runs on this thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if args.port_file:
        write_port_file(args.port_file, port)
    print(f"listening on {'https' if tls else 'http'}://{HOST}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
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
