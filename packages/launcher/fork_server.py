# Copyright 2026 the Valise authors. Apache-2.0 license.
"""The Valise fork server: a stdlib-only Python program (3.8+) started once per (session,
interpreter). It reads run requests from fd 0, forks one child per run and multiplexes the
children's stdout/stderr into frames on fd 1. Frames both ways are
``u32 length (of what follows) | u8 type | u32 run id | payload``, big-endian.

It imports nothing of the user's: ``sys.path[0]`` (the working directory that ``-c`` adds) is
dropped before the first import that could be shadowed. The launcher runs it as
``python -c "VALISE = {...}; exec(compile(<this file>, '@valise/launcher/fork_server.py', 'exec'))"``.

A run's fork and the child's set-up (session, descriptors, limits, streams) are kept off the run's
critical path: while no run is in flight, one child is forked ahead (the standby), set up as far as
no spec is needed, and left blocked on a pipe that carries nothing but its spec. A RUN frame hands
its spec to the standby when there is one (and forks afresh when there is none, or the spec does
not fit the pipe); the next standby is forked once no run is in flight again.
"""
import sys
if sys.path and sys.path[0] in ('', '.'):
    del sys.path[0]
import os, json, struct, signal, select, selectors, io, types, builtins, atexit, traceback, runpy
import fcntl, resource, _signal

# Defined once, on the TypeScript side (_bootstrap.ts), and injected by the launcher's stub.
VALISE = globals()['VALISE']
_F = VALISE['frames']
RUN, KILL, STDIN, ACK, INTERRUPT = _F['RUN'], _F['KILL'], _F['STDIN'], _F['ACK'], _F['INTERRUPT']
READY, STARTED, STDOUT, STDERR = _F['READY'], _F['STARTED'], _F['STDOUT'], _F['STDERR']
EXITED, FAILED, STDIN_ACK = _F['EXITED'], _F['FAILED'], _F['STDIN_ACK']
STDOUT_WINDOW = VALISE['stdoutWindow']
BULK = VALISE['outputPiece']
F_SETPIPE_SZ = 1031
PR_SET_NAME, PR_GET_NAME = 15, 16
# Where a standby child reads its spec: u32 length, JSON. A spec that does not fit the pipe's
# default capacity at once goes to a fresh fork instead, so handing one over never blocks.
SPEC_FD = 3
SPEC_MAX = 65536 - 4
SPEC_LEN = struct.Struct('>I')
# A standby shows under this name (comm) while it waits: tests and operators tell it from a run.
STANDBY_NAME = b'valise-standby'
# Standbys that may die unused between two RUN frames before no more are forked until the next
# one (something of the session killing them must not make this loop fork without end).
STANDBY_DEATHS = 3
ACK_FMT = struct.Struct('>I')
HDR = struct.Struct('>IBI')
BOOT_FILE = VALISE['file']
RUNPY_FILE = getattr(runpy, '__file__', None)

CTL_IN = os.dup(0)
CTL_OUT = os.dup(1)
_null = os.open(os.devnull, os.O_RDWR)
os.dup2(_null, 0)
os.dup2(2, 1)  # a stray print of the interpreter's start-up goes to the log, not the frames
os.close(_null)

_libc = None
try:
    import ctypes
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: a run's orphans come back to us
except Exception:
    _libc = None


OWN_NAME = None  # this process's name (comm), set once _libc is known


def send(kind, rid, payload=b''):
    view = memoryview(HDR.pack(len(payload) + 5, kind, rid) + payload)
    while view:
        n = os.write(CTL_OUT, view)
        view = view[n:]


def send_json(kind, rid, obj):
    send(kind, rid, json.dumps(obj).encode('utf-8'))


class Run(object):
    __slots__ = ('rid', 'pid', 'fds', 'stdin_fd', 'stdin_buf', 'status', 'reported',
                 'stdin_stream', 'stdin_queue', 'stdin_eof', 'stdin_reg', 'stdin_piece',
                 'flow', 'unacked', 'paused')

    def __init__(self, rid):
        self.rid = rid
        self.pid = 0
        self.fds = {}
        self.stdin_fd = -1
        self.stdin_buf = b''
        self.status = None
        self.reported = False
        # Streamed stdin: pieces from STDIN frames, each acknowledged once written.
        self.stdin_stream = False
        self.stdin_queue = []
        self.stdin_eof = False
        self.stdin_reg = False
        self.stdin_piece = 0
        # Flow-controlled stdout: the pipe is not read while too much is unacknowledged.
        self.flow = False
        self.unacked = 0
        self.paused = -1


runs = {}
by_pid = {}
sel = selectors.DefaultSelector()
wake_r, wake_w = os.pipe()
os.set_blocking(wake_r, False)
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGCHLD, lambda *a: None)
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # we stop on EOF of fd 0, after killing the runs
os.set_blocking(CTL_IN, False)
sel.register(CTL_IN, selectors.EVENT_READ, 'ctl')
sel.register(wake_r, selectors.EVENT_READ, 'wake')


def close_fds(keep=-1):
    try:
        fds = [int(x) for x in os.listdir('/proc/self/fd')]
    except OSError:
        fds = range(3, 65536)
    for fd in fds:
        if fd > 2 and fd != keep:
            try:
                os.close(fd)
            except OSError:
                pass


def make_streams():
    stdin = io.TextIOWrapper(io.open(0, 'rb', closefd=False), encoding='utf-8', errors='strict')
    stdout = io.TextIOWrapper(io.FileIO(1, 'w', closefd=False), encoding='utf-8',
                              errors='strict', write_through=True)
    stderr = io.TextIOWrapper(io.FileIO(2, 'w', closefd=False), encoding='utf-8',
                              errors='backslashreplace', write_through=True)
    sys.stdin = sys.__stdin__ = stdin
    sys.stdout = sys.__stdout__ = stdout
    sys.stderr = sys.__stderr__ = stderr


def strip_tb(tb):
    while tb is not None and tb.tb_frame.f_code.co_filename in (BOOT_FILE, RUNPY_FILE):
        tb = tb.tb_next
    return tb


def exit_code(e):
    code = e.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xff
    try:
        sys.stderr.write(str(code) + '\n')
    except Exception:
        pass
    return 1


def execute(spec, inspect=False):
    main = types.ModuleType('__main__')
    main.__dict__['__builtins__'] = builtins
    sys.modules['__main__'] = main
    kind = spec['kind']
    args = list(spec['args'])
    if kind == 'none':
        sys.argv = [''] + args
    elif kind == 'code':
        sys.argv = ['-c'] + args
        exec(compile(spec['target'], '<string>', 'exec'), main.__dict__)
    elif kind == 'module':
        sys.argv = ['-m'] + args
        run_as_main = getattr(runpy, '_run_module_as_main', None)
        if run_as_main is not None:
            run_as_main(spec['target'], True)
        else:
            runpy.run_module(spec['target'], run_name='__main__', alter_sys=True)
    else:
        path = spec['target']
        sys.argv = [path] + args
        if not os.path.exists(path):
            sys.stderr.write("%s: can't open file %r: [Errno 2] No such file or directory\n"
                             % (sys.executable, path))
            return 2
        if inspect and is_source_file(path):
            # In __main__ itself, as `python -i script.py` does: the console then sees the
            # script's globals, not a copy of them.
            with open(path, 'rb') as f:
                source = f.read()
            main.__dict__['__file__'] = path
            exec(compile(source, path, 'exec'), main.__dict__)
        else:
            main.__dict__.update(runpy.run_path(path, run_name='__main__'))
    return 0


def is_source_file(path):
    """A plain file that is not a zip application (those go through runpy)."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, 'rb') as f:
            return f.read(2) != b'PK'
    except OSError:
        return False


def interact(spec, console):
    """``python -i``: the target (if any) runs, then Python's console reads stdin in its
    globals. An exception of the target, SystemExit too, is shown and the console starts."""
    failure = None
    if spec['kind'] != 'none':
        try:
            if execute(spec, True) == 2:
                return 2  # the script does not exist: `python -i` stops there too
        except BaseException as e:
            e.__traceback__ = strip_tb(e.__traceback__)
            failure = e
    else:
        execute(spec)
    main = sys.modules['__main__']
    for f in (sys.stdout, sys.stderr):
        f.flush()
    # One pipe for both from here: the target's traceback, prompts, results and tracebacks
    # arrive in the order they were written, as on a terminal.
    os.dup2(1, 2)
    if failure is not None:
        sys.excepthook(type(failure), failure, failure.__traceback__)
        failure = None
    banner = ''
    if spec['kind'] == 'none':
        banner = ('Python %s on %s\nType "help", "copyright", "credits" or "license" for more '
                  'information.' % (sys.version, sys.platform))
    reader_console(console)(main.__dict__, filename='<stdin>').interact(banner=banner, exitmsg='')
    return 0


def reader_console(base):
    """The console, reading its lines from fd 0 itself: a byte at a time, so that what follows
    the line stays in the pipe for the user's code, and in select() beside a signal wakeup pipe,
    so that an interrupt that lands between the prompt and the read still ends the wait (a
    read() entered after the signal was handled would block)."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)

    class Console(base):
        def raw_input(self, prompt=''):
            sys.stdout.write(prompt)
            sys.stdout.flush()
            line = bytearray()
            while True:
                ready = select.select([0, wake_r], [], [])[0]
                if wake_r in ready:
                    try:
                        os.read(wake_r, 512)
                    except OSError:
                        pass
                    continue  # KeyboardInterrupt is raised here, by the signal's handler
                b = os.read(0, 1)
                if not b:
                    if line:
                        break
                    raise EOFError
                if b == b'\n':
                    break
                line += b
            return line.decode('utf-8', 'replace')

    return Console


DEFAULT_SIGNALS = tuple(int(s) for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP,
                                          signal.SIGQUIT))
SIGINT_NUM = int(signal.SIGINT)


def prepare(in_r, out_w, err_w, spec_r=-1):
    """What a run's child does before its spec matters: its own session and process group,
    death with the server, default signals, the run's pipes as fds 0-2 (and a standby's spec
    pipe as SPEC_FD), nothing else of the server's descriptors, no core files, Python's
    streams on the new fds."""
    os.setsid()
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    signal.set_wakeup_fd(-1)
    # The C module's signal(), not signal.signal(): that one turns the old handler into an enum
    # member, and the enum machinery it runs makes this child copy ~80 pages of the fork
    # server's memory (~0.25 ms of CPU here) for nothing.
    for s in DEFAULT_SIGNALS:
        _signal.signal(s, _signal.SIG_DFL)
    _signal.signal(SIGINT_NUM, _signal.default_int_handler)
    os.dup2(in_r, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    if spec_r >= 0 and spec_r != SPEC_FD:
        os.dup2(spec_r, SPEC_FD, inheritable=False)
    # The server's bookkeeping is not the run's: nothing of other runs (their stdin, their
    # frames not yet handled) stays reachable from the child's objects.
    try:
        sel.close()
    except Exception:
        pass
    close_fds(SPEC_FD if spec_r >= 0 else -1)
    runs.clear()
    by_pid.clear()
    del ctl_buf[:]
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except Exception:
        pass
    make_streams()
    atexit._clear()


def read_spec():
    """A standby's spec from SPEC_FD, or None when the server closed the pipe unused."""
    data = b''
    want = SPEC_LEN.size
    n = None
    while len(data) < want:
        piece = os.read(SPEC_FD, want - len(data))
        if not piece:
            return None
        data += piece
        if n is None and len(data) == SPEC_LEN.size:
            (n,) = SPEC_LEN.unpack(data)
            if n > SPEC_MAX:
                return None
            want += n
    os.close(SPEC_FD)
    return json.loads(data[SPEC_LEN.size:].decode('utf-8'))


def set_name(name):
    if _libc is not None and name:
        _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)


def own_name():
    if _libc is None:
        return None
    buf = ctypes.create_string_buffer(16)
    return buf.value if _libc.prctl(PR_GET_NAME, buf, 0, 0, 0) == 0 else None


WARM_SPEC = json.dumps({'kind': 'code', 'target': 'pass', 'args': [], 'cwd': '/', 'path': [],
                        'memoryBytes': 0}).encode('utf-8')


def warm_up():
    """A standby's rehearsal of what its run does first (read a spec, make __main__, compile
    and exec code): the pages those steps write (the reference counts of the objects they use)
    are copied from the fork server now, while the standby waits, instead of after its spec has
    come (each such copy costs ~4 us here; ~60 of them were on the run's critical path). It
    leaves nothing behind that a run could see."""
    rehearsal = json.loads(WARM_SPEC.decode('utf-8'))
    main = types.ModuleType('__main__')
    main.__dict__['__builtins__'] = builtins
    exec(compile(rehearsal['target'], '<string>', 'exec'), main.__dict__)
    list(rehearsal['args'])
    rehearsal.get('memoryBytes')
    rehearsal.get('repl')
    set_name(STANDBY_NAME)  # its name already: the ctypes call is what is rehearsed
    os.environ['PWD'] = os.environ.get('PWD', rehearsal['cwd'])  # perform() sets it anyway


def standby(spec_r, in_r, out_w, err_w):
    prepare(in_r, out_w, err_w, spec_r)
    try:
        warm_up()
        spec = read_spec()
    except KeyboardInterrupt:
        # Its run was interrupted before it read its spec: it ends as an interrupted run does.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        os._exit(70)
    if spec is None:
        os._exit(0)
    set_name(OWN_NAME)  # a run from here on, under the interpreter's own name
    perform(spec)


def child(spec, in_r, out_w, err_w):
    prepare(in_r, out_w, err_w)
    perform(spec)


def connect_direct(direct):
    """A bulk-data run's stdin and stdout become its connection to the launcher's data socket
    (the fork server does not relay them): fds 0 and 1 are the socket, after its token."""
    import socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            # A batch or two in flight (within the host's wmem_max): fewer wake-ups per MB.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BULK * 4)
        except OSError:
            pass
        s.connect(direct['path'])
        s.sendall(direct['token'].encode('ascii'))
        os.dup2(s.fileno(), 0)
        os.dup2(s.fileno(), 1)
    finally:
        s.close()


def perform(spec):
    """The rest of a run's child, once its spec is known: its data socket (bulk-data runs), the
    memory limit, the working directory and sys.path, the target, then Python's own end of a
    process."""
    direct = spec.pop('direct', None)
    if direct:
        try:
            connect_direct(direct)
        except Exception as e:
            sys.stderr.write('[valise] cannot connect to the data socket: %s\n' % e)
            sys.stderr.flush()
            os._exit(70)
    mem = spec.get('memoryBytes')
    if mem:
        try:
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        except Exception:
            pass
    console = None
    if spec.get('repl'):
        # The standard library's, imported before the session's directories join sys.path.
        from code import InteractiveConsole as console
    code = 1
    try:
        os.chdir(spec['cwd'])
        os.environ['PWD'] = spec['cwd']
        sys.path[:0] = spec['path']
        code = execute(spec) if console is None else interact(spec, console)
    except SystemExit as e:
        code = exit_code(e)
    except BaseException as e:
        try:
            e.__traceback__ = strip_tb(e.__traceback__)
            sys.excepthook(type(e), e, e.__traceback__)
        except Exception:
            pass
        if isinstance(e, KeyboardInterrupt):
            code = -signal.SIGINT
        else:
            code = 1
    try:
        if 'threading' in sys.modules:
            shutdown = getattr(sys.modules['threading'], '_shutdown', None)
            if shutdown is not None:
                shutdown()
        atexit._run_exitfuncs()
    except BaseException:
        pass
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except BaseException:
            pass
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


class Standby(object):
    __slots__ = ('pid', 'spec_w', 'in_w', 'out_r', 'err_r')

    def __init__(self, pid, spec_w, in_w, out_r, err_r):
        self.pid = pid
        self.spec_w = spec_w
        self.in_w = in_w
        self.out_r = out_r
        self.err_r = err_r

    def close(self):
        for fd in (self.spec_w, self.in_w, self.out_r, self.err_r):
            try:
                os.close(fd)
            except OSError:
                pass


waiting = None  # the standby child, if one is up
standby_deaths = 0  # standbys that died unused since the last RUN frame
standby_blocked = False  # a fork failed: none until a run ends


def fork_standby():
    global waiting, standby_blocked
    fds = []
    pid = -1
    try:
        for _ in range(4):
            fds.extend(os.pipe())
        # Named before the fork, so that it never shows under the name of a run.
        set_name(STANDBY_NAME)
        pid = os.fork()
    except OSError:
        pass
    if pid != 0:
        set_name(OWN_NAME)
    if pid < 0:
        for fd in fds:
            os.close(fd)
        standby_blocked = True  # out of processes or descriptors: runs fork on demand
        return
    spec_r, spec_w, in_r, in_w, out_r, out_w, err_r, err_w = fds
    if pid == 0:
        try:
            standby(spec_r, in_r, out_w, err_w)
        finally:
            os._exit(70)
    for fd in (spec_r, in_r, out_w, err_w):
        os.close(fd)
    os.set_blocking(spec_w, False)
    waiting = Standby(pid, spec_w, in_w, out_r, err_r)


def dismiss_standby():
    """Kills the standby (it is reaped with the orphans) and forgets it."""
    global waiting
    s = waiting
    waiting = None
    if s is None:
        return
    try:
        os.kill(s.pid, signal.SIGKILL)
    except OSError:
        pass
    s.close()


def standby_gone(pid):
    """A reaped pid that was the standby: it died unused."""
    global waiting, standby_deaths
    if waiting is not None and waiting.pid == pid:
        waiting.close()
        waiting = None
        standby_deaths += 1


def take_standby(spec_json):
    """Hands the spec to the standby: its (pid, in_w, out_r, err_r), or None (fork afresh)."""
    global waiting
    s = waiting
    if s is None:
        return None
    if len(spec_json) > SPEC_MAX:
        return None  # kept for a later run: this one forks afresh
    waiting = None
    data = SPEC_LEN.pack(len(spec_json)) + spec_json
    try:
        n = os.write(s.spec_w, data)
    except OSError:
        n = -1  # it died meanwhile (EPIPE), not reaped yet
    if n != len(data):
        waiting = s
        dismiss_standby()
        return None
    os.close(s.spec_w)
    return s.pid, s.in_w, s.out_r, s.err_r


def fork_child(rid, spec):
    """A fresh child for the run: its (pid, in_w, out_r, err_r), or None (FAILED was sent)."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pid = os.fork()
    except OSError as e:
        for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
            os.close(fd)
        send_json(FAILED, rid, {'message': 'Cannot fork: %s' % e})
        return None
    if pid == 0:
        try:
            child(spec, in_r, out_w, err_w)
        finally:
            os._exit(70)
    os.close(in_r)
    os.close(out_w)
    os.close(err_w)
    return pid, in_w, out_r, err_r


def start(rid, spec, spec_json, stdin):
    global standby_deaths
    standby_deaths = 0
    got = take_standby(spec_json) or fork_child(rid, spec)
    if got is None:
        return
    pid, in_w, out_r, err_r = got
    run = Run(rid)
    run.pid = pid
    runs[rid] = run
    by_pid[pid] = run
    send_json(STARTED, rid, {'pid': pid})
    for fd, kind in ((out_r, STDOUT), (err_r, STDERR)):
        os.set_blocking(fd, False)
        run.fds[fd] = kind
        sel.register(fd, selectors.EVENT_READ, run)
    # A direct run's child connects its stdin and stdout to the launcher's data socket itself:
    # its pipes carry nothing but stderr, and nothing of its data passes through here.
    direct = bool(spec.get('direct'))
    run.flow = bool(spec.get('flow')) and not direct
    if run.flow or (spec.get('stdinStream') and not direct):
        # Bulk data: bigger pipes mean fewer wake-ups of this loop per megabyte.
        for fd in (in_w, out_r):
            try:
                fcntl.fcntl(fd, F_SETPIPE_SZ, BULK)
            except Exception:
                pass
    if direct:
        os.close(in_w)
    elif spec.get('stdinStream'):
        os.set_blocking(in_w, False)
        run.stdin_fd = in_w
        run.stdin_stream = True
    elif stdin:
        os.set_blocking(in_w, False)
        run.stdin_fd = in_w
        run.stdin_buf = memoryview(stdin)
        sel.register(in_w, selectors.EVENT_WRITE, run)
        run.stdin_reg = True
    else:
        os.close(in_w)


def close_stdin(run):
    if run.stdin_fd >= 0:
        if run.stdin_reg:
            sel.unregister(run.stdin_fd)
        run.stdin_reg = False
        os.close(run.stdin_fd)
        run.stdin_fd = -1
        run.stdin_buf = b''
        if run.stdin_stream:
            # What will never be written still frees the sender's window.
            dropped = run.stdin_piece + sum(len(p) for p in run.stdin_queue)
            run.stdin_queue = []
            run.stdin_piece = 0
            if dropped:
                send(STDIN_ACK, run.rid, ACK_FMT.pack(dropped))


def feed_stdin(run, payload):
    if run.stdin_fd < 0:
        if payload:
            send(STDIN_ACK, run.rid, ACK_FMT.pack(len(payload)))
        return
    if not payload:
        run.stdin_eof = True
        if not run.stdin_buf and not run.stdin_queue:
            close_stdin(run)
        return
    run.stdin_queue.append(bytes(payload))
    if not run.stdin_reg:
        sel.register(run.stdin_fd, selectors.EVENT_WRITE, run)
        run.stdin_reg = True


def write_stdin(run, fd):
    if not run.stdin_buf and run.stdin_queue:
        piece = run.stdin_queue.pop(0)
        run.stdin_buf = memoryview(piece)
        run.stdin_piece = len(piece)
    try:
        n = os.write(fd, run.stdin_buf[:BULK if run.stdin_stream else 65536])
        run.stdin_buf = run.stdin_buf[n:]
    except BlockingIOError:
        return
    except OSError:
        close_stdin(run)
        return
    if run.stdin_buf:
        return
    if not run.stdin_stream:
        close_stdin(run)
        return
    send(STDIN_ACK, run.rid, ACK_FMT.pack(run.stdin_piece))
    run.stdin_piece = 0
    if run.stdin_queue:
        return
    if run.stdin_eof:
        close_stdin(run)
    else:
        sel.unregister(fd)
        run.stdin_reg = False


def resume_stdout(run):
    if run.paused >= 0:
        sel.register(run.paused, selectors.EVENT_READ, run)
        run.paused = -1


def close_outputs(run):
    for fd in list(run.fds):
        if fd != run.paused:
            sel.unregister(fd)
        os.close(fd)
    run.paused = -1
    run.fds.clear()


def group_gone(pid):
    # With the subreaper, what is left of the run's process group are our children: the run
    # is over once they are reaped too.
    while True:
        try:
            p, _ = os.waitpid(-pid, os.WNOHANG)
        except ChildProcessError:
            return True
        if p == 0:
            return False


def maybe_report(run):
    global standby_blocked
    if run.status is None or run.fds or run.reported:
        return
    if _libc is not None and not group_gone(run.pid):
        return
    run.reported = True
    standby_blocked = False
    close_stdin(run)
    st = run.status
    if os.WIFSIGNALED(st):
        sig = os.WTERMSIG(st)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = 'SIG%d' % sig
        send_json(EXITED, run.rid, {'code': -1, 'signal': name})
    else:
        send_json(EXITED, run.rid, {'code': os.WEXITSTATUS(st), 'signal': ''})
    runs.pop(run.rid, None)


def killpg(pid, unreaped=True):
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    if not unreaped:
        return
    try:
        # Before the child's setsid() there is no group yet; it has started nothing then.
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def reap():
    for pid, run in list(by_pid.items()):
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            info = None
        if info is None:
            continue
        killpg(pid)  # the leader is a zombie still, so its group id cannot be reused yet
        _, st = os.waitpid(pid, 0)
        del by_pid[pid]
        run.status = st
        maybe_report(run)
    while True:  # orphans handed to us as subreaper, and leaders that ended just now
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        run = by_pid.pop(pid, None)
        if run is not None:
            killpg(pid, False)
            run.status = st
        else:
            standby_gone(pid)
    for run in list(runs.values()):
        if run.status is not None:
            maybe_report(run)


def kill_orphans():
    me = str(os.getpid())
    try:
        names = os.listdir('/proc')
    except OSError:
        return
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % name, 'rb') as f:
                stat = f.read().decode('ascii', 'replace')
            ppid = stat[stat.rindex(')') + 2:].split()[1]
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            try:
                os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass


def shutdown():
    dismiss_standby()
    for run in list(runs.values()):
        if run.pid:
            killpg(run.pid)
    kill_orphans()
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except OSError:
            break
    os._exit(0)


def handle_frame(kind, rid, payload):
    if kind == RUN:
        (n,) = struct.unpack_from('>I', payload, 0)
        spec_json = bytes(payload[4:4 + n])
        spec = json.loads(spec_json.decode('utf-8'))
        start(rid, spec, spec_json, bytes(payload[4 + n:]))
    elif kind == STDIN:
        run = runs.get(rid)
        if run is None:
            if payload:
                send(STDIN_ACK, rid, ACK_FMT.pack(len(payload)))
            return
        feed_stdin(run, payload)
    elif kind == ACK:
        run = runs.get(rid)
        if run is None:
            return
        run.unacked -= ACK_FMT.unpack_from(payload, 0)[0]
        if run.unacked < STDOUT_WINDOW:
            resume_stdout(run)
    elif kind == INTERRUPT:
        run = runs.get(rid)
        if run is None or run.status is not None:
            return
        try:
            os.killpg(run.pid, signal.SIGINT)
        except OSError:
            pass  # before the child's setsid() there is no group yet: the interrupt is lost
    elif kind == KILL:
        run = runs.get(rid)
        if run is None:
            return
        # Nobody will acknowledge any more: drain the pipes so the run can be reported.
        run.flow = False
        resume_stdout(run)
        if run.status is None:
            killpg(run.pid)
        else:
            # The leader is gone but something that left its group still holds the pipes.
            close_outputs(run)
            maybe_report(run)


ctl_buf = bytearray()  # frames read from fd 0 and not yet handled


def main():
    send_json(READY, 0, {'pid': os.getpid(), 'executable': sys.executable,
                         'version': list(sys.version_info[:3])})
    while True:
        # A standby is forked only while no run is in flight and nothing waits to be done, so
        # that neither its fork nor its set-up takes CPU from a run (on a loaded host that
        # costs a run more than the fork saves). It is forked from here, where no frame of this
        # stack holds anything of a run (a chunk, a spec, a run's stdin): it must carry nothing
        # of them.
        want = (waiting is None and not runs and not standby_blocked
                and standby_deaths < STANDBY_DEATHS)
        if not step(0 if want else None) and want:
            fork_standby()


def step(timeout):
    """Handles what select() reports within `timeout`; False when it reported nothing."""
    events = sel.select(timeout)
    for key, mask in events:
        data = key.data
        if data == 'wake':
            try:
                while os.read(wake_r, 4096):
                    pass
            except OSError:
                pass
            reap()
        elif data == 'ctl':
            read_control()
        else:
            read_run(key.fd, data)
    return bool(events)


def read_control():
    try:
        chunk = os.read(CTL_IN, 1 << 20)
    except BlockingIOError:
        return
    if not chunk:
        shutdown()
    ctl_buf.extend(chunk)
    del chunk  # a child forked below must not find the other frames it held
    while len(ctl_buf) >= 4:
        (n,) = struct.unpack_from('>I', ctl_buf, 0)
        if len(ctl_buf) < 4 + n:
            break
        frame = bytes(ctl_buf[4:4 + n])
        del ctl_buf[:4 + n]
        kind, rid = struct.unpack_from('>BI', frame, 0)
        handle_frame(kind, rid, memoryview(frame)[5:])


def read_run(fd, run):
    if fd == run.stdin_fd:
        write_stdin(run, fd)
        return
    if fd not in run.fds or fd == run.paused:
        # Closed or paused by an earlier event of this same select() batch (a kill frame
        # closes the run's pipes): the event is stale, and the fd number may already belong
        # to something else.
        return
    try:
        chunk = os.read(fd, BULK if run.flow else 65536)
    except BlockingIOError:
        return
    except OSError:
        chunk = b''
    if chunk:
        kind = run.fds[fd]
        send(kind, run.rid, chunk)
        if run.flow and kind == STDOUT:
            run.unacked += len(chunk)
            if run.unacked >= STDOUT_WINDOW:
                sel.unregister(fd)
                run.paused = fd
    else:
        sel.unregister(fd)
        os.close(fd)
        del run.fds[fd]
        maybe_report(run)


OWN_NAME = own_name()
try:
    main()
except BrokenPipeError:
    shutdown()
except BaseException:
    traceback.print_exc()
    shutdown()
