#!/usr/bin/env python3
"""Corpus-driven, seeded fuzzer for cohortsync's ingest and its HTTP listener.

Python 3 standard library only. Three modes:

  fuzz.py sql  --seed S --cases N [--first K] [--batch B]
        Writes a psql script to stdout: `CALL public.fuzz_batch(first, ARRAY[...])`
        per B cases (see test/fuzz/fuzz_case.sql). Pages are valid UTF-8 text; they
        may be invalid JSON (the cast then fails, which is allowed).

  fuzz.py http --seed S --cases N --port P [--failures DIR]
        POSTs raw byte bodies (invalid UTF-8, NUL, bad escapes included) to
        /mixpanel over one keep-alive connection (the listener runs with
        cohortsync.http_require_auth = off). Every answer must be 200, 400, 415 or
        (only for a body over http_max_body) 413, in Mixpanel's documented shape.
        Prints a JSON summary; the project ids of rejected pages go to
        DIR/rejected_projects so the caller can check that nothing was written.

  fuzz.py proto --seed S --port P --auth USER:PASSWORD [--cases N]
        Malformed HTTP at the socket level: request lines, headers, Content-Length,
        chunked and truncated bodies, oversized headers, auth header shapes, a slow
        client, many idle connections. Every request must get an answer or a closed
        connection, no 5xx, and the listener must keep serving /healthz.

  fuzz.py case --seed S --case N [--mode sql|http]
        Prints one case (for replay): the SQL text, or the body bytes to stdout.

Every case is generated from random.Random("<seed>:<n>"), so case n is the same
whatever else runs: a failing case can be regenerated from its number.
"""

import argparse
import base64
import http.client
import json
import os
import random
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS_DIR = os.path.join(HERE, 'corpus')


# --- the JSON model: objects as lists of pairs (so keys can repeat), raw tokens --------

class Obj(list):
    """A JSON object as a list of [key, value] pairs; keys may repeat."""


class Raw(str):
    """JSON text emitted as is (numbers out of range, escapes, broken tokens)."""


def to_model(v):
    if isinstance(v, dict):
        return Obj([[k, to_model(x)] for k, x in v.items()])
    if isinstance(v, list):
        return [to_model(x) for x in v]
    return v


# the C string encoder behind json.dumps(ensure_ascii=False), without its overhead
dump_string = json.encoder.encode_basestring


def dump(v, out, ws):
    """Serialize the model; ws is the separator whitespace ('' or ' ' or odd)."""
    t = type(v)
    if t is str:
        out.append(dump_string(v))
    elif t is Raw:
        out.append(str(v))
    elif t is Obj:
        out.append('{')
        for i, (k, x) in enumerate(v):
            if i:
                out.append(',' + ws)
            out.append(k if isinstance(k, Raw) else dump_string(k))
            out.append(':' + ws)
            dump(x, out, ws)
        out.append('}')
    elif isinstance(v, list):
        out.append('[')
        for i, x in enumerate(v):
            if i:
                out.append(',' + ws)
            dump(x, out, ws)
        out.append(']')
    elif v is True:
        out.append('true')
    elif v is False:
        out.append('false')
    elif v is None:
        out.append('null')
    elif isinstance(v, str):
        out.append(dump_string(v))
    elif isinstance(v, int):
        out.append(int.__repr__(v))
    else:
        out.append(float.__repr__(v))


def serialize(v, ws=' '):
    out = []
    dump(v, out, ws)
    return ''.join(out)


def load_corpus():
    seeds = []
    for name in sorted(os.listdir(CORPUS_DIR)):
        if name.endswith('.json'):
            with open(os.path.join(CORPUS_DIR, name), encoding='utf-8') as f:
                seeds.append((name, json.load(f)))
    if not seeds:
        sys.exit('fuzz.py: no seed pages in ' + CORPUS_DIR)
    return seeds


def load_regressions():
    """Bodies that once broke something: test/fuzz/corpus/regress/*, replayed as is."""
    d = os.path.join(CORPUS_DIR, 'regress')
    out = []
    if os.path.isdir(d):
        for name in sorted(os.listdir(d)):
            if not name.endswith(('.json', '.bin')):
                continue
            with open(os.path.join(d, name), 'rb') as f:
                out.append((name, f.read()))
    return out


# --- values that senders get wrong --------------------------------------------------------

NUMBERS = ['0', '-0', '-1', '1', '2', '3', '1.5', '3.0', '2e0', '1E+2', '0.5e1', '1e400', '-1e400',
           '1e-400', '1e1000', '1e1001', '1e-1000', '2147483647', '2147483648', '4294967297',
           '1000000', '1000001', '9223372036854775808', '-9223372036854775809',
           '123456789012345678901234567890', '0.000000000000000000001', '1' * 1100,
           '-' + '9' * 200, '01', '1.', '.5', '+1', '0x10', 'NaN', 'Infinity', '-Infinity',
           '1e', '--1', '1e+', '١']

ESCAPED_STRINGS = ['""', '" "', '"0"', '"007"', '"+1"', '" 1"', '"1 "', '"-1"', '"1.0"', '"1e3"',
                   '"\\u0000"', '"a\\u0000b"', '"\\ud800"', '"\\udfff"', '"\\udc00\\ud800"',
                   '"\\ud83d\\ude00"', '"\\ud83d"', '"\\uFFFF"', '"\\uFEFF"', '"\\u00e9"',
                   '"\\x41"', '"\\a"', '"\\u12"', '"\\u12G4"', '"\\/\\b\\f\\n\\r\\t"',
                   '"\\"\\\\"', '"\\u0061ction"', '"\t"', '"line\nbreak"', '"\\', '"unterminated',
                   '"members"', '"add_members"', '"remove_members"', '"MEMBERS"',
                   '"members "', '"add_members\\u0000"', '"null"', '"true"', '"[]"', '"{}"']

WORDS = ['', ' ', 'x', 'A', 'members', 'add_members', 'remove_members', 'Add_Members',
         'é', 'ß', 'Ω', '日本語', '😀', '\u200b', '\u202e', '\ufeff', '\uffff', '\U0010ffff',
         'e\u0301', 'null', 'true', '0', '-1', "'; DROP TABLE cohortsync.members; --",
         '$1', '%s%n', '\\', '"', '\t', '\r\n', '\x7f', '\x01', '<script>', '../..', '%00']

KEYS = ['action', 'parameters', 'mixpanel_project_id', 'mixpanel_cohort_id',
        'mixpanel_cohort_name', 'mixpanel_cohort_description', 'mixpanel_session_id',
        'page_info', 'total_pages', 'page_count', 'members', 'mixpanel_distinct_id',
        'email', 'phone_number', 'first_name', 'last_name', '$CleverTap_user_id',
        'Action', 'action ', '', 'ACTION', 'members\u200b', 'paramètres']

ID_KEYS = ['mixpanel_project_id', 'mixpanel_cohort_id', 'mixpanel_session_id']
POOL = {
    'mixpanel_project_id': ['1001', 1001, 'p2'],
    'mixpanel_cohort_id': ['4242', '77', 77, 'empty', 'c9'],
    'mixpanel_session_id': ['s-full-1', 's-full-2', 's-diff-1', 's-diff-2', 900001, 's-x'],
}


def rand_text(r, n):
    """n characters of assorted text, valid UTF-8 when encoded."""
    alphabet = 'abcXYZ019 _-.@+éßΩ日本😀\u200b\ufeff"\\/\t\n'
    if n > 256:
        # long values: repeat a random chunk (fast) or fill with one character
        chunk = ''.join(r.choice(alphabet) for _ in range(64))
        return (chunk * (n // 64 + 1))[:n]
    return ''.join(r.choice(alphabet) for _ in range(n))


def rand_scalar(r):
    k = r.randrange(10)
    if k == 0:
        return None
    if k == 1:
        return r.choice([True, False])
    if k == 2:
        return Raw(r.choice(NUMBERS))
    if k == 3:
        return Raw(r.choice(ESCAPED_STRINGS))
    if k == 4:
        return r.randrange(-3, 2 ** 31 + 3)
    if k == 5:
        return r.random() * 10 ** r.randrange(-5, 30)
    if k == 6:
        return rand_text(r, r.choice([0, 1, 5, 50, 1023, 1024, 1025, 1100]))
    return r.choice(WORDS)


def rand_value(r, depth=0):
    k = r.randrange(8 if depth < 3 else 6)
    if k < 6:
        return rand_scalar(r)
    if k == 6:
        return [rand_value(r, depth + 1) for _ in range(r.randrange(4))]
    return Obj([[r.choice(KEYS), rand_value(r, depth + 1)] for _ in range(r.randrange(4))])


def nest(r, v, depth):
    """v inside depth arrays and objects, as text (the serializer recurses)."""
    opens = []
    closes = []
    for _ in range(depth):
        if r.random() < 0.5:
            opens.append('[')
            closes.append(']')
        else:
            opens.append('{"k":')
            closes.append('}')
    return Raw(''.join(opens) + serialize(v) + ''.join(reversed(closes)))


# --- walking the model ---------------------------------------------------------------------

def containers(v, path=()):
    """Every (container, index-or-pair, path) slot whose value can be replaced."""
    out = []
    if isinstance(v, Obj):
        for i, pair in enumerate(v):
            out.append((v, i, path + (pair[0],)))
            out.extend(containers(pair[1], path + (pair[0],)))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out.append((v, i, path + (i,)))
            out.extend(containers(x, path + (i,)))
    return out


def objects(v):
    out = []
    if isinstance(v, Obj):
        out.append(v)
        for _, x in v:
            out.extend(objects(x))
    elif isinstance(v, list):
        for x in v:
            out.extend(objects(x))
    return out


def get_slot(c, i):
    return c[i][1] if isinstance(c, Obj) else c[i]


def set_slot(c, i, value):
    if isinstance(c, Obj):
        c[i][1] = value
    else:
        c[i] = value


def find_key(obj, key):
    if isinstance(obj, Obj):
        for pair in obj:
            if pair[0] == key:
                return pair
    return None


def params_of(page):
    p = find_key(page, 'parameters')
    return p[1] if p and isinstance(p[1], Obj) else None


# --- mutations -----------------------------------------------------------------------------

def m_delete_key(r, page, big):
    objs = [o for o in objects(page) if o]
    if objs:
        o = r.choice(objs)
        del o[r.randrange(len(o))]


def m_replace(r, page, big):
    slots = containers(page)
    if slots:
        c, i, _ = r.choice(slots)
        set_slot(c, i, rand_value(r))


def m_duplicate_key(r, page, big):
    objs = [o for o in objects(page) if o]
    if objs:
        o = r.choice(objs)
        k = r.choice(o)[0]
        o.insert(r.randrange(len(o) + 1), [k, rand_value(r) if r.random() < 0.7 else get_slot(o, 0)])


def m_insert_key(r, page, big):
    objs = objects(page)
    if objs:
        o = r.choice(objs)
        o.insert(r.randrange(len(o) + 1), [r.choice(KEYS), rand_value(r)])


def m_rename_key(r, page, big):
    objs = [o for o in objects(page) if o]
    if objs:
        o = r.choice(objs)
        pair = r.choice(o)
        k = pair[0] if isinstance(pair[0], str) else 'k'
        pair[0] = r.choice([k.upper(), k + ' ', ' ' + k, k[:-1], k + k[-1:], '',
                            Raw(json.dumps(k, ensure_ascii=True).replace('a', '\\u0061', 1)),
                            Raw(r.choice(ESCAPED_STRINGS)), r.choice(KEYS)])


def m_deep(r, page, big):
    slots = containers(page)
    if not slots:
        return
    c, i, _ = r.choice(slots)
    depth = r.choice([2, 10, 64, 100, 500]) if not big else r.choice([1000, 5000, 10000, 20000])
    set_slot(c, i, nest(r, get_slot(c, i), depth))


def m_huge(r, page, big):
    slots = [(c, i) for c, i, _ in containers(page) if isinstance(get_slot(c, i), (str, int))]
    if slots:
        c, i = r.choice(slots)
        n = r.choice([1023, 1024, 1025, 1100, 2100, 3000]) if not big else \
            r.choice([100000, 100000, 1000000])
        if r.random() < 0.3:
            # multibyte characters across the 1024-byte limit
            set_slot(c, i, ('é' * n)[:n // 2 + r.randrange(3)])
        else:
            set_slot(c, i, rand_text(r, n))


def m_ids_from_pool(r, page, big):
    """Move the page to another cohort, session or project that other cases use too,
    so that pages interact: restarts, superseded sessions, completions."""
    p = params_of(page)
    if p is not None:
        key = r.choice(ID_KEYS)
        pair = find_key(p, key)
        value = r.choice(POOL[key])
        if pair:
            pair[1] = value
        else:
            p.append([key, value])


def noise(r, n):
    """n characters that do not compress: long ids must be long on disk too."""
    return '%0*x' % (n, r.getrandbits(4 * n))


def m_long_ids(r, page, big):
    """Ids near the 1024-byte limit, several at once, that do not compress: together
    they are index keys, which must fit a btree entry."""
    p = params_of(page)
    if p is None:
        return
    for key in r.sample(ID_KEYS, r.randrange(1, 4)):
        pair = find_key(p, key)
        value = noise(r, r.choice([700, 870, 900, 1000, 1023, 1024, 1025]))
        if pair:
            pair[1] = value
        else:
            p.append([key, value])
    ms = find_key(p, 'members')
    if ms and type(ms[1]) is list:
        for m in ms[1]:
            if isinstance(m, Obj) and r.random() < 0.5:
                f = r.choice(['mixpanel_distinct_id', 'mixpanel_distinct_id', '$CleverTap_user_id'])
                fp = find_key(m, f)
                # an identity property is not bounded by the page: 3000 bytes of it
                # must still be queued (keyed by its hash), never fail the page
                value = noise(r, r.choice([500, 1000, 1024] + ([3000] if f == '$CleverTap_user_id' else [])))
                if fp:
                    fp[1] = value
                else:
                    m.append([f, value])


def m_page_info(r, page, big):
    p = params_of(page)
    if p is None:
        return
    pi = find_key(p, 'page_info')
    k = r.randrange(6)
    if k == 0:
        if pi:
            p.remove(pi)
        return
    if pi is None or not isinstance(pi[1], Obj):
        pi = ['page_info', Obj([['total_pages', 1], ['page_count', 1]])]
        p.append(pi)
    info = pi[1]
    target = r.choice(['total_pages', 'page_count'])
    pair = find_key(info, target)
    if k == 1 and pair:
        info.remove(pair)
        return
    value = r.choice([Raw(r.choice(NUMBERS)), Raw(r.choice(ESCAPED_STRINGS)), r.randrange(0, 5),
                      str(r.randrange(0, 5)), rand_scalar(r)])
    if pair:
        pair[1] = value
    else:
        info.append([target, value])


def m_members(r, page, big):
    p = params_of(page)
    if p is None:
        return
    pair = find_key(p, 'members')
    if pair is None or type(pair[1]) is not list:
        pair = ['members', []]
        p.append(pair)
    ms = pair[1]
    k = r.randrange(6)
    if k == 0 and ms:
        # the same users over and over: duplicates, last one wins
        n = r.choice([2, 10, 50]) if not big else r.choice([1000, 3000])
        pair[1] = [r.choice(ms) for _ in range(n)]
    elif k == 1:
        n = r.choice([3, 20, 100]) if not big else r.choice([1000, 5000])
        pair[1] = [Obj([['mixpanel_distinct_id', 'm%d' % r.randrange(n * 2)],
                        ['email', 'x%d@example.com' % j]]) for j in range(n)]
    elif k == 2:
        ms.insert(r.randrange(len(ms) + 1), rand_value(r))
    elif k == 3 and ms:
        m = r.choice(ms)
        if isinstance(m, Obj):
            f = r.choice(['mixpanel_distinct_id', 'email', 'phone_number', 'first_name',
                          'last_name', '$CleverTap_user_id', 'extra'])
            fp = find_key(m, f)
            if fp:
                fp[1] = rand_value(r)
            else:
                m.append([f, rand_value(r)])
    elif k == 4:
        pair[1] = r.choice([[], Obj(), None, 'members', 7, [[]], [None], [Obj()]])
    else:
        r.shuffle(ms)


def m_root(r, page, big):
    return r.choice([[], [page], Obj(), None, 'page', 1, Obj([['action', 'members']]),
                     Obj([['parameters', params_of(page)]]), page])


MUTATIONS = [
    (m_delete_key, 10), (m_replace, 14), (m_duplicate_key, 8), (m_insert_key, 6),
    (m_rename_key, 5), (m_deep, 3), (m_huge, 4), (m_ids_from_pool, 12), (m_page_info, 12),
    (m_members, 12), (m_root, 1), (m_long_ids, 3),
]
MUT_FUNCS = [m for m, _ in MUTATIONS]
MUT_WEIGHTS = [w for _, w in MUTATIONS]


def text_mutate(r, s):
    """Damage the text itself: truncation, deletion, insertion, duplication."""
    if not s:
        return s
    k = r.randrange(5)
    i = r.randrange(len(s))
    if k == 0:
        return s[:i]
    if k == 1:
        return s[:i] + s[i + r.randrange(1, 20):]
    if k == 2:
        return s[:i] + r.choice('{}[]",:\\ 0e-.ntfé😀\u2028') + s[i:]
    if k == 3:
        j = min(len(s), i + r.randrange(1, 40))
        return s[:j] + s[i:j] + s[j:]
    return s[:i] + r.choice(['\\u0000', '\\ud800', '\\uDFFF', '\\', '\\u', '/*', '\ufeff']) + s[i:]


BAD_UTF8 = [b'\xff', b'\xfe', b'\xc0\xaf', b'\xe0\x80\xaf', b'\xed\xa0\x80', b'\xed\xbf\xbf',
            b'\xf4\x90\x80\x80', b'\xf8\x88\x80\x80\x80', b'\xe2\x82', b'\x80', b'\xc3',
            b'\x00', b'\xef\xbb\xbf']


def bytes_mutate(r, b):
    """Damage bytes: invalid UTF-8, NUL, flipped bits (the listener's raw input)."""
    if not b:
        return bytes(r.choice(BAD_UTF8))
    i = r.randrange(len(b))
    k = r.randrange(3)
    if k == 0:
        return b[:i] + r.choice(BAD_UTF8) + b[i:]
    if k == 1:
        return b[:i] + bytes([b[i] ^ (1 << r.randrange(8))]) + b[i + 1:]
    return r.choice(BAD_UTF8[-1:]) + b     # a BOM in front


def project_tag(n):
    """A project id that names case n, with a check digit pair so that a mutated
    tag can never pass for another case's."""
    return 'fz-%07d-%02d' % (n, (n * 7919) % 97)


def make_case(seed, n, seeds, mode):
    """Case n: (seed name, text or bytes, project tag or None)."""
    r = random.Random('%s:%d' % (seed, n))
    name, base = seeds[r.randrange(len(seeds))]
    page = to_model(base)
    tag = None
    if mode == 'http':
        p = params_of(page)
        tag = project_tag(n)
        find_key(p, 'mixpanel_project_id')[1] = tag
    # one case in 3000 is big (deep, huge, long): they cost the most
    big = r.random() < 0.0003
    nmut = 0 if r.random() < 0.05 else min(1 + int(r.expovariate(0.8)), 8)
    for _ in range(nmut):
        m = r.choices(MUT_FUNCS, MUT_WEIGHTS)[0]
        res = m(r, page, big)
        if m is m_root:
            page = res
    ws = r.choice([' ', ' ', '', '\n  ', '\t'])
    text = serialize(page, ws)
    if r.random() < 0.12:
        text = text_mutate(r, text)
    if mode == 'sql':
        # psql sends text; the server wants valid UTF-8 without NUL
        text = text.replace('\x00', '')
        return name, text, tag
    body = text.encode('utf-8', 'surrogatepass')
    if r.random() < 0.08:
        body = bytes_mutate(r, body)
    return name, body, tag


# --- sql mode --------------------------------------------------------------------------------

def sql_literal(s):
    return "'" + s.replace("'", "''") + "'"


def cmd_sql(a):
    """Batches of cases, one CALL each: the procedure commits after every case, so
    each case still runs in a transaction of its own, without a round trip each."""
    seeds = load_corpus()
    out = sys.stdout
    batch = []
    size = 0

    def flush(first):
        if batch:
            out.write('CALL public.fuzz_batch(%d, ARRAY[%s]::text[]);\n'
                      % (first, ',\n'.join(batch)))
            batch.clear()

    # regressions that are text go through SQL too (numbered -1, -2, ...)
    for i, (name, body) in enumerate(load_regressions()):
        try:
            text = body.decode('utf-8')
        except UnicodeDecodeError:
            continue
        if '\x00' not in text:
            batch.append(sql_literal(text))
            flush(-1 - i)       # one per CALL: numbered by the batch's first case
    first = a.first
    for n in range(a.first, a.first + a.cases):
        _, text, _ = make_case(a.seed, n, seeds, 'sql')
        batch.append(sql_literal(text))
        size += len(text)
        if len(batch) >= a.batch or size > (2 << 20):
            flush(first)
            first = n + 1
            size = 0
    flush(first)
    out.flush()


# --- http body mode --------------------------------------------------------------------------

def check_answer(status, data, body_len, max_body):
    """None if the answer is one of those allowed, else what is wrong."""
    try:
        doc = json.loads(data)
    except ValueError:
        return 'answer is not JSON: %r' % data[:200]
    if status == 200:
        if not (isinstance(doc, dict) and set(doc) == {'action', 'status'}
                and doc['status'] == 'success' and isinstance(doc['action'], str)):
            return 'bad success body: %r' % data[:300]
        return None
    if status in (400, 415) or (status == 413 and body_len > max_body):
        if not (isinstance(doc, dict) and doc.get('status') == 'failure' and 'action' in doc
                and isinstance(doc.get('error'), dict)
                and doc['error'].get('code') == status
                and isinstance(doc['error'].get('message'), str) and doc['error']['message']):
            return 'bad failure body: %r' % data[:300]
        return None
    return 'status %d: %r' % (status, data[:300])


def cmd_http(a):
    seeds = load_corpus()
    fail_dir = a.failures
    os.makedirs(fail_dir, exist_ok=True)
    counts = {'tried': 0, 'accepted': 0, 'rejected': 0, 'not_json': 0, 'too_large': 0,
              'regressions': 0}
    failures = []
    rejected_tags = []
    accepted_tags = []
    conn = None
    t0 = time.time()

    def post(body):
        nonlocal conn
        for attempt in (1, 2):
            if conn is None:
                conn = http.client.HTTPConnection('127.0.0.1', a.port, timeout=a.timeout)
            try:
                conn.request('POST', '/mixpanel', body=body,
                             headers={'Content-Type': 'application/json'})
                resp = conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    conn.close()
                    conn = None
                return resp.status, data
            except (http.client.HTTPException, OSError) as e:
                conn.close()
                conn = None
                # a keep-alive connection the server closed while idle: one retry
                if attempt == 2 or not isinstance(e, (http.client.RemoteDisconnected,
                                                      BrokenPipeError, ConnectionResetError)):
                    return None, repr(e).encode()
        return None, b'unreachable'

    def run_one(label, body, tag):
        status, data = post(body)
        counts['tried'] += 1
        err = 'no answer: %s' % data.decode('utf-8', 'replace') if status is None else \
            check_answer(status, data, len(body), a.max_body)
        if err is not None:
            path = os.path.join(fail_dir, 'http-%s.bin' % label)
            with open(path, 'wb') as f:
                f.write(body)
            failures.append({'case': label, 'error': err, 'saved': path,
                             'body_head': body[:300].decode('utf-8', 'replace')})
            return
        if status == 200:
            counts['accepted'] += 1
            if tag:
                accepted_tags.append(tag)
        else:
            counts[{400: 'rejected', 415: 'not_json', 413: 'too_large'}[status]] += 1
            if tag:
                rejected_tags.append(tag)

    for name, body in load_regressions():
        counts['regressions'] += 1
        run_one('regress-' + name, body, None)
    for n in range(a.first, a.first + a.cases):
        _, body, tag = make_case(a.seed, n, seeds, 'http')
        run_one(str(n), body, tag if tag.encode() in body else None)
        if len(failures) >= 20:
            break
    counts['seconds'] = round(time.time() - t0, 1)
    with open(os.path.join(fail_dir, 'rejected_projects'), 'w') as f:
        f.write('\n'.join(rejected_tags) + '\n')
    with open(os.path.join(fail_dir, 'accepted_projects'), 'w') as f:
        f.write('\n'.join(accepted_tags) + '\n')
    print(json.dumps({'counts': counts, 'failures': failures}))
    return 1 if failures else 0


# --- proto mode: malformed HTTP at the socket level ------------------------------------------

def recv_answer(sock, timeout):
    """Read until the server closes or one complete response is in.
    Returns (status or None, 'answered' | 'closed' | 'timeout', raw)."""
    sock.settimeout(timeout)
    buf = b''
    deadline = time.time() + timeout
    while True:
        head_end = buf.find(b'\r\n\r\n')
        if head_end >= 0:
            head = buf[:head_end].decode('latin-1')
            lines = head.split('\r\n')
            parts = lines[0].split(' ')
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
            clen = None
            for line in lines[1:]:
                k, _, v = line.partition(':')
                if k.strip().lower() == 'content-length':
                    clen = int(v.strip())
            if clen is not None and len(buf) - head_end - 4 >= clen:
                return status, 'answered', buf
        remaining = deadline - time.time()
        if remaining <= 0:
            return None, 'timeout', buf
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return None, 'timeout', buf
        except (ConnectionResetError, BrokenPipeError):
            chunk = b''
        if not chunk:
            if buf.startswith(b'HTTP/'):
                parts = buf.split(b' ', 2)
                st = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
                return st, 'answered', buf
            return None, 'closed', buf
        buf += chunk


def send_raw(port, data, half_close=True, timeout=10.0, slow=None):
    """Send data on a new connection; half-close so the server sees the end."""
    s = socket.create_connection(('127.0.0.1', port), timeout=timeout)
    try:
        try:
            if slow:
                for i in range(len(data)):
                    s.sendall(data[i:i + 1])
                    time.sleep(slow)
            else:
                s.sendall(data)
            if half_close:
                # Not in the same segment as the data: libmicrohttpd 0.9.75 (epoll)
                # misses an end of stream that arrives with the last bytes of an
                # incomplete request, and only drops such a connection at its idle
                # timeout (60 s). The timeout below allows for that.
                time.sleep(0.05)
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass        # the server may answer (413, 431) and close before all is sent
        return recv_answer(s, timeout)
    finally:
        s.close()


def healthz(port):
    st, how, raw = send_raw(port, b'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
                            half_close=False, timeout=10.0)
    return st


def request(method=b'POST', path=b'/mixpanel', version=b'HTTP/1.1', headers=None, body=b'',
            content_length=True):
    lines = [method + b' ' + path + b' ' + version]
    hs = list(headers or [])
    if content_length and body is not None:
        hs.append(b'Content-Length: ' + str(len(body)).encode())
    lines.extend(hs)
    return b'\r\n'.join(lines) + b'\r\n\r\n' + (body or b'')


def proto_cases(a):
    """(name, bytes, half_close, ok_statuses or None for any non-5xx) of every case."""
    user, _, password = a.auth.partition(':')
    good = b'Basic ' + base64.b64encode(a.auth.encode())
    auth = b'Authorization: ' + good
    host = b'Host: 127.0.0.1'
    ctype = b'Content-Type: application/json'
    # a valid page that must never be stored (every request carrying it is malformed)
    bad_page = json.dumps({'action': 'add_members', 'parameters': {
        'mixpanel_project_id': 'proto-bad', 'mixpanel_cohort_id': 'c', 'mixpanel_session_id': 's',
        'members': [{'mixpanel_distinct_id': 'never'}]}}).encode()
    # a valid page stored by requests that are odd but valid HTTP (project proto-ok)
    ok_page = json.dumps({'action': 'add_members', 'parameters': {
        'mixpanel_project_id': 'proto-ok', 'mixpanel_cohort_id': 'c', 'mixpanel_session_id': 's',
        'members': [{'mixpanel_distinct_id': 'fine'}]}}).encode()
    invalid_page = b'{"action": "add_members", "parameters": {"mixpanel_project_id": "proto-bad"}}'
    cases = []

    def add(name, data, half=True, ok=None):
        cases.append((name, data, half, ok))

    # request lines
    add('garbage', b'\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03' + os.urandom(64))
    add('empty lines', b'\r\n\r\n\r\n')
    add('no path', b'POST\r\n\r\n')
    add('http/0.9', b'POST /mixpanel\r\n\r\n')
    add('http/9.9', request(version=b'HTTP/9.9', headers=[host, auth, ctype], body=bad_page),
        ok={505, 400})
    # libmicrohttpd 0.9.75 takes these (a Host-less HTTP/1.1 request; a URL or header
    # cut at a NUL, %00 included): harmless, credentials are still required
    add('http/1.1 without Host', request(headers=[auth, ctype], body=ok_page), ok={200, 400})
    add('lowercase method', request(method=b'post', headers=[host, auth, ctype], body=bad_page),
        ok={404, 405, 400, 501})
    add('unknown method', request(method=b'BREW', headers=[host, auth], body=bad_page))
    add('long method', request(method=b'P' * 5000, headers=[host, auth], body=bad_page))
    add('long path', request(path=b'/mixpanel?' + b'a' * 100000, headers=[host, auth, ctype],
                             body=bad_page))
    add('path with NUL', request(path=b'/mixpanel\x00x', headers=[host, auth, ctype], body=ok_page),
        ok={200, 400, 404})
    add('path %00', request(path=b'/mixpanel%00', headers=[host, auth, ctype], body=ok_page),
        ok={200, 400, 404})
    add('path not UTF-8', request(path=b'/mix\xffpanel', headers=[host, auth, ctype], body=bad_page))
    add('absolute URI', request(path=b'http://127.0.0.1/mixpanel', headers=[host, auth, ctype],
                                body=invalid_page), ok={400, 404})
    add('path *', request(method=b'OPTIONS', path=b'*', headers=[host]))
    add('spaces in request line', b'POST  /mixpanel  HTTP/1.1\r\n' + host + b'\r\n' + auth +
        b'\r\nContent-Length: %d\r\n\r\n' % len(bad_page) + bad_page)
    add('LF only', request(headers=[host, auth, ctype], body=invalid_page).replace(b'\r\n', b'\n'),
        ok={400, 200})
    # headers
    add('header without colon', request(headers=[host, auth, b'NoColonHere', ctype], body=bad_page))
    add('header empty name', request(headers=[host, auth, b': value', ctype], body=bad_page))
    add('header with NUL', request(headers=[host, auth, b'X-A: a\x00b', ctype], body=ok_page),
        ok={200, 400})
    add('header not UTF-8', request(headers=[host, auth, b'X-A: \xff\xfe', ctype],
                                    body=invalid_page), ok={400})
    add('obsolete line folding', request(headers=[host, auth, b'X-A: a\r\n  folded', ctype],
                                         body=invalid_page), ok={400})
    add('oversized header', request(headers=[host, auth, b'X-Big: ' + b'x' * 70000, ctype],
                                    body=bad_page))
    add('many headers', request(headers=[host, auth] + [b'X-%d: v' % i for i in range(3000)],
                                body=bad_page))
    add('headers never end', b'POST /mixpanel HTTP/1.1\r\n' + host + b'\r\nX-A: b')
    add('space before colon', request(headers=[host, b'Authorization : ' + good, ctype],
                                      body=bad_page), ok={400, 401})
    # Content-Length
    for name, cl in [('negative', b'-1'), ('not a number', b'abc'), ('huge', b'9' * 30),
                     ('hex', b'0x10'), ('plus', b'+%d' % len(bad_page)), ('empty', b''),
                     ('spaces', b' %d ' % len(bad_page)), ('overflow 2^64', b'18446744073709551616')]:
        add('Content-Length ' + name, request(headers=[host, auth, ctype, b'Content-Length: ' + cl],
                                              body=bad_page, content_length=False),
            ok=None if name != 'spaces' else {400, 200, 413})
    add('Content-Length twice, different', request(
        headers=[host, auth, ctype, b'Content-Length: 5', b'Content-Length: %d' % len(bad_page)],
        body=bad_page, content_length=False))
    add('Content-Length twice, same', request(
        headers=[host, auth, ctype, b'Content-Length: %d' % len(invalid_page)] * 2,
        body=invalid_page, content_length=False), ok={400})
    add('Content-Length too short', request(
        headers=[host, auth, ctype, b'Content-Length: 20'], body=bad_page, content_length=False))
    add('Content-Length too long (truncated body)', request(
        headers=[host, auth, ctype, b'Content-Length: %d' % (len(bad_page) + 100)],
        body=bad_page, content_length=False))
    add('truncated body, half', request(headers=[host, auth, ctype], body=bad_page)[:-len(bad_page) // 2])
    add('declared 1 GB', request(headers=[host, auth, ctype, b'Content-Length: 1073741824'],
                                 body=b'{', content_length=False), ok={413})
    add('body over http_max_body', request(headers=[host, auth, ctype],
                                           body=b'{"pad": "' + b'x' * (5 << 20) + b'"}'), ok={413})
    # chunked bodies
    def chunked(body, sizes=None, trailer=b''):
        out = b''
        i = 0
        for sz in (sizes or [7, 1, 50, 1000]):
            part = body[i:i + sz]
            if not part:
                break
            out += b'%x\r\n' % len(part) + part + b'\r\n'
            i += sz
        if i < len(body):
            out += b'%x\r\n' % (len(body) - i) + body[i:] + b'\r\n'
        return out + b'0\r\n' + trailer + b'\r\n'
    te = b'Transfer-Encoding: chunked'
    add('chunked, valid, odd page', request(headers=[host, auth, ctype, te], body=chunked(invalid_page),
                                            content_length=False), ok={400})
    add('chunked, valid page', request(headers=[host, auth, ctype, te], body=chunked(ok_page),
                                       content_length=False), ok={200})
    add('chunked with extension and trailer', request(
        headers=[host, auth, ctype, te],
        body=chunked(invalid_page).replace(b'\r\n', b';ext=1\r\n', 1)[:-2] + b'X-T: 1\r\n\r\n',
        content_length=False), ok={400})
    add('chunked, bad size', request(headers=[host, auth, ctype, te],
                                     body=b'zz\r\n' + bad_page + b'\r\n0\r\n\r\n', content_length=False))
    add('chunked, size too large', request(headers=[host, auth, ctype, te],
                                           body=b'ffffffffffffffffff\r\n' + bad_page, content_length=False))
    add('chunked, truncated', request(headers=[host, auth, ctype, te],
                                      body=chunked(bad_page)[:-10], content_length=False))
    add('chunked, no last chunk', request(headers=[host, auth, ctype, te],
                                          body=chunked(bad_page)[:-5], content_length=False))
    add('chunked and Content-Length', request(
        headers=[host, auth, ctype, te, b'Content-Length: 3'], body=chunked(invalid_page),
        content_length=False), ok={400})
    add('chunked, over http_max_body', request(
        headers=[host, auth, ctype, te], body=chunked(b'x' * (5 << 20), [1 << 20] * 5),
        content_length=False), ok={413})
    add('Transfer-Encoding unknown', request(headers=[host, auth, ctype, b'Transfer-Encoding: gzip'],
                                             body=bad_page))
    add('Expect: 100-continue', request(headers=[host, auth, ctype, b'Expect: 100-continue'],
                                        body=invalid_page), ok={400, 100})
    # authentication header shapes
    shapes = [b'Basic', b'Basic ', b'Basic !!!!', b'Basic ' + base64.b64encode(b'nocolon'),
              b'Basic ' + base64.b64encode(b':'), b'Basic ' + base64.b64encode(b':' + password.encode()),
              b'Basic ' + base64.b64encode(user.encode() + b':'), b'Bearer abc', b'basic ' + good[6:],
              b'Basic  ' + good[6:], b'Basic ' + good[6:-2],
              b'Basic ' + base64.b64encode(b'\xff\xfe:\x00\x01'),
              b'Basic ' + base64.b64encode(user.encode() + b'\x00:' + password.encode()),
              b'Basic ' + base64.b64encode(user.upper().encode() + b':' + password.encode()),
              b'Basic ' + base64.b64encode(b'u' * 6000 + b':' + b'p' * 6000),
              b'Digest username="x"', b'', b'\xff\xff']
    for i, sh in enumerate(shapes):
        add('auth shape %d' % i, request(headers=[host, b'Authorization: ' + sh, ctype], body=bad_page),
            ok={401, 400, 431, 413})
    # libmicrohttpd 0.9.75 hands the password over as a C string: what follows a NUL
    # is ignored, so this one authenticates (it takes the right password anyway)
    add('auth, password + NUL + more', request(
        headers=[host, b'Authorization: Basic ' + base64.b64encode(
            user.encode() + b':' + password.encode() + b'\x00x'), ctype], body=ok_page), ok={200, 401})
    # and ignores padding after the end: right credentials, so 200
    add('auth, extra base64 padding', request(
        headers=[host, b'Authorization: Basic ' + good[6:] + b'====', ctype], body=ok_page),
        ok={200, 401})
    add('auth twice, bad then good', request(headers=[host, b'Authorization: Bearer x', auth, ctype],
                                             body=bad_page), ok={401, 400})
    # bodies
    add('body not UTF-8', request(headers=[host, auth, ctype], body=b'{"action": "\xff"}'), ok={415})
    add('body with NUL', request(headers=[host, auth, ctype], body=b'{"action": "a\x00"}'), ok={415})
    add('empty body', request(headers=[host, auth, ctype], body=b''), ok={415})
    add('no Content-Length, no body', request(headers=[host, auth, ctype], body=None), ok={415, 411})
    add('GET with body on healthz', request(method=b'GET', path=b'/healthz', headers=[host],
                                            body=bad_page), ok={200})
    add('pipelined', request(headers=[host, auth, ctype], body=invalid_page) +
        request(method=b'GET', path=b'/healthz', headers=[host]), ok={400})
    # seeded random damage to a request
    r = random.Random('%s:proto' % a.seed)
    # an invalid page: a damaged request that still parses must not store anything
    base_req = request(headers=[host, auth, ctype], body=invalid_page)
    for i in range(a.cases):
        b = bytearray(base_req)
        for _ in range(r.randrange(1, 6)):
            if not b:
                break
            k = r.randrange(5)
            j = r.randrange(len(b))
            if k == 0:
                b[j] = r.randrange(256)
            elif k == 1:
                del b[j:j + r.randrange(1, 30)]
            elif k == 2:
                b[j:j] = r.choice([b'\r\n', b'\n', b':', b' ', b'\x00', b'\xff', b'\r\n\r\n',
                                   b'Content-Length: 1\r\n', b'Transfer-Encoding: chunked\r\n'])
            elif k == 3:
                b = b[:j]
            else:
                b[j:j] = bytes(b[j:j + r.randrange(1, 200)])
        add('random %d' % i, bytes(b))
    return cases


def cmd_proto(a):
    counts = {'tried': 0, 'answered': 0, 'closed': 0, 'by_status': {}}
    slowest = []
    failures = []
    os.makedirs(a.failures, exist_ok=True)
    t0 = time.time()

    def fail(name, data, err):
        path = os.path.join(a.failures, 'proto-%s.bin' % ''.join(c if c.isalnum() else '_' for c in name))
        with open(path, 'wb') as f:
            f.write(data)
        failures.append({'case': name, 'error': err, 'saved': path})

    for name, data, half, ok in proto_cases(a):
        counts['tried'] += 1
        t1 = time.time()
        try:
            status, how, raw = send_raw(a.port, data, half_close=half, timeout=a.timeout)
        except OSError as e:
            fail(name, data, 'could not connect: %r' % e)
            continue
        if how == 'timeout':
            fail(name, data, 'neither an answer nor a closed connection in %.0f s' % a.timeout)
        elif how == 'closed':
            counts['closed'] += 1
        else:
            counts['answered'] += 1
            counts['by_status'][str(status)] = counts['by_status'].get(str(status), 0) + 1
            if status == 200:
                counts.setdefault('answered_200', []).append(name)
            # 505 (HTTP version) and 501 (method, transfer coding) are libmicrohttpd's
            # own answers to what it does not implement; any other 5xx is a failure
            if status is None or status < 100 or (status >= 500 and status not in (501, 505)) \
                    or (ok is not None and status not in ok):
                fail(name, data, 'answered %s: %r' % (status, raw[:300]))
        slowest.append((round(time.time() - t1, 2), name))
        if healthz(a.port) != 200:
            fail(name, data, 'the listener does not serve GET /healthz after this request')
            break

    # a slow client, one byte every 100 ms, while others are served
    slow_req = request(headers=[b'Host: x', b'Authorization: Basic ' + base64.b64encode(a.auth.encode())],
                       body=b'{}')
    result = {}

    def slow():
        result['slow'] = send_raw(a.port, slow_req, half_close=False, timeout=len(slow_req) * 0.1 + 15,
                                  slow=0.1)
    th = threading.Thread(target=slow)
    th.start()
    served = 0
    while th.is_alive():
        served += healthz(a.port) == 200
        time.sleep(0.5)
    th.join()
    counts['tried'] += 1
    st, how, raw = result['slow']
    if st != 400:
        fail('slow client', slow_req, 'slow client: %s %s %r' % (st, how, raw[:200]))
    if served < 5:
        fail('slow client', slow_req, 'only %d health checks served during the slow client' % served)
    counts['served_during_slow_client'] = served

    # more idle connections than the listener accepts; it must serve again once they go
    idle = []
    for i in range(140):
        try:
            s = socket.create_connection(('127.0.0.1', a.port), timeout=5)
            s.sendall(b'POST /mixpanel HTTP/1.1\r\nHost: x\r\n')
            idle.append(s)
        except OSError:
            break
    counts['idle_connections_opened'] = len(idle)
    for s in idle:
        s.close()
    ok = False
    for _ in range(50):
        if healthz(a.port) == 200:
            ok = True
            break
        time.sleep(0.2)
    if not ok:
        fail('idle connections', b'', 'the listener does not serve again after 140 idle connections closed')

    counts['seconds'] = round(time.time() - t0, 1)
    counts['slowest'] = sorted(slowest, reverse=True)[:3]
    print(json.dumps({'counts': counts, 'failures': failures}))
    return 1 if failures else 0


def cmd_case(a):
    seeds = load_corpus()
    name, body, tag = make_case(a.seed, a.case, seeds, a.mode)
    sys.stderr.write('case %d from seed page %s\n' % (a.case, name))
    if isinstance(body, str):
        body = body.encode('utf-8')
    sys.stdout.buffer.write(body)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='cmd', required=True)
    for name in ('sql', 'http', 'proto', 'case'):
        p = sub.add_parser(name)
        p.add_argument('--seed', default='cohortsync')
        p.add_argument('--cases', type=int, default=1000)
        p.add_argument('--first', type=int, default=0)
        p.add_argument('--port', type=int)
        p.add_argument('--auth', default='mixpanel:secret')
        p.add_argument('--timeout', type=float, default=30.0)
        p.add_argument('--max-body', type=int, default=4 << 20)
        p.add_argument('--failures', default='fuzz-failures')
        p.add_argument('--case', type=int)
        p.add_argument('--mode', default='http')
        p.add_argument('--batch', type=int, default=200)
    a = ap.parse_args()
    return {'sql': cmd_sql, 'http': cmd_http, 'proto': cmd_proto, 'case': cmd_case}[a.cmd](a) or 0


if __name__ == '__main__':
    sys.exit(main())
