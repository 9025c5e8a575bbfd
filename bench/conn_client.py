#!/usr/bin/env python3
"""A bounded loopback client and echo server for instruction-count profiles (bench/count.sh).

  conn_client.py echo PORTFILE           - an echo server on 127.0.0.1:0; writes its port to PORTFILE
  conn_client.py rate HOST:PORT COUNT    - COUNT sequential connections: connect, 64 B echo, close
  conn_client.py origin PORTFILE         - an HTTP origin on 127.0.0.1:0 serving /1m (1 MiB) and
                                            /small (100 B), Cache-Control: max-age=3600
  conn_client.py get HOST:PORT URL COUNT - COUNT GETs of absolute-form URL through a proxy,
                                            one keep-alive connection; checks the body length
  conn_client.py rget HOST:PORT HOST PATH COUNT - COUNT GETs of PATH with Host: HOST through a
                                            reverse proxy, one keep-alive connection; counts
                                            responses that are not 200
  conn_client.py idle HOST:PORT HOST COUNT plain|tls READYFILE HOLD - opens COUNT keep-alive
                                            connections (TLS 1.3 without session resumption
                                            with `tls`), one GET /small with Host: HOST on each;
                                            after half of them creates READYFILE.half and waits
                                            (at most 60 s) for READYFILE.go; after all prints
                                            "opened= failed= secs=", creates READYFILE, keeps
                                            them idle HOLD seconds (at most 600, or until
                                            SIGTERM), then closes them and exits
"""
import socket, sys, threading

def echo(portfile):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(512)
    with open(portfile, "w") as f:
        f.write(str(s.getsockname()[1]))
    def serve(c):
        with c:
            while True:
                d = c.recv(65536)
                if not d:
                    return
                c.sendall(d)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()

def rate(addr, count):
    host, port = addr.rsplit(":", 1)
    msg = b"x" * 64
    failed = 0
    for _ in range(count):
        try:
            c = socket.create_connection((host, int(port)), timeout=10)
            c.sendall(msg)
            got = b""
            while len(got) < 64:
                d = c.recv(64 - len(got))
                if not d:
                    break
                got += d
            if got != msg:
                failed += 1
            c.close()
        except OSError:
            failed += 1
    print(f"count={count} failed={failed}")

def get(addr, url, count, vhost="x"):
    host, port = addr.rsplit(":", 1)
    c = socket.create_connection((host, int(port)), timeout=30)
    extra = "" if vhost == "x" else "User-Agent: count/1\r\nAccept: */*\r\n"
    req = f"GET {url} HTTP/1.1\r\nHost: {vhost}\r\n{extra}\r\n".encode()
    f = c.makefile("rb")
    total = 0
    bad = 0
    for _ in range(count):
        c.sendall(req)
        length = None
        status = f.readline()
        if not status.startswith(b"HTTP/1.1 200"):
            bad += 1
        while True:
            line = f.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v.strip())
        body = f.read(length)
        total += len(body)
    print(f"count={count} bytes={total} not_200={bad}")

def origin(portfile):
    import http.server, random
    rnd = random.Random(1)
    bodies = {"/1m": bytes(rnd.getrandbits(8) for _ in range(1 << 20)), "/small": b"s" * 100}
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            body = bodies.get(self.path.split("?")[0])
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "max-age=3600")
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    with open(portfile, "w") as f:
        f.write(str(s.server_address[1]))
    s.serve_forever()

def read_response(c):
    """Reads one HTTP/1.1 response with a Content-Length; True when it is a 200."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        if not d:
            return False
        buf += d
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(body) < length:
        d = c.recv(65536)
        if not d:
            return False
        body += d
    return head.startswith(b"HTTP/1.1 200")

def idle(addr, vhost, count, mode, readyfile, hold):
    import os, signal, ssl, time
    hold = min(hold, 600)
    # Bounded whatever happens: opening gets 180 s (60 of them waiting at half), then the hold.
    signal.signal(signal.SIGALRM, lambda *_: sys.exit(2))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.alarm(180 + hold)
    host, port = addr.rsplit(":", 1)
    ctx = None
    if mode == "tls":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    req = f"GET /small HTTP/1.1\r\nHost: {vhost}\r\n\r\n".encode()
    conns, failed, t0 = [], 0, time.monotonic()
    for i in range(count):
        if i == count // 2:
            open(readyfile + ".half", "w").close()
            waited = time.monotonic() + 60
            while not os.path.exists(readyfile + ".go") and time.monotonic() < waited:
                time.sleep(0.05)
        try:
            c = socket.create_connection((host, int(port)), timeout=10)
            if ctx is not None:
                c = ctx.wrap_socket(c)  # a new session each time: no resumption
            c.sendall(req)
            if read_response(c):
                conns.append(c)
            else:
                failed += 1
                c.close()
        except OSError:
            failed += 1
    print(f"opened={len(conns)} failed={failed} secs={time.monotonic() - t0:.2f}", flush=True)
    open(readyfile, "w").close()
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    for c in conns:
        c.close()

if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "echo":
        echo(sys.argv[2])
    elif cmd == "rate":
        rate(sys.argv[2], int(sys.argv[3]))
    elif cmd == "origin":
        origin(sys.argv[2])
    elif cmd == "get":
        get(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif cmd == "rget":
        get(sys.argv[2], sys.argv[4], int(sys.argv[5]), vhost=sys.argv[3])
    elif cmd == "idle":
        idle(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6], int(sys.argv[7]))
