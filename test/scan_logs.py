#!/usr/bin/env python3
"""Scan server logs for secrets: CleverTap passcodes and webhook passwords.

scripts/test runs every suite with log_statement = all, log_min_messages = debug1
and log_connections = on, then runs this over every server log it produced:

    scan_logs.py LOG...

A secret may appear in exactly one kind of log entry: the "statement:" entry
that log_statement writes for a statement calling connect_clevertap,
connect_mparticle, connect_braze, set_clevertap_passcode, set_destination_secret
or add_webhook_user. PostgreSQL logs what was typed,
and only the caller can keep that out (SET LOCAL log_statement = 'none', see
README.md). Any other entry holding a secret is a leak: an error's STATEMENT
or DETAIL line, a worker's message, an access log line, libcurl's or
libmicrohttpd's chatter.

What counts as a secret:
  * anything containing the marker "cs-secret" (every passcode and password
    the tests use contains it; see test/t/CsDelivery.pm), also when it
    appears base64-encoded, as in an "Authorization: Basic ..." header;
  * every literal passed as the passcode or password in a logged setter
    statement (so a test that forgets the marker is still covered);
  * the header names X-CleverTap-Passcode and Authorization outside statement
    entries: nothing but a header dump would print them.

Prints each leak and exits 1 if there is any; prints a one-line summary.
"scan_logs.py --self-test" first shows on a made-up log that each kind of leak
is found and the setter statements are not reported (scripts/test runs it).
"""
import base64
import binascii
import re
import sys

MARKER = "cs-secret"

# log_line_prefix = '%m [%p] %q%a ' in every cluster the tests start
ENTRY_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \S+ \[\d+\] ")
STATEMENT = re.compile(r"^\S+ \S+ \S+ \[\d+\] .*?LOG:  (?:statement|execute [^:]*): ", re.S)
SETTER = re.compile(r"\b(connect_clevertap|connect_mparticle|connect_braze|set_clevertap_passcode"
                    r"|set_destination_secret|add_webhook_user)\s*\(")
# the secret argument of a setter typed with literals: 3rd of connect_clevertap and
# connect_mparticle, 2nd of the others
SQL_LIT = r"'((?:[^']|'')*)'"
SECRET_ARG = [
    re.compile(r"connect_(?:clevertap|mparticle)\s*\(\s*" + SQL_LIT + r"\s*,\s*" + SQL_LIT + r"\s*,\s*" + SQL_LIT),
    re.compile(r"(?:connect_braze|set_clevertap_passcode|set_destination_secret)\s*\(\s*" + SQL_LIT + r"\s*,\s*" + SQL_LIT),
    re.compile(r"add_webhook_user\s*\(\s*" + SQL_LIT + r"\s*,\s*" + SQL_LIT),
]
HEADERS = re.compile(r"X-CleverTap-Passcode|Authorization", re.I)
BASE64 = re.compile(r"[A-Za-z0-9+/]{12,}={0,2}")
# shorter literals ('x', 'PASS') would match innocent text
MIN_SECRET_LEN = 6


def entries(path):
    """(line number, text) of each log entry; continuation lines belong to it."""
    with open(path, encoding="utf-8", errors="replace") as f:
        start, buf = 0, []
        for n, line in enumerate(f, 1):
            if ENTRY_START.match(line) and buf:
                yield start, "".join(buf)
                buf = []
            if not buf:
                start = n
            buf.append(line)
        if buf:
            yield start, "".join(buf)


def decoded_tokens(text):
    for tok in BASE64.findall(text):
        try:
            yield base64.b64decode(tok + "=" * (-len(tok) % 4), validate=True).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            pass


def scan(paths):
    logs = []
    secrets = set()
    for path in paths:
        for n, text in entries(path):
            is_setter = bool(STATEMENT.match(text)) and bool(SETTER.search(text))
            if is_setter:
                for rx in SECRET_ARG:
                    for m in rx.finditer(text):
                        lit = m.group(m.lastindex).replace("''", "'")
                        if len(lit) >= MIN_SECRET_LEN:
                            secrets.add(lit)
            logs.append((path, n, text, is_setter))

    leaks = []
    for path, n, text, is_setter in logs:
        if is_setter:
            continue
        why = None
        low = text.lower()
        if MARKER in low:
            why = "a test secret (marker %r)" % MARKER
        else:
            hit = next((s for s in secrets if s in text), None)
            if hit is not None:
                why = "the secret %r set by a logged statement" % hit
            elif any(MARKER in d.lower() for d in decoded_tokens(text)):
                why = "a base64-encoded test secret"
            elif not STATEMENT.match(text) and HEADERS.search(text):
                why = "a credential header name"
        if why:
            leaks.append((path, n, why, text))

    return logs, secrets, leaks


def main(paths):
    logs, secrets, leaks = scan(paths)
    for path, n, why, text in leaks:
        print("LEAK %s:%d: %s\n  %s" % (path, n, why, text.rstrip().replace("\n", "\n  ")))
    print("log scan: %d logs, %d entries, %d secrets seen set by statements; %d leaks"
          % (len(paths), len(logs), len(secrets), len(leaks)))
    return 1 if leaks else 0


SELF_TEST_LOG = """\
2026-01-01 00:00:00.000 UTC [1] LOG:  database system is ready to accept connections
2026-01-01 00:00:01.000 UTC [2] psql LOG:  statement: SELECT cohortsync.connect_clevertap('ct', 'ACC',
\t  'cs-secret-1', 'eu1');
2026-01-01 00:00:02.000 UTC [2] psql LOG:  statement: SELECT cohortsync.set_clevertap_passcode('ct', 'hunter2-no-marker');
2026-01-01 00:00:03.000 UTC [2] psql ERROR:  destination "ct" does not exist
2026-01-01 00:00:03.000 UTC [2] psql STATEMENT:  SELECT cohortsync.set_clevertap_passcode('ct', 'cs-secret-2');
2026-01-01 00:00:04.000 UTC [3] LOG:  cohortsync delivery: request to ct failed
\tDETAIL:  answer: you sent hunter2-no-marker
2026-01-01 00:00:05.000 UTC [4] LOG:  cohortsync http: header Authorization: Basic bWl4cGFuZWw6Y3Mtc2VjcmV0LTM=
2026-01-01 00:00:06.000 UTC [4] LOG:  cohortsync http: got bWl4cGFuZWw6Y3Mtc2VjcmV0LTM=
2026-01-01 00:00:07.000 UTC [3] DEBUG:  curl: > X-CleverTap-Passcode: (elided)
2026-01-01 00:00:08.000 UTC [2] psql LOG:  statement: SELECT 'you sent X-CleverTap-Passcode: [passcode]';
2026-01-01 00:00:09.000 UTC [2] psql LOG:  statement: SELECT 'cs-secret-typed-elsewhere';
"""
SELF_TEST_LEAKS = [6, 7, 9, 10, 11, 13]    # line numbers of the entries above that leak


def self_test():
    import os
    import tempfile
    fd, path = tempfile.mkstemp(suffix=".log")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(SELF_TEST_LOG)
        _, secrets, leaks = scan([path])
    finally:
        os.unlink(path)
    got = [n for _, n, _, _ in leaks]
    ok = got == SELF_TEST_LEAKS and secrets == {"cs-secret-1", "hunter2-no-marker"}
    print("log scan self-test: %s (leaks at lines %s, wanted %s; secrets %s)"
          % ("ok" if ok else "FAILED", got, SELF_TEST_LEAKS, sorted(secrets)))
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        sys.exit(self_test())
    sys.exit(main(sys.argv[1:]))
