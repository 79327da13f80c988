# Copyright 2026 the Valise authors. Apache-2.0 license.
"""The PySpark UDF runner: the function an Apply call runs (form pyarrow) when Valise executes
the Python-UDF subset of a Spark Connect plan (docs/compatibility.md, "ExecutePlan"). The server
compiles the plan into stages (column indexes, literals, UDFs, a map over partitions, a limit)
and appends ``run = make(<plan as JSON>)`` to this source; the Apply driver then calls ``run``
once per input record batch, in the session's interpreter, sandbox and limits.

The UDFs are what the PySpark client pickled. They are loaded and wrapped by the session's own
``pyspark.worker.read_udfs`` from the bytes a Spark executor would send to its Python worker,
and each batch goes through PySpark's own serializers (``load_stream`` / ``dump_stream``), so a
UDF behaves here as it does on Spark's executors, with the session's pyspark, pandas and pyarrow.
"""
import base64
import io
import struct
import sys


class ValiseUdfError(Exception):
    """A failure the server reports with its own error class (the message's ``[CLASS]``)."""


def _fail(error_class, message):
    raise ValiseUdfError('[%s] %s' % (error_class, message))


def _major_minor(version):
    return '.'.join(str(version).split('.')[:2])


def _check_versions(plan):
    try:
        import pyspark
    except ImportError as e:
        _fail('UDF_PYSPARK_UNAVAILABLE',
              'Cannot run a PySpark UDF: pyspark is not importable by the session\'s interpreter '
              '%s (%s). Add pyspark %s to the session\'s environment.'
              % (sys.executable, e, plan.get('clientSpark') or '(the client\'s version)'))
    client = plan.get('clientSpark')
    if client and _major_minor(pyspark.__version__) != _major_minor(client):
        _fail('UDF_PYSPARK_VERSION_MISMATCH',
              'The client runs pyspark %s, but the session\'s environment (%s) has pyspark %s: '
              'UDFs pickled by one cannot be read by the other. Install pyspark %s in the '
              'environment, or use a client of version %s.'
              % (client, sys.executable, pyspark.__version__, _major_minor(client),
                 _major_minor(pyspark.__version__)))
    for want in plan.get('pythonVersions', []):
        have = '%d.%d' % sys.version_info[:2]
        if want and want != have:
            # Spark's own check (worker_util.check_python_version), with its error class.
            _fail('PYTHON_VERSION_MISMATCH',
                  'Python in the session\'s environment (%s) is %s, but the client that pickled '
                  'the UDF runs Python %s: they must have the same minor version. Build the '
                  'environment with Python %s.' % (sys.executable, have, want, want))


def _int(buf, n):
    buf.write(struct.pack('!i', n))


def _utf8(buf, s):
    b = s.encode('utf-8')
    _int(buf, len(b))
    buf.write(b)


def _conf(buf, conf):
    _int(buf, len(conf))
    for k in sorted(conf):
        _utf8(buf, k)
        _utf8(buf, conf[k])


class _Udf(object):
    """One UDF (or a map over partitions), wrapped by the session's ``pyspark.worker``."""

    def __init__(self, spec, runner_conf):
        import pyarrow as pa
        from pyspark import worker
        from pyspark.worker_util import pickleSer
        self.pa = pa
        self.eval_type = spec['evalType']
        self.nargs = spec['nargs']
        # What a Spark executor writes to its Python worker after the task's preamble.
        buf = io.BytesIO()
        _conf(buf, runner_conf)
        eval_conf = {}
        if spec.get('inputType'):
            eval_conf['input_type'] = spec['inputType']
        _conf(buf, eval_conf)
        _int(buf, 1)  # one UDF
        _int(buf, self.nargs)
        for i in range(self.nargs):
            _int(buf, i)
            buf.write(b'\x00')  # positional
        _int(buf, 1)  # no chaining
        command = base64.b64decode(spec['command'])
        _int(buf, len(command))
        buf.write(command)
        buf.write(struct.pack('!q', 0))  # result id (profiling)
        buf.seek(0)
        rc = worker.RunnerConf(buf)
        ec = worker.EvalConf(buf)
        self.func, _, self.deser, self.ser = worker.read_udfs(pickleSer, buf, self.eval_type,
                                                              rc, ec)
        self.return_type = pickleSer.loads(command)[1]
        self.arrow_type = None
        if self.eval_type == 100:
            from pyspark.sql.pandas.types import to_arrow_type
            self.arrow_type = to_arrow_type(self.return_type, timezone='UTC')
            try:
                from pyspark.sql.conversion import LocalDataToArrowConversion
                self.convert = LocalDataToArrowConversion._create_converter(
                    self.return_type, none_on_identity=True)
            except Exception:
                self.convert = None

    def _arrow_in(self, batch):
        sink = io.BytesIO()
        with self.pa.ipc.new_stream(sink, batch.schema) as w:
            w.write_batch(batch)
        sink.seek(0)
        return sink

    def _arrow_out(self, out):
        data = out.getvalue()
        if not data:
            return []
        start = struct.unpack('!i', data[:4])[0]
        # SpecialLengths.START_ARROW_STREAM comes first when the serializer writes it.
        off = 4 if start == -6 else 0
        reader = self.pa.ipc.open_stream(self.pa.py_buffer(data[off:]))
        return [b for b in reader]

    def run(self, batch):
        """The UDF's output batches for one input batch (its arguments, in order)."""
        out = io.BytesIO()
        if self.eval_type == 100:
            # Plain (pickled rows) UDF: rows in, values out, through PySpark's pickle batches.
            cols = [c.to_pylist() for c in batch.columns]
            rows = list(zip(*cols)) if cols else [()] * batch.num_rows
            sink = io.BytesIO()
            self.ser.dump_stream(iter(rows), sink)
            sink.seek(0)
            result = self.func(0, self.deser.load_stream(sink))
            self.ser.dump_stream(result, out)
            out.seek(0)
            values = list(self.deser.load_stream(out))
            # pyspark.worker.wrap_udf gave Spark's internal forms (days, micros, tuples).
            if self.return_type.needConversion():
                values = [self.return_type.fromInternal(v) for v in values]
            if self.convert is not None:
                values = [self.convert(v) for v in values]
            return [self.pa.array(values, type=self.arrow_type)]
        it = self.func(0, self.deser.load_stream(self._arrow_in(batch)))
        self.ser.dump_stream(it, out)
        return self._arrow_out(out)


def _literal(pa, lit, n):
    t = lit['type']
    types = {'null': pa.null(), 'boolean': pa.bool_(), 'byte': pa.int8(), 'short': pa.int16(),
             'integer': pa.int32(), 'long': pa.int64(), 'float': pa.float32(),
             'double': pa.float64(), 'string': pa.string(), 'binary': pa.binary(),
             'date': pa.date32(), 'timestamp': pa.timestamp('us', tz='UTC'),
             'timestamp_ntz': pa.timestamp('us')}
    v = lit['value']
    if t == 'binary' and v is not None:
        v = base64.b64decode(v)
    if t in ('long', 'timestamp', 'timestamp_ntz') and v is not None:
        v = int(v)
    if t == 'decimal':
        import decimal
        return pa.array([decimal.Decimal(v)] * n, type=pa.decimal128(lit['precision'], lit['scale']))
    return pa.array([v] * n, type=types[t])


def make(plan):
    """The per-batch function of a compiled plan (see the module's docstring)."""
    if plan['udfs']:
        _check_versions(plan)
    import pyarrow as pa
    runner_conf = dict(plan.get('conf', {}))
    udfs = [_Udf(u, runner_conf) for u in plan['udfs']]
    limit = plan.get('limit')
    state = {'rows': 0}

    def evaluate(expr, batch):
        kind = expr['kind']
        if kind == 'col':
            return batch.column(expr['index'])
        if kind == 'lit':
            return _literal(pa, expr, batch.num_rows)
        # A UDF: its arguments, evaluated, become the columns of the batch it is given.
        args = [evaluate(a, batch) for a in expr['args']]
        udf = udfs[expr['udf']]
        if args:
            arg_batch = pa.RecordBatch.from_arrays(args, names=['_%d' % i for i in range(len(args))])
        else:
            arg_batch = pa.RecordBatch.from_arrays([pa.nulls(batch.num_rows)], names=['_0'])
        outs = udf.run(arg_batch)
        if udf.eval_type == 100:
            col = outs[0]
        else:
            col = pa.concat_arrays([b.column(0) for b in outs]) if outs else pa.nulls(0)
        if len(col) != batch.num_rows:
            _fail('UDF_RESULT_ROWS_MISMATCH', 'The UDF %s returned %d rows for %d input rows.'
                  % (expr.get('name', ''), len(col), batch.num_rows))
        return col

    def stage(st, batch):
        if st['kind'] == 'project':
            cols = [evaluate(e['expr'], batch) for e in st['columns']]
            return [pa.RecordBatch.from_arrays(cols, names=[e['name'] for e in st['columns']])]
        if st['kind'] == 'map':
            udf = udfs[st['udf']]
            out = []
            # As Spark sends a partition's rows to mapInPandas / mapInArrow: one struct column.
            rows = pa.StructArray.from_arrays(batch.columns, fields=list(batch.schema))
            for b in udf.run(pa.RecordBatch.from_arrays([rows], names=['_0'])):
                # Spark wraps a map's output rows in one struct column; its fields are the rows.
                if b.num_columns == 1 and pa.types.is_struct(b.schema.field(0).type):
                    arr = b.column(0)
                    fields = arr.type
                    b = pa.RecordBatch.from_arrays(
                        [arr.field(i) for i in range(fields.num_fields)],
                        names=[fields.field(i).name for i in range(fields.num_fields)])
                out.append(b)
            return out
        if st['kind'] == 'rename':
            return [pa.RecordBatch.from_arrays(batch.columns, names=st['names'])]
        raise ValueError('unknown stage %r' % st['kind'])

    def run(batch):
        if limit is not None and state['rows'] >= limit:
            return None
        batches = [batch]
        for st in plan['stages']:
            nxt = []
            for b in batches:
                nxt.extend(stage(st, b))
            batches = nxt
        if limit is not None:
            kept = []
            for b in batches:
                room = limit - state['rows']
                if room <= 0:
                    break
                if b.num_rows > room:
                    b = b.slice(0, room)
                state['rows'] += b.num_rows
                kept.append(b)
            batches = kept
        return batches

    return run

