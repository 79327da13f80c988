# A fork server that lies (for packages/launcher/hostile_test.ts): it sends READY, waits for the
# RUN frame of run 1, reports it started, misbehaves as argv[1] says, and reports the run exited,
# so that without the launcher's checks each test ends (and fails) instead of hanging.
import os, sys, json, struct, time
mode = sys.argv[1]
def send(kind, rid, payload=b''):
    data = struct.pack('>IBI', len(payload) + 5, kind, rid) + payload
    while data:
        data = data[os.write(1, data):]
def read_frame():
    head = b''
    while len(head) < 4:
        head += os.read(0, 4 - len(head))
    (n,) = struct.unpack('>I', head)
    body = b''
    while len(body) < n:
        body += os.read(0, n - len(body))
    return body
send(10, 0, json.dumps({'pid': os.getpid(), 'executable': 'liar', 'version': [3, 8, 0]}).encode())
read_frame()
send(11, 1, b'{"pid": 4242}')
if mode == 'huge':
    # A 4 GiB STDOUT frame, then 256 MiB of it.
    os.write(1, struct.pack('>IBI', 0xFFFFFFF0, 12, 1))
    for _ in range(4096):
        os.write(1, b'x' * 65536)
    sys.exit(0)
elif mode == 'window':
    # 64 MiB of flow-controlled stdout that never waits for an acknowledgement.
    for _ in range(1024):
        send(12, 1, b'y' * 65536)
elif mode == 'ack':
    # Acknowledges stdin that was never sent: the window would open without bound.
    send(16, 1, struct.pack('>I', 1 << 30))
elif mode == 'deaf':
    # Never reads its stdin again, and makes the launcher answer each tiny frame with an ACK.
    for _ in range(200000):
        send(12, 1, b'z')
elif mode == 'twice':
    for _ in range(1000):
        send(11, 1, b'{"pid": 4242}')
elif mode == 'shout':
    # 64 MiB on stderr without a newline: the server's log must not take it all, nor its memory.
    for _ in range(1024):
        os.write(2, b's' * 65536)
elif mode == 'immortal':
    # Reads the KILL frame, and keeps the run alive.
    read_frame()
    time.sleep(120)
send(14, 1, b'{"code": 0, "signal": ""}')
time.sleep(120)
