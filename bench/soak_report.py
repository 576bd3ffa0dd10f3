"""The tables of bench/soak.sh, from the files it leaves in its work directory.

  kinds.txt       kind destination changes queued delivered failed pending (one line per kind)
  <kind>.log      the stand-in's --log lines, appended across its restarts
  <kind>-records-<n>.json   GET /_records of the stand-in before each stop and after the drain
  expected.tsv    one line per membership change: distinct_id, cohort name, added (t/f)
  windows.txt     label start end (epoch seconds) worker_cpu_ticks_start worker_cpu_ticks_end
  samples.txt     epoch rss_kb anon_kb fds shmem_kb of the delivery worker, every few seconds

Usage: python3 soak_report.py WORKDIR CLK_TCK
"""

import collections
import datetime
import glob
import json
import os
import sys

# The API path of each kind and the status of an accepted request.
API = {"clevertap": ("/1/upload", "200"), "mparticle": ("/v2/bulkevents", "202"),
       "braze": ("/users/track", "201")}


def expected_keys(kind, changes):
    """The records a kind should receive, as a multiset of (what, identity, cohort, added)."""
    keys = collections.Counter()
    for ident, cohort, added in changes:
        if kind == "clevertap":
            keys[("event", ident, cohort, added)] += 1
            keys[("profile", ident, cohort, added)] += 1
        elif kind == "mparticle":
            keys[("batch", ident, cohort, added)] += 1
        else:
            keys[("attributes", ident, cohort, added)] += 1
    return keys


def record_keys(kind, rec):
    """The (what, identity, cohort, added) of one record the stand-in stored."""
    if kind == "clevertap":
        if rec.get("type") == "event":
            d = rec.get("evtData") or {}
            yield ("event", rec.get("identity"), d.get("Partner Segment Name"), d.get("Action") == "Added")
        else:
            mc = (rec.get("profileData") or {}).get("Mixpanel Cohorts") or {}
            for op, names in mc.items():
                for n in names:
                    yield ("profile", rec.get("identity"), n, op == "$add")
    elif kind == "mparticle":
        ident = str(rec["mpid"]) if "mpid" in rec else (rec.get("user_identities") or {}).get("customer_id")
        for n, v in (rec.get("user_attributes") or {}).items():
            if isinstance(v, bool):
                yield ("batch", ident, n, v)
    else:
        if rec.get("_array") != "attributes":
            return
        mc = rec.get("Mixpanel Cohorts") or {}
        for op, names in mc.items():
            for n in names:
                yield ("attributes", rec.get("external_id"), n, op == "add")


def log_requests(path, kind):
    """(epoch second, status, records) of each API request in a stand-in's log."""
    api_path, _ = API[kind]
    out = []
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) < 5 or p[2] != api_path:
                continue
            t = datetime.datetime.strptime(p[0], "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=datetime.timezone.utc).timestamp()
            out.append((t, p[3], int(p[4].split("=")[1])))
    return out


def main():
    work, hz = sys.argv[1], int(sys.argv[2])
    kinds = [l.split() for l in open(os.path.join(work, "kinds.txt"))]
    changes = [tuple(l.rstrip("\n").split("\t")) for l in open(os.path.join(work, "expected.tsv"))]
    changes = [(i, c, a == "t") for i, c, a in changes]
    windows = [l.split() for l in open(os.path.join(work, "windows.txt"))]
    run = next(w for w in windows if w[0] == "run")
    faults = [w for w in windows if w[0] != "run"]

    print("Records, per kind (expected = what the outbox received, counted by a trigger on it;")
    print("accepted = sum of records= over the stand-in's log lines of accepted requests, across restarts;")
    print("per record = each change's records in the stand-in's stored copies, compared as multisets)")
    print()
    print("| kind | changes | records expected | delivered + failed + pending | accepted (log) "
          "| accepted − expected | per record: exactly once / duplicated / missing |")
    print("|---|---|---|---|---|---|---|")
    reqs = {}
    for kind, dest, nchanges, queued, delivered, failed, pending in kinds:
        reqs[kind] = log_requests(os.path.join(work, kind + ".log"), kind)
        ok_status = API[kind][1]
        accepted = sum(r for _, s, r in reqs[kind] if s == ok_status)
        got = collections.Counter()
        for dump in sorted(glob.glob(os.path.join(work, kind + "-records-*.json"))):
            with open(dump) as f:
                for rec in json.load(f)["records"]:
                    got.update(record_keys(kind, rec))
        exp = expected_keys(kind, changes)
        once = sum(min(n, got[k]) for k, n in exp.items())
        dup = sum(max(n - exp.get(k, 0), 0) for k, n in got.items())
        missing = sum(max(n - got.get(k, 0), 0) for k, n in exp.items())
        print(f"| {kind} | {int(nchanges):,} | {int(queued):,} | "
              f"{int(delivered):,} + {int(failed):,} + {int(pending):,} | {accepted:,} | "
              f"{accepted - int(queued):+,} | {once:,} / {dup:,} / {missing:,} |")

    print()
    print("Requests the stand-ins answered, per window (the stand-in's log, 1 s resolution;"
          " worker CPU from /proc, % of a core)")
    print()
    head = "| window | s | worker CPU | " + " | ".join(f"{k} requests (/s)" for k, *_ in kinds) + " |"
    print(head)
    print("|" + "---|" * (3 + len(kinds)))
    rows = [("whole run (ingest)", run)] + [(w[0], w) for w in faults]
    t_run0, t_run1 = float(run[1]), float(run[2])
    for label, w in rows:
        t0, t1 = float(w[1]), float(w[2])
        d = max(t1 - t0, 1e-9)
        cpu = 100.0 * (int(w[4]) - int(w[3])) / hz / d
        cells = []
        for kind, *_ in kinds:
            n = sum(1 for t, _, _ in reqs[kind] if int(t0) <= t < int(t1) + 1)
            cells.append(f"{n:,} ({n / d:.1f})")
        print(f"| {label} | {d:.0f} | {cpu:.0f}% | " + " | ".join(cells) + " |")

    samples = [list(map(float, l.split())) for l in open(os.path.join(work, "samples.txt"))]
    if samples:
        mid_t = (t_run0 + t_run1) / 2
        mid = min(samples, key=lambda s: abs(s[0] - mid_t))
        print()
        print(f"Delivery worker, from /proc ({len(samples)} samples)")
        print()
        print("| | RSS MB | private (RssAnon) MB | shared buffers touched (RssShmem) MB | open fds |")
        print("|---|---|---|---|---|")
        for label, s in (("start", samples[0]), ("middle", mid), ("end (drained)", samples[-1])):
            print(f"| {label} | {s[1] / 1024:.1f} | {s[2] / 1024:.1f} | {s[4] / 1024:.1f} | {int(s[3])} |")
        print(f"| max over the run | {max(s[1] for s in samples) / 1024:.1f} | "
              f"{max(s[2] for s in samples) / 1024:.1f} | {max(s[4] for s in samples) / 1024:.1f} | "
              f"{int(max(s[3] for s in samples))} |")


if __name__ == "__main__":
    main()
