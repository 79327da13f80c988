# Copyright 2026 the Valise authors. Apache-2.0 license.
"""Runs a package installer inside a Valise sandbox (stdlib only, Python 3.8+).

The server starts it as an ordinary run of a one-off sandbox whose only way out is a Unix socket
of the server's, bound in at its own path: the server's proxy, which opens connections to the
configured package index hosts and nothing else. The sandbox keeps its own network namespace
(nothing but a loopback device), so this relays: it listens on 127.0.0.1 there and forwards
every connection to that socket, then runs the installer with HTTP(S)_PROXY pointing at it. The
relay enforces nothing: the policy is the proxy's, on the host, so code that reaches the socket
directly gains nothing.

argv[1] is JSON from the server: ``argv`` (the installer's command line, ``{proxy}`` replaced by
the relay's URL), ``env`` (its whole environment), ``socket`` (the proxy's path, or empty when
offline) and ``dirs`` (directories to create first).
"""
import json
import os
import socket
import subprocess
import sys
import threading

CONFIG = json.loads(sys.argv[1])


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def relay(listener, path):
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(path)
        except OSError:
            conn.close()
            upstream.close()
            continue
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()


def main():
    env = dict(CONFIG['env'])
    argv = list(CONFIG['argv'])
    for d in CONFIG.get('dirs', []):
        os.makedirs(d, exist_ok=True)
    path = CONFIG.get('socket') or ''
    if path:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(('127.0.0.1', 0))
        listener.listen(64)
        url = 'http://127.0.0.1:%d' % listener.getsockname()[1]
        threading.Thread(target=relay, args=(listener, path), daemon=True).start()
        for k in ('HTTPS_PROXY', 'HTTP_PROXY', 'https_proxy', 'http_proxy', 'ALL_PROXY'):
            env[k] = url
        env['NO_PROXY'] = ''
        env['no_proxy'] = ''
        argv = [a.replace('{proxy}', url) for a in argv]
    sys.stdout.flush()
    # The installer's output goes straight to this run's stdout and stderr: the server streams
    # it to the client as progress, and keeps its end for an error message.
    code = subprocess.call(argv, env=env, stdin=subprocess.DEVNULL, close_fds=True)
    sys.exit(code if code >= 0 else 128 - code)


main()
