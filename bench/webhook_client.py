#!/usr/bin/env python3
"""Load for bench/webhook.sh: a full sync posted over HTTP exactly as Mixpanel posts it,
while other clients post diffs of other cohorts and poll /healthz.

- The full sync: MEMBERS members in sequential 1000-member `members` pages of one
  session, Basic auth, one keep-alive connection; each page's answer time.
- Visibility: from the last page's answer until the swap is visible (the session's
  state is 'completed', or the cohort's member_count reaches MEMBERS; the first is what
  a background swap reports, the second what the synchronous swap leaves), polled with
  psql every POLL_MS.
- Meanwhile: --others clients each post 100-member add_members pages of a cohort of
  their own in a loop, and one client polls GET /healthz every --health-ms; each
  request's answer time is kept with its start time, so that the ones in flight during
  the swap (from the last page's request to the swap being visible) can be picked out.
- The listener's processes' memory: RssAnon sampled every 0.2 s (peak), and VmHWM at
  the end (which also counts the shared buffers a process touched).

Prints one Markdown table row; --header prints the header first. Standard library only.
"""
import argparse
import base64
import http.client
import json
import subprocess
import threading
import time

PAGE = 1000


def pct(values, p):
    if not values:
        return float('nan')
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(p / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


def ms(x):
    return '%.0f' % (x * 1000) if x == x else '-'


def psql(sql):
    return subprocess.run(['psql', '-X', '-qAt', '-c', sql], check=True,
                          capture_output=True, text=True).stdout.strip()


class Client:
    """One keep-alive connection; reconnects if the server closed it."""

    def __init__(self, port, auth):
        self.port = port
        self.headers = {'Authorization': 'Basic ' + base64.b64encode(auth.encode()).decode(),
                        'Content-Type': 'application/json'}
        self.conn = None

    def request(self, method, path, body=None):
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=600)
            try:
                self.conn.request(method, path, body=body, headers=self.headers)
                r = self.conn.getresponse()
                data = r.read()
                return r.status, data
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise


def page(action, cohort, session, ids, total=1, n=1):
    return json.dumps({
        'action': action,
        'parameters': {
            'mixpanel_project_id': 'bench',
            'mixpanel_cohort_id': cohort,
            'mixpanel_cohort_name': 'Bench ' + cohort,
            'mixpanel_cohort_description': 'webhook benchmark',
            'mixpanel_session_id': session,
            'page_info': {'total_pages': total, 'page_count': n},
            'members': [{'mixpanel_distinct_id': i, 'email': i + '@example.com',
                         'first_name': 'First', 'last_name': i, 'phone': '+15550100'}
                        for i in ids]}}).encode()


def listener_pids():
    out = psql("SELECT pid FROM pg_stat_activity WHERE backend_type IN "
               "('cohortsync http listener', 'cohortsync http acceptor')")
    return [int(p) for p in out.split()]


def status_kb(pid, field):
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--port', type=int, required=True)
    ap.add_argument('--auth', required=True)
    ap.add_argument('--members', type=int, default=100000)
    ap.add_argument('--cohort', default='full')
    ap.add_argument('--others', type=int, default=3)
    ap.add_argument('--health-ms', type=float, default=20)
    ap.add_argument('--poll-ms', type=float, default=20)
    ap.add_argument('--label', default='')
    ap.add_argument('--header', action='store_true')
    a = ap.parse_args()

    stop = threading.Event()
    health = []                     # (start, seconds)
    others = []
    errors = []
    peak_anon = [0]
    pids = listener_pids()

    def health_loop():
        c = Client(a.port, a.auth)
        while not stop.is_set():
            t0 = time.monotonic()
            st, _ = c.request('GET', '/healthz')
            health.append((t0, time.monotonic() - t0))
            if st != 200:
                errors.append('healthz %d' % st)
            time.sleep(a.health_ms / 1000.0)

    def other_loop(k):
        c = Client(a.port, a.auth)
        n = 0
        while not stop.is_set():
            ids = ['o%d-%d' % (k, n * 100 + i) for i in range(100)]
            t0 = time.monotonic()
            st, body = c.request('POST', '/mixpanel',
                                 page('add_members', 'other-%d-%s' % (k, a.cohort), 's', ids))
            others.append((t0, time.monotonic() - t0))
            if st != 200:
                errors.append('other %d %s' % (st, body[:100]))
            n += 1
            time.sleep(0.05)

    def sample_loop():
        while not stop.is_set():
            peak_anon[0] = max([peak_anon[0]] + [status_kb(p, 'RssAnon') for p in pids])
            time.sleep(0.2)

    threads = [threading.Thread(target=health_loop), threading.Thread(target=sample_loop)]
    threads += [threading.Thread(target=other_loop, args=(k,)) for k in range(a.others)]
    for t in threads:
        t.start()

    total = (a.members + PAGE - 1) // PAGE
    session = 'bench-%d' % int(time.time() * 1000)
    c = Client(a.port, a.auth)
    page_secs = []
    last_start = last_end = 0.0
    try:
        for n in range(1, total + 1):
            first = (n - 1) * PAGE
            ids = ['u%09d' % i for i in range(first, min(a.members, first + PAGE))]
            body = page('members', a.cohort, session, ids, total, n)
            t0 = time.monotonic()
            st, answer = c.request('POST', '/mixpanel', body)
            t1 = time.monotonic()
            page_secs.append(t1 - t0)
            if st != 200:
                errors.append('page %d: %d %s' % (n, st, answer[:200]))
            last_start, last_end = t0, t1

        # the swap is visible: session completed, or the cohort holds every member
        while True:
            r = psql("SELECT coalesce((SELECT state FROM cohortsync.sync_sessions WHERE cohort_id = '%s' "
                     "AND session_id = '%s' AND action = 'members'), '') || ' ' || "
                     "coalesce((SELECT member_count FROM cohortsync.cohorts WHERE project_id = 'bench' "
                     "AND cohort_id = '%s'), 0)" % (a.cohort, session, a.cohort))
            state, count = r.split(' ')
            if state == 'completed' or int(count) == a.members:
                break
            time.sleep(a.poll_ms / 1000.0)
        visible = time.monotonic()
    finally:
        stop.set()
        for t in threads:
            t.join()

    hwm = max([status_kb(p, 'VmHWM') for p in pids] + [0])
    during = lambda xs: [d for (t0, d) in xs if t0 + d >= last_start and t0 <= visible]
    h_sw, o_sw = during(health), during(others)
    h_all = [d for (_, d) in health]
    if a.header:
        print('| http_workers | pages | page p50 / p99 / max (ms) | last page (ms) '
              '| last answer -> swap visible (ms) | /healthz during swap p50 / p99 / max (ms), n '
              '| other cohorts during swap p50 / p99 / max (ms), n | /healthz whole run p99 / max (ms), n '
              '| listener peak RssAnon / VmHWM (MB) | errors |')
        print('|---|---|---|---|---|---|---|---|---|---|')
    print('| %s | %d | %s / %s / %s | %s | %s | %s / %s / %s, %d | %s / %s / %s, %d | %s / %s, %d | %d / %d | %d |' % (
        a.label, total, ms(pct(page_secs, 50)), ms(pct(page_secs, 99)), ms(max(page_secs)),
        ms(page_secs[-1]), ms(visible - last_end),
        ms(pct(h_sw, 50)), ms(pct(h_sw, 99)), ms(max(h_sw) if h_sw else float('nan')), len(h_sw),
        ms(pct(o_sw, 50)), ms(pct(o_sw, 99)), ms(max(o_sw) if o_sw else float('nan')), len(o_sw),
        ms(pct(h_all, 99)), ms(max(h_all)), len(h_all),
        peak_anon[0] // 1024, hwm // 1024, len(errors)))
    for e in errors[:5]:
        print('  error: %s' % e)


if __name__ == '__main__':
    main()
