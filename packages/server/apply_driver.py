# Copyright 2026 the Valise authors. Apache-2.0 license.
"""The Valise Apply driver: a stdlib-only Python program (3.8+) that the server runs as an
ordinary launcher run (``code``, streamed stdin, flow-controlled stdout), so it gets the
session's interpreter, working directory, ``sys.path``, environment, sandbox and limits. It
loads the user's function, then reads batches from stdin and writes the function's output to
stdout, one call per batch. See ``docs/apply.md`` for the frames and the columnar encoding.

Frames both ways: ``u32 length (of what follows, big-endian) | u8 type | payload``.
"""
import os, sys, io, json, struct, array, traceback, importlib, importlib.util, datetime, types
import itertools, collections

# Defined once, on the TypeScript side (apply_driver.ts), and injected by the server's stub.
VALISE = globals()['VALISE']
_F = VALISE['frames']
START, DATA, END = _F['START'], _F['DATA'], _F['END']
HELLO, OUT, ERROR, DONE = _F['HELLO'], _F['OUT'], _F['ERROR'], _F['DONE']
MARK = _F['MARK']
HDR = struct.Struct('>IB')
DRIVER_FILE = VALISE['file']

# The frames own the real stdin and stdout; the function's print() goes to stderr and its
# reads of stdin see an empty file.
IN_FD = os.dup(0)
OUT_FD = os.dup(1)
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
os.dup2(2, 1)
IN = io.open(IN_FD, 'rb', buffering=1 << 16)
BIG = sys.byteorder == 'big'


class ApplyFailure(Exception):
    def __init__(self, error_class, message, tb=''):
        Exception.__init__(self, message)
        self.error_class = error_class
        self.message = message
        self.tb = tb


class OutputTypeError(Exception):
    pass


def send(kind, parts=()):
    views = [memoryview(p).cast('B') for p in parts]
    views = [v for v in views if len(v)]
    total = sum(len(v) for v in views)
    bufs = [memoryview(HDR.pack(total + 1, kind))] + views
    while bufs:
        n = os.writev(OUT_FD, bufs[:512])
        while n:
            if n >= len(bufs[0]):
                n -= len(bufs[0])
                bufs.pop(0)
            else:
                bufs[0] = bufs[0][n:]
                n = 0


def send_json(kind, obj):
    send(kind, [json.dumps(obj).encode('utf-8')])


def read_exact(n):
    data = IN.read(n)
    if data is None or len(data) < n:
        raise EOFError('the server closed the input')
    return data


def recv():
    n, kind = HDR.unpack(read_exact(5))
    return kind, read_exact(n - 1) if n > 1 else b''


# ---- columnar encoding (docs/apply.md) ----

CODES = {'int8': 'b', 'int16': 'h', 'int32': 'i', 'int64': 'q', 'uint8': 'B', 'uint16': 'H',
         'uint32': 'I', 'uint64': 'Q', 'float32': 'f', 'float64': 'd', 'date32': 'i',
         'date64': 'q', 'timestamp': 'q', 'duration': 'q', 'interval_ym': 'i'}
if array.array('i').itemsize != 4:
    CODES['int32'] = CODES['date32'] = CODES['interval_ym'] = (
        'l' if array.array('l').itemsize == 4 else 'i')
    CODES['uint32'] = 'L' if array.array('L').itemsize == 4 else 'I'
INTS = ('int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64')
FLOATS = ('float32', 'float64')
PARAMS = ('unit', 'tz', 'precision', 'scale', 'bits', 'width')
UTC = datetime.timezone.utc
EPOCH = datetime.datetime(1970, 1, 1)
EPOCH_ORD = 719163  # date(1970, 1, 1).toordinal()
DAY_MS = 86400000
PER_US = {'s': 1000000, 'ms': 1000, 'us': 1}
MonthDayNano = collections.namedtuple('MonthDayNano', 'months days nanoseconds')
DayTime = collections.namedtuple('DayTime', 'days milliseconds')
_tzs = {}
_dec_ctx = [None]


def dec_ctx():
    # Exact for decimal256 (76 digits) whatever the function did to the default context.
    if _dec_ctx[0] is None:
        import decimal
        _dec_ctx[0] = decimal.Context(prec=100, Emax=999999, Emin=-999999)
    return _dec_ctx[0]


def tz_of(name):
    tz = _tzs.get(name)
    if tz is not None:
        return tz
    if name in ('UTC', 'Z', 'utc', 'Etc/UTC'):
        tz = UTC
    elif len(name) == 6 and name[0] in '+-' and name[3] == ':':
        sign = -1 if name[0] == '-' else 1
        tz = datetime.timezone(sign * datetime.timedelta(hours=int(name[1:3]),
                                                         minutes=int(name[4:6])))
    else:
        try:
            import zoneinfo
            tz = zoneinfo.ZoneInfo(name)
        except Exception:
            raise ApplyFailure('APPLY_UNSUPPORTED_TYPE',
                               'Cannot use time zone %r in this interpreter' % name)
    _tzs[name] = tz
    return tz


def tz_name(v):
    tz = v.tzinfo
    key = getattr(tz, 'key', None) or getattr(tz, 'zone', None)
    if key:
        return str(key)
    off = v.utcoffset()
    if not off:
        return 'UTC'
    mins = int(off.total_seconds() // 60)
    sign = '-' if mins < 0 else '+'
    mins = abs(mins)
    return '%s%02d:%02d' % (sign, mins // 60, mins % 60)


def numbers(raw, code):
    if BIG:
        a = array.array(code)
        a.frombytes(raw)
        a.byteswap()
        return a.tolist()
    return raw.cast(code).tolist()


def code_of(c):
    if c['type'] == 'time':
        return CODES['int32'] if c['unit'] in ('s', 'ms') else 'q'
    return CODES.get(c['type'])


def to_us(v, unit):
    return v // 1000 if unit == 'ns' else v * PER_US[unit]


def decode_column(body, c, rows, tuples=False):
    """The values of one column (of ``rows`` values) as Python objects; a struct's rows are
    tuples when ``tuples`` (a map's entries)."""
    t = c['type']
    bufs = c['buffers']

    def buf(i):
        off, n = bufs[i]
        return body[off:off + n]

    if t == 'null':
        return [None] * rows
    validity = buf(0) if c['nulls'] else None
    if 'dictionary' in c:
        dv = []
        for d in c['dictionary']:
            dv.extend(decode_column(body, d, d['length']))
        idx = numbers(buf(1), CODES[c['index']])
        if validity is None:
            return [dv[i] for i in idx]
        return [dv[i] if ok else None for i, ok in zip(idx, validity)]
    code = code_of(c)
    if code is not None:
        vals = numbers(buf(1), code)
    elif t == 'bool':
        vals = list(map(bool, buf(1)))
    elif t in ('utf8', 'binary'):
        offs = numbers(buf(1), CODES['int32'])
        data = bytes(buf(2))
        pairs = zip(offs, itertools.islice(offs, 1, None))
        if t == 'binary':
            vals = [data[a:b] for a, b in pairs]
        elif data.isascii():
            s = data.decode('ascii')
            vals = [s[a:b] for a, b in pairs]
        else:
            vals = [data[a:b].decode('utf-8') for a, b in pairs]
    elif t in ('fixed_binary', 'decimal', 'interval_mdn'):
        w = c['width'] if t == 'fixed_binary' else (c.get('bits', 128) // 8 if t == 'decimal'
                                                     else 16)
        data = bytes(buf(1))
        if t == 'interval_mdn':
            vals = list(map(MonthDayNano._make, struct.iter_unpack('<iiq', data[:rows * w])))
        elif t == 'fixed_binary':
            vals = [data[i:i + w] for i in range(0, rows * w, w)]
        else:
            fb = int.from_bytes
            vals = [fb(data[i:i + w], 'little', signed=True) for i in range(0, rows * w, w)]
    elif t == 'interval_dt':
        vals = list(map(DayTime._make, struct.iter_unpack('<ii', bytes(buf(1))[:rows * 8])))
    elif t in ('list', 'map'):
        offs = numbers(buf(1), CODES['int32'])
        kid = c['children'][0]
        child = decode_column(body, kid, kid['length'], t == 'map')
        vals = [child[a:b] for a, b in zip(offs, itertools.islice(offs, 1, None))]
    elif t == 'fixed_list':
        w = c['width']
        kid = c['children'][0]
        child = decode_column(body, kid, kid['length'])
        vals = [child[i:i + w] for i in range(0, rows * w, w)]
    elif t == 'struct':
        kids = [decode_column(body, k, rows) for k in c['children']]
        if not kids:
            vals = [() if tuples else {} for _ in range(rows)]
        elif tuples:
            vals = list(zip(*kids))
        else:
            names = [k['name'] for k in c['children']]
            vals = [dict(zip(names, r)) for r in zip(*kids)]
    else:
        raise ApplyFailure('APPLY_UNSUPPORTED_TYPE', 'Cannot decode column %r of type %s'
                           % (c['name'], t))
    if validity is not None:
        vals = [v if ok else None for v, ok in zip(vals, validity)]
    if t == 'date32':
        fo = datetime.date.fromordinal
        vals = [None if v is None else fo(v + EPOCH_ORD) for v in vals]
    elif t == 'date64':
        fo = datetime.date.fromordinal
        vals = [None if v is None else fo(v // DAY_MS + EPOCH_ORD) for v in vals]
    elif t == 'timestamp':
        unit = c['unit']
        td = datetime.timedelta
        if unit == 'ns':
            vals = [None if v is None else EPOCH + td(microseconds=v // 1000) for v in vals]
        else:
            m = PER_US[unit]
            vals = [None if v is None else EPOCH + td(microseconds=v * m) for v in vals]
        if c.get('tz'):
            tz = tz_of(c['tz'])
            vals = [None if v is None else v.replace(tzinfo=UTC).astimezone(tz) for v in vals]
    elif t == 'duration':
        unit = c['unit']
        td = datetime.timedelta
        vals = [None if v is None else td(microseconds=to_us(v, unit)) for v in vals]
    elif t == 'time':
        unit = c['unit']
        vals = [None if v is None else time_of(to_us(v, unit)) for v in vals]
    elif t == 'decimal':
        import decimal
        ctx = dec_ctx()
        D = decimal.Decimal
        s = -c.get('scale', 0)
        vals = [None if v is None else D(v).scaleb(s, ctx) for v in vals]
    return vals


def time_of(us):
    s, us = divmod(us, 1000000)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    return datetime.time(h, m, s, us)


def decode_batch(payload):
    mv = memoryview(payload)
    (hlen,) = struct.unpack_from('<I', mv, 0)
    header = json.loads(bytes(mv[4:4 + hlen]).decode('utf-8'))
    body = mv[(4 + hlen + 7) & ~7:]
    rows = header['rows']
    columns = []
    for c in header['columns']:
        try:
            columns.append((c['name'], decode_column(body, c, rows)))
        except (ValueError, OverflowError) as e:
            # Values Python cannot hold: a date past year 9999, a time past midnight.
            raise ApplyFailure('APPLY_INVALID_INPUT', 'Cannot pass column %r (%s) to Python: %s'
                               % (c['name'], describe_type(c), e))
    return header, rows, columns


def first_bad(vals, ok):
    for i, v in enumerate(vals):
        if v is not None and not ok(v):
            return i, v
    return None


def mismatch(name, f, vals, ok, why=''):
    bad = first_bad(vals, ok)
    what = describe_type(f)
    if bad is None:
        return OutputTypeError('column %r: the values do not fit %s%s' % (name, what, why))
    i, v = bad
    return OutputTypeError('column %r is %s, but row %d holds %s %s%s'
                           % (name, what, i, type(v).__name__, repr(v)[:60], why))


def describe_type(f):
    """As ``describeColumnarType`` in the server (used in messages only)."""
    t = f['type']
    kids = f.get('children') or []
    if t == 'timestamp':
        return 'timestamp[%s%s]' % (f['unit'], ', tz=' + f['tz'] if f.get('tz') else '')
    if t in ('time', 'duration'):
        return '%s[%s]' % (t, f['unit'])
    if t == 'decimal':
        return 'decimal%d(%d, %d)' % (f.get('bits', 128), f['precision'], f.get('scale', 0))
    if t == 'fixed_binary':
        return 'fixed_binary[%d]' % f['width']
    if t == 'list':
        return 'list<%s>' % ', '.join(describe_type(k) for k in kids)
    if t == 'fixed_list':
        return 'fixed_list<%s>[%d]' % (', '.join(describe_type(k) for k in kids), f['width'])
    if t == 'struct':
        return 'struct<%s>' % ', '.join('%s: %s' % (k['name'], describe_type(k)) for k in kids)
    if t == 'map':
        return 'map<%s>' % ', '.join(describe_type(k) for k in kids[0].get('children', []))
    return t


def is_int(v):
    return isinstance(v, int) or (hasattr(v, '__index__') and not isinstance(v, float))


def ticks(v, unit):
    if v.tzinfo is not None:
        v = v.astimezone(UTC).replace(tzinfo=None)
    d = v - EPOCH
    us = (d.days * 86400 + d.seconds) * 1000000 + d.microseconds
    if unit == 'ns':
        return us * 1000 + getattr(v, 'nanosecond', 0)
    return us // PER_US[unit]


def delta_ticks(v, unit):
    if is_int(v):
        return int(v)
    us = (v.days * 86400 + v.seconds) * 1000000 + v.microseconds
    if unit == 'ns':
        return us * 1000 + getattr(v, 'nanoseconds', 0)
    return us // PER_US[unit]


def time_ticks(v, unit):
    us = ((v.hour * 60 + v.minute) * 60 + v.second) * 1000000 + v.microsecond
    if unit == 'ns':
        return us * 1000 + getattr(v, 'nanosecond', 0)
    return us // PER_US[unit]


def decimal_int(v, f):
    """The unscaled integer of ``v`` at the field's scale; ``None`` when it does not fit."""
    import decimal
    if isinstance(v, bool) or not isinstance(v, (int, decimal.Decimal)):
        return None
    if not isinstance(v, decimal.Decimal):
        v = decimal.Decimal(v)
    if not v.is_finite():
        return None
    q = v.scaleb(f.get('scale', 0), dec_ctx())
    if q != q.to_integral_value():
        return None  # digits past the scale would be lost
    n = int(q)
    return n if abs(n) < 10 ** f['precision'] else None


def is_seq(v):
    return isinstance(v, (list, tuple)) or (
        hasattr(v, '__len__') and hasattr(v, '__getitem__') and
        not isinstance(v, (str, bytes, bytearray, dict)) and not hasattr(v, 'keys'))


def packed(name, f, vals, code, conv, ok):
    try:
        a = array.array(code, [0 if v is None else conv(v) for v in vals])
    except (TypeError, OverflowError, ValueError, AttributeError):
        raise mismatch(name, f, vals, ok, ' (or out of range)')
    if BIG:
        a.byteswap()
    return a


def encode_column(name, vals, f, add):
    t = f['type']
    n = len(vals)
    nulls = sum(1 for v in vals if v is None)
    out = {'name': name, 'type': t, 'nulls': nulls}
    for k in PARAMS:
        if k in f:
            out[k] = f[k]
    if t == 'null':
        if nulls != n:
            raise mismatch(name, f, vals, lambda v: False)
        out['buffers'] = []
        return out
    if nulls and f.get('nullable') is False:
        raise OutputTypeError('column %r is declared non-nullable, but %d of its %d values are None'
                              % (name, nulls, n))
    buffers = [add(bytes([v is not None for v in vals]) if nulls else b'')]
    out['buffers'] = buffers
    if t in INTS or t in FLOATS:
        fill = [0 if v is None else v for v in vals] if nulls else vals
        try:
            a = array.array(CODES[t], fill)
        except (TypeError, OverflowError, ValueError) as e:
            if t in FLOATS:
                ok = lambda v: isinstance(v, (int, float)) or hasattr(v, '__float__')
                if not isinstance(e, TypeError):
                    ok = lambda v: isinstance(v, (int, float)) and abs(v) < 3.4e38
            else:
                lo, hi = int_range(t)
                ok = lambda v: is_int(v) and lo <= int(v) <= hi
            raise mismatch(name, f, vals, ok)
        if BIG:
            a.byteswap()
        buffers.append(add(a))
    elif t == 'bool':
        if any(v is not True and v is not False for v in vals if v is not None):
            raise mismatch(name, f, vals, lambda v: v is True or v is False)
        buffers.append(add(bytes([v is True for v in vals])))
    elif t in ('utf8', 'binary'):
        if t == 'utf8':
            try:
                enc = [b'' if v is None else v.encode('utf-8') for v in vals]
            except (AttributeError, TypeError, UnicodeError):
                raise mismatch(name, f, vals, lambda v: isinstance(v, str))
            if any(type(v) is not str for v in vals if v is not None):
                raise mismatch(name, f, vals, lambda v: isinstance(v, str))
        else:
            if any(not isinstance(v, (bytes, bytearray, memoryview)) for v in vals
                   if v is not None):
                raise mismatch(name, f, vals,
                               lambda v: isinstance(v, (bytes, bytearray, memoryview)))
            enc = [b'' if v is None else bytes(v) for v in vals]
        add_offsets(name, map(len, enc), buffers, add)
        buffers.append(add(b''.join(enc)))
    elif t == 'fixed_binary':
        w = f['width']
        ok = lambda v: isinstance(v, (bytes, bytearray, memoryview)) and len(v) == w
        if any(not ok(v) for v in vals if v is not None):
            raise mismatch(name, f, vals, ok, ' (of %d bytes)' % w)
        buffers.append(add(b''.join(b'\0' * w if v is None else bytes(v) for v in vals)))
    elif t in ('date32', 'date64'):
        ok = lambda v: isinstance(v, datetime.date)
        if any(not ok(v) for v in vals if v is not None):
            raise mismatch(name, f, vals, ok)
        m = DAY_MS if t == 'date64' else 1
        buffers.append(add(packed(name, f, vals, CODES[t],
                                  lambda v: (v.toordinal() - EPOCH_ORD) * m, ok)))
    elif t == 'timestamp':
        ok = lambda v: isinstance(v, datetime.datetime)
        if any(not ok(v) for v in vals if v is not None):
            raise mismatch(name, f, vals, ok)
        unit = f['unit']
        buffers.append(add(packed(name, f, vals, 'q', lambda v: ticks(v, unit), ok)))
    elif t == 'time':
        ok = lambda v: isinstance(v, datetime.time)
        if any(not ok(v) for v in vals if v is not None):
            raise mismatch(name, f, vals, ok)
        unit = f['unit']
        buffers.append(add(packed(name, f, vals, code_of(f), lambda v: time_ticks(v, unit), ok)))
    elif t == 'duration':
        ok = lambda v: isinstance(v, datetime.timedelta) or (is_int(v) and not isinstance(v, bool))
        if any(not ok(v) for v in vals if v is not None):
            raise mismatch(name, f, vals, ok)
        unit = f['unit']
        buffers.append(add(packed(name, f, vals, 'q', lambda v: delta_ticks(v, unit), ok)))
    elif t == 'interval_ym':
        ok = lambda v: is_int(v) and not isinstance(v, bool)
        buffers.append(add(packed(name, f, vals, CODES[t], int, ok)))
    elif t in ('interval_dt', 'interval_mdn'):
        fmt, k = ('<ii', 2) if t == 'interval_dt' else ('<iiq', 3)
        ok = lambda v: is_seq(v) and len(v) == k and all(is_int(x) for x in v)
        if any(not ok(v) for v in vals if v is not None):
            raise mismatch(name, f, vals, ok, ' (a tuple of %d ints)' % k)
        zero = (0,) * k
        try:
            raw = b''.join(struct.pack(fmt, *(zero if v is None else v)) for v in vals)
        except struct.error:
            raise mismatch(name, f, vals, lambda v: True, ' (out of range)')
        buffers.append(add(raw))
    elif t == 'decimal':
        w = f.get('bits', 128) // 8
        ints = [0 if v is None else decimal_int(v, f) for v in vals]
        if any(x is None for x in ints):
            raise mismatch(name, f, vals, lambda v: decimal_int(v, f) is not None,
                           ' (a Decimal or int that fits)')
        buffers.append(add(b''.join(x.to_bytes(w, 'little', signed=True) for x in ints)))
    elif t in ('list', 'fixed_list'):
        if any(not is_seq(v) for v in vals if v is not None):
            raise mismatch(name, f, vals, is_seq, ' (a list)')
        kf = f['children'][0]
        if t == 'list':
            add_offsets(name, (0 if v is None else len(v) for v in vals), buffers, add)
            flat = [x for v in vals if v is not None for x in v]
        else:
            w = f['width']
            if any(len(v) != w for v in vals if v is not None):
                raise mismatch(name, f, vals, lambda v: len(v) == w, ' (of %d values)' % w)
            pad = [None] * w
            flat = [x for v in vals for x in (pad if v is None else v)]
        out['children'] = [child_column(name, flat, kf, add)]
    elif t == 'struct':
        kids = f['children']
        ok = lambda v: hasattr(v, 'keys') or (is_seq(v) and len(v) == len(kids))
        if any(not ok(v) for v in vals if v is not None):
            raise mismatch(name, f, vals, ok, ' (a dict)')
        cols = []
        for i, kf in enumerate(kids):
            k = kf['name']
            kv = [None if v is None else (v.get(k) if hasattr(v, 'keys') else v[i])
                  for v in vals]
            cols.append(child_column(name, kv, kf, add))
        out['children'] = cols
    elif t == 'map':
        ef = f['children'][0]
        ok = lambda v: hasattr(v, 'items') or (
            is_seq(v) and all(is_seq(p) and len(p) == 2 for p in v))
        if any(not ok(v) for v in vals if v is not None):
            raise mismatch(name, f, vals, ok, ' (a dict or a list of pairs)')
        pairs = [list(v.items()) if hasattr(v, 'items') else v for v in vals]
        add_offsets(name, (0 if p is None else len(p) for p in pairs), buffers, add)
        flat = [p for ps in pairs if ps is not None for p in ps]
        kf, vf = ef['children']
        entries = {'name': ef['name'], 'type': 'struct', 'nulls': 0, 'length': len(flat),
                   'buffers': [add(b'')],
                   'children': [child_column(name, [p[0] for p in flat], kf, add),
                                child_column(name, [p[1] for p in flat], vf, add)]}
        out['children'] = [entries]
    else:
        raise ApplyFailure('APPLY_UNSUPPORTED_TYPE', 'Cannot encode column %r of type %s'
                           % (name, t))
    return out


def child_column(parent, vals, f, add):
    try:
        c = encode_column(f['name'], vals, f, add)
    except OutputTypeError as e:
        raise OutputTypeError('in column %r: %s' % (parent, e))
    c['length'] = len(vals)
    return c


def add_offsets(name, lengths, buffers, add):
    try:
        offs = array.array(CODES['int32'], itertools.accumulate(lengths, initial=0))
    except OverflowError:
        raise OutputTypeError('column %r holds more than 2 GiB in one batch' % name)
    if BIG:
        offs.byteswap()
    buffers.append(add(offs))


def int_range(t):
    bits = int(t.lstrip('uint'))
    if t.startswith('u'):
        return 0, 2 ** bits - 1
    return -2 ** (bits - 1), 2 ** (bits - 1) - 1


def encode_batch(columns, fields, rows):
    parts = []
    pos = [0]

    def add(b):
        mv = memoryview(b).cast('B')
        off = pos[0]
        if len(mv):
            parts.append(mv)
            pos[0] += len(mv)
            pad = (-pos[0]) % 8
            if pad:
                parts.append(b'\0' * pad)
                pos[0] += pad
        return [off, len(mv)]

    cols = [encode_column(name, vals, f, add) for (name, vals), f in zip(columns, fields)]
    header = json.dumps({'rows': rows, 'columns': cols}).encode('utf-8')
    lead = struct.pack('<I', len(header)) + header
    lead += b'\0' * ((-len(lead)) % 8)
    return [lead] + parts


def infer_field(name, vals):
    kinds = set(map(type, vals))
    kinds.discard(type(None))
    sub = lambda k, c: all(issubclass(x, c) for x in k)
    if not kinds:
        return {'name': name, 'type': 'null'}
    if sub(kinds, bool):
        return {'name': name, 'type': 'bool'}
    if all(issubclass(x, int) and not issubclass(x, bool) for x in kinds):
        return {'name': name, 'type': 'int64'}
    if sub(kinds, (int, float)):
        return {'name': name, 'type': 'float64'}
    if sub(kinds, str):
        return {'name': name, 'type': 'utf8'}
    if sub(kinds, (bytes, bytearray, memoryview)):
        return {'name': name, 'type': 'binary'}
    if sub(kinds, datetime.datetime):
        first = next(v for v in vals if v is not None)
        unit = 'ns' if hasattr(first, 'nanosecond') else 'us'
        return {'name': name, 'type': 'timestamp', 'unit': unit,
                'tz': tz_name(first) if first.tzinfo is not None else None}
    if sub(kinds, datetime.date) and not any(issubclass(x, datetime.datetime) for x in kinds):
        return {'name': name, 'type': 'date32'}
    if sub(kinds, datetime.time):
        return {'name': name, 'type': 'time', 'unit': 'us'}
    if sub(kinds, datetime.timedelta):
        unit = 'ns' if any(hasattr(v, 'nanoseconds') for v in vals if v is not None) else 'us'
        return {'name': name, 'type': 'duration', 'unit': unit}
    if all(x.__name__ == 'Decimal' for x in kinds):
        return infer_decimal(name, vals)
    if sub(kinds, (list, tuple)):
        flat = [x for v in vals if v is not None for x in v]
        return {'name': name, 'type': 'list', 'children': [infer_field('item', flat)]}
    if sub(kinds, dict):
        keys = []
        for v in vals:
            for k in (v or ()):
                if k not in keys:
                    if not isinstance(k, str):
                        break
                    keys.append(k)
        if all(isinstance(k, str) for v in vals if v for k in v):
            return {'name': name, 'type': 'struct', 'children': [
                infer_field(k, [None if v is None else v.get(k) for v in vals]) for k in keys]}
    raise OutputTypeError('column %r: cannot infer an Arrow type from values of types %s; '
                          'declare the output schema' % (name, ', '.join(sorted(
                              k.__name__ for k in kinds))))


def infer_decimal(name, vals):
    # As pyarrow infers it: enough digits before and after the point for every value.
    whole, scale = 1, 0
    for v in vals:
        if v is None:
            continue
        if not v.is_finite():
            raise OutputTypeError('column %r holds %r, which Arrow decimals cannot hold'
                                  % (name, v))
        _, digits, exp = v.as_tuple()
        scale = max(scale, -exp)
        whole = max(whole, len(digits) + exp)
    precision = max(whole, 1) + scale
    if precision > 76:
        raise OutputTypeError('column %r: its decimals need %d digits, more than 76'
                              % (name, precision))
    return {'name': name, 'type': 'decimal', 'precision': precision, 'scale': scale,
            'bits': 128 if precision <= 38 else 256}


# ---- forms over the columnar transport ----

PANDAS_NULLABLE = {'int8': 'Int8', 'int16': 'Int16', 'int32': 'Int32', 'int64': 'Int64',
                   'uint8': 'UInt8', 'uint16': 'UInt16', 'uint32': 'UInt32',
                   'uint64': 'UInt64'}


def to_pandas(header, columns):
    import pandas as pd
    data = {}
    for c, (name, vals) in zip(header['columns'], columns):
        t = c['type']
        if 'dictionary' in c and t not in ('list', 'fixed_list', 'struct', 'map'):
            # As pyarrow's to_pandas(): a dictionary becomes a categorical.
            s = pd.Series(vals, dtype='category')
        elif t in INTS:
            s = pd.Series(vals, dtype=PANDAS_NULLABLE[t] if c['nulls'] else t)
        elif t in FLOATS:
            s = pd.Series([float('nan') if v is None else v for v in vals], dtype=t)
        elif t == 'bool':
            s = pd.Series(vals, dtype='boolean' if c['nulls'] else 'bool')
        elif t == 'timestamp':
            dtype = 'datetime64[ns, %s]' % c['tz'] if c.get('tz') else 'datetime64[ns]'
            s = pd.Series(vals, dtype=dtype)
        elif t == 'duration':
            s = pd.Series(vals, dtype='timedelta64[ns]')
        else:
            s = pd.Series(vals, dtype=object)
        data[name] = s
    return pd.DataFrame(data, index=pd.RangeIndex(header['rows']))


def pandas_columns(df, fields):
    import pandas as pd
    if not isinstance(df, pd.DataFrame):
        raise OutputTypeError('the function must return a pandas.DataFrame, not %s'
                              % type(df).__name__)
    names = [str(n) for n in df.columns]
    if len(set(names)) != len(names):
        raise OutputTypeError('the output has duplicate column names: %s' % names)
    out = []
    inferred = []
    for name, key in zip(names, df.columns):
        s = df[key]
        vals = s.astype(object).where(s.notna(), None).tolist()
        out.append((name, vals))
        if fields is None:
            inferred.append(pandas_field(name, s, vals))
    return out, (inferred if fields is None else None)


def pandas_field(name, s, vals):
    dt = str(s.dtype)
    low = dt.lower()
    if low in INTS or low in FLOATS:
        return {'name': name, 'type': low}
    if low in ('bool', 'boolean'):
        return {'name': name, 'type': 'bool'}
    if low.startswith('timedelta64'):
        return {'name': name, 'type': 'duration', 'unit': getattr(s.dtype, 'unit', 'ns')}
    if low.startswith('datetime64'):
        tz = getattr(s.dtype, 'tz', None)
        unit = getattr(s.dtype, 'unit', 'ns')
        return {'name': name, 'type': 'timestamp', 'unit': unit,
                'tz': str(tz) if tz is not None else None}
    return infer_field(name, vals)


def columns_of(result):
    if not hasattr(result, 'keys') or not hasattr(result, '__getitem__'):
        raise OutputTypeError('the function must return a dict of column name to list, not %s'
                              % type(result).__name__)
    out = []
    for k in result.keys():
        if not isinstance(k, str):
            raise OutputTypeError('column names must be str, got %s %r' % (type(k).__name__, k))
        v = result[k]
        if isinstance(v, (str, bytes)) or not hasattr(v, '__iter__'):
            raise OutputTypeError('column %r must be a list, not %s' % (k, type(v).__name__))
        out.append((k, v if type(v) is list else list(v)))
    return out


def is_single(result, form):
    if form == 'pandas':
        return hasattr(result, 'columns') and hasattr(result, 'dtypes')
    if form == 'pyarrow':
        return hasattr(result, 'schema') and hasattr(result, 'num_rows')
    return hasattr(result, 'keys')


def results(value, form):
    """The output batches of one call: a batch, None, or an iterable of batches."""
    if value is None:
        return
    if is_single(value, form):
        yield value
        return
    if not hasattr(value, '__iter__') or isinstance(value, (str, bytes)):
        raise OutputTypeError('the function must return a batch, None or an iterable of '
                              'batches, not %s' % type(value).__name__)
    it = iter(value)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        if item is not None:
            yield item


class Columnar(object):
    def __init__(self, form, fields):
        self.form = form
        self.fields = fields
        self.pending_empty = 0

    def inputs(self, stats):
        for args in self.units(stats):
            for arg in args:
                yield arg

    def units(self, stats):
        while True:
            kind, payload = recv()
            if kind == END:
                return
            if kind != DATA:
                raise ApplyFailure('APPLY_PROTOCOL', 'Unexpected frame %d' % kind)
            header, rows, columns = decode_batch(payload)
            stats['rowsIn'] += rows
            stats['batchesIn'] += 1
            if self.form == 'pandas':
                yield [to_pandas(header, columns)]
            else:
                yield [dict(columns)]

    def end_unit(self, stats):
        # Empty outputs wait for the schema (inferred from a non-empty one); once it is known
        # they belong to this unit.
        if self.fields is not None:
            self.flush_empty(stats)

    def emit(self, result, stats):
        if self.form == 'pandas':
            columns, inferred = pandas_columns(result, self.fields)
        else:
            columns = columns_of(result)
            inferred = None
        lengths = set(len(v) for _, v in columns)
        if len(lengths) > 1:
            raise OutputTypeError('the output columns have different lengths: %s' % ', '.join(
                '%s=%d' % (n, len(v)) for n, v in columns))
        rows = lengths.pop() if lengths else 0
        if self.fields is None:
            if rows == 0 and columns:
                self.pending_empty += 1
                self.names = [n for n, _ in columns]
                return
            self.fields = inferred or [infer_field(n, v) for n, v in columns]
        by_name = dict(columns)
        want = [f['name'] for f in self.fields]
        for n, _ in columns:
            if n not in want:
                raise OutputTypeError('column %r is not in the output schema (%s)'
                                      % (n, ', '.join(want)))
        for n in want:
            if n not in by_name:
                raise OutputTypeError('column %r of the output schema is missing from the '
                                      'output (got %s)' % (n, ', '.join(by_name) or 'none'))
        ordered = [(n, by_name[n]) for n in want]
        self.flush_empty(stats)
        send(OUT, encode_batch(ordered, self.fields, rows))
        stats['rowsOut'] += rows
        stats['batchesOut'] += 1

    def flush_empty(self, stats):
        while self.pending_empty:
            self.pending_empty -= 1
            send(OUT, encode_batch([(f['name'], []) for f in self.fields], self.fields, 0))
            stats['batchesOut'] += 1

    def finish(self, stats, units=False):
        if units:
            # Output after the last unit belongs to none: empty batches of a schema never
            # inferred carry no rows, and are dropped.
            return
        if self.pending_empty and self.fields is None:
            self.fields = [{'name': n, 'type': 'null'} for n in self.names]
        if self.fields is not None:
            self.flush_empty(stats)


# ---- forms over Arrow IPC (pyarrow importable) ----

class FrameInput(io.RawIOBase):
    def __init__(self):
        self.buf = memoryview(b'')
        self.eof = False

    def readable(self):
        return True

    def readinto(self, b):
        while not self.buf and not self.eof:
            kind, payload = recv()
            if kind == DATA:
                self.buf = memoryview(payload)
            elif kind == END:
                self.eof = True
            else:
                raise ApplyFailure('APPLY_PROTOCOL', 'Unexpected frame %d' % kind)
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n


class FrameOutput(io.RawIOBase):
    def writable(self):
        return True

    def write(self, b):
        # Written whole before this returns: the caller's buffer needs no copy.
        send(OUT, [b])
        return len(b)


class Arrow(object):
    def __init__(self, form, schema_ipc):
        import pyarrow as pa
        self.pa = pa
        self.form = form
        self.schema = None
        if schema_ipc:
            import base64
            self.schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(schema_ipc)))
        self.writer = None
        # pyarrow writes a batch as many small pieces (headers, each buffer, padding): gathered
        # here, they leave as one frame per batch (pieces past the buffer go straight through).
        self.sink = io.BufferedWriter(FrameOutput(), 4 << 20)

    def arg(self, batch, stats):
        stats['rowsIn'] += batch.num_rows
        stats['batchesIn'] += 1
        if self.form == 'pandas':
            return batch.to_pandas()
        if self.form == 'columns':
            return batch.to_pydict()
        return batch

    def inputs(self, stats):
        reader = self.pa.ipc.open_stream(io.BufferedReader(FrameInput(), 1 << 16))
        for batch in reader:
            yield self.arg(batch, stats)

    def units(self, stats):
        # Each DATA frame is a whole IPC stream (schema, dictionaries, a batch): a unit of work
        # that any worker can take, and whose output is a whole IPC stream too.
        while True:
            kind, payload = recv()
            if kind == END:
                return
            if kind != DATA:
                raise ApplyFailure('APPLY_PROTOCOL', 'Unexpected frame %d' % kind)
            reader = self.pa.ipc.open_stream(self.pa.py_buffer(payload))
            yield [self.arg(batch, stats) for batch in reader]

    def end_unit(self, stats):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.sink.flush()

    def to_batches(self, result):
        pa = self.pa
        failures = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)
        if self.form == 'pandas':
            import pandas as pd
            if not isinstance(result, pd.DataFrame):
                raise OutputTypeError('the function must return a pandas.DataFrame, not %s'
                                      % type(result).__name__)
            try:
                return pa.Table.from_pandas(result, preserve_index=False).to_batches()
            except failures as e:
                columns = []
                for key in result.columns:
                    s = result[key]
                    columns.append((str(key), s.astype(object).where(s.notna(), None).tolist()))
                raise self.misfit(columns, e)
        if self.form == 'columns':
            columns = columns_of(result)
            try:
                return pa.Table.from_pydict(dict(columns)).to_batches()
            except failures as e:
                raise self.misfit(columns, e)
        if isinstance(result, pa.Table):
            return result.to_batches()
        if isinstance(result, pa.RecordBatch):
            return [result]
        raise OutputTypeError('the function must return a pyarrow.RecordBatch or Table, not %s'
                              % type(result).__name__)

    def misfit(self, columns, e):
        """Why pyarrow could not convert the output: the column, the value and the type."""
        pa = self.pa
        failures = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)
        for name, vals in columns:
            want = None
            if self.schema is not None and self.schema.get_field_index(name) >= 0:
                want = self.schema.field(name).type
            try:
                pa.array(vals, type=want)
                continue
            except failures:
                pass
            if want is not None:
                for i, v in enumerate(vals):
                    if v is None:
                        continue
                    try:
                        pa.array([v], type=want)
                    except failures:
                        return OutputTypeError('column %r is %s, but row %d holds %s %s'
                                               % (name, want, i, type(v).__name__, repr(v)[:60]))
            kinds = sorted(set(type(v).__name__ for v in vals if v is not None))
            if len(kinds) > 1:
                return OutputTypeError('column %r: cannot infer an Arrow type from values of '
                                       'types %s; declare the output schema'
                                       % (name, ', '.join(kinds)))
            return OutputTypeError('column %r holds %s values pyarrow cannot convert: %s'
                                   % (name, ', '.join(kinds) or 'no', describe(e)))
        return OutputTypeError('the output cannot be converted to Arrow: %s' % describe(e))

    def conform(self, batch):
        pa = self.pa
        if self.schema is None:
            self.schema = batch.schema
            return batch
        got = batch.schema
        arrays = []
        for f in self.schema:
            i = got.get_field_index(f.name)
            if i < 0:
                raise OutputTypeError('column %r of the output schema is missing from the '
                                      'output (got %s)' % (f.name, ', '.join(got.names)))
            col = batch.column(i)
            if col.type != f.type:
                try:
                    col = col.cast(f.type)
                except Exception as e:
                    raise OutputTypeError('column %r is %s, but the function returned %s: %s'
                                          % (f.name, f.type, col.type, e))
            if not f.nullable and col.null_count:
                raise OutputTypeError('column %r is declared non-nullable, but has %d nulls'
                                      % (f.name, col.null_count))
            arrays.append(col)
        for n in got.names:
            if self.schema.get_field_index(n) < 0:
                raise OutputTypeError('column %r is not in the output schema (%s)'
                                      % (n, ', '.join(self.schema.names)))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def emit(self, result, stats):
        for batch in self.to_batches(result):
            batch = self.conform(batch)
            if self.writer is None:
                self.writer = self.pa.ipc.new_stream(self.sink, self.schema)
            self.writer.write_batch(batch)
            self.sink.flush()
            stats['rowsOut'] += batch.num_rows
            stats['batchesOut'] += 1

    def finish(self, stats, units=False):
        if units:
            return
        if self.writer is None and self.schema is not None:
            self.writer = self.pa.ipc.new_stream(self.sink, self.schema)
        if self.writer is not None:
            self.writer.close()
        self.sink.flush()


# ---- main ----

def user_tb(e):
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in (DRIVER_FILE, '<string>'):
        tb = tb.tb_next
    return ''.join(traceback.format_exception(type(e), e, tb))


def describe(e):
    return ''.join(traceback.format_exception_only(type(e), e)).strip()


def load_function(fn):
    try:
        if 'module' in fn:
            mod_name, _, attr = fn['module'].partition(':')
            obj = importlib.import_module(mod_name)
        else:
            import linecache
            mod = types.ModuleType('__valise_apply__')
            mod.__dict__['__builtins__'] = __builtins__
            # Registered so that tracebacks show the lines of the inline code.
            filename = '<apply code>'
            src = fn['code']
            linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
            exec(compile(src, filename, 'exec'), mod.__dict__)
            obj, attr = mod, fn['name']
        for part in attr.split('.'):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ApplyFailure('APPLY_FUNCTION_NOT_FOUND', 'Cannot load %s: %s'
                           % (fn.get('module') or fn['name'], describe(e)), user_tb(e))
    except BaseException as e:
        raise ApplyFailure('APPLY_FUNCTION_FAILED', 'Cannot load %s: %s'
                           % (fn.get('module') or fn['name'], describe(e)), user_tb(e))
    if not callable(obj):
        raise ApplyFailure('APPLY_FUNCTION_NOT_FOUND', '%s is a %s, not a function'
                           % (fn.get('module') or fn['name'], type(obj).__name__))
    return obj


def call(fn, arg):
    try:
        return fn(arg)
    except BaseException as e:
        raise ApplyFailure('APPLY_FUNCTION_FAILED', describe(e), user_tb(e))


def outputs(value, form):
    it = results(value, form)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except (ApplyFailure, OutputTypeError):
            raise
        except BaseException as e:
            raise ApplyFailure('APPLY_FUNCTION_FAILED', describe(e), user_tb(e))
        yield item


def main():
    spec = importlib.util.find_spec
    version = lambda name: 'found' if spec(name) is not None else None
    send_json(HELLO, {'executable': sys.executable, 'version': list(sys.version_info[:3]),
                      'pyarrow': version('pyarrow'), 'pandas': version('pandas')})
    kind, payload = recv()
    if kind != START:
        raise ApplyFailure('APPLY_PROTOCOL', 'Expected START, got frame %d' % kind)
    start = json.loads(payload.decode('utf-8'))
    stats = {'rowsIn': 0, 'rowsOut': 0, 'batchesIn': 0, 'batchesOut': 0}
    form = start['form']
    fn = load_function(start['function'])
    if start['transport'] == 'arrow':
        try:
            plane = Arrow(form, start.get('schemaIpc'))
        except ImportError as e:
            raise ApplyFailure('APPLY_PYARROW_UNAVAILABLE', 'Cannot import pyarrow in %s: %s'
                               % (sys.executable, describe(e)))
    else:
        if form == 'pandas':
            try:
                importlib.import_module('pandas')  # fail early, before any batch
            except ImportError as e:
                raise ApplyFailure('APPLY_PANDAS_UNAVAILABLE', 'Cannot import pandas in %s: %s'
                                   % (sys.executable, describe(e)))
        plane = Columnar(form, start.get('fields'))
    units = bool(start.get('units'))
    if units:
        # Parallel Apply: after each unit's output, a MARK with what it counted, so that the
        # server can put the outputs of several workers back in input order.
        units = plane.units(stats)
        while True:
            before = dict(stats)
            args = next(units, None)
            if args is None:
                break
            for arg in args:
                for result in outputs(call(fn, arg), form):
                    plane.emit(result, stats)
            plane.end_unit(stats)
            send_json(MARK, dict((k, stats[k] - before[k]) for k in stats))
    else:
        for arg in plane.inputs(stats):
            for result in outputs(call(fn, arg), form):
                plane.emit(result, stats)
    plane.finish(stats, units)
    send_json(DONE, stats)


try:
    main()
except ApplyFailure as e:
    send_json(ERROR, {'errorClass': e.error_class, 'message': e.message, 'traceback': e.tb})
    sys.exit(1)
except OutputTypeError as e:
    send_json(ERROR, {'errorClass': 'APPLY_OUTPUT_TYPE_MISMATCH', 'message': str(e),
                      'traceback': ''})
    sys.exit(1)
except (EOFError, BrokenPipeError):
    sys.exit(1)
