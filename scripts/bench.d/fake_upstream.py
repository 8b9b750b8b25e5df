#!/usr/bin/env python3
"""A fast fake OpenAI-compatible upstream for scripts/bench (standard library only).

Raw sockets, HTTP/1.1 keep-alive, TCP_NODELAY on every accepted socket, and every answer
(head and body, or head and first event) written with a single send, so that the fake is
never what the benchmark measures. Several pre-forked processes accept on one listening
socket (each with a pool of threads, one per connection) so that the GIL does not cap the
concurrent run.

    POST .../chat/completions   "stream": true  -> text/event-stream, chunked: the first
                                                  event goes out with the head at once,
                                                  then --events more, --gap-ms apart, then
                                                  `data: [DONE]`
                                otherwise        -> a small chat.completion JSON
    GET  /_stats                -> {"connections": N, "requests": N} accepted so far, over
                                   all processes (the benchmark's evidence of whether the
                                   switcher reuses its upstream connections)
    anything else               -> 404 JSON

Usage: fake_upstream.py --ready-file F [--processes 2] [--threads 128] [--events 3] [--gap-ms 2]
Writes the port it listens on (127.0.0.1, chosen by the OS) to F once it accepts.
"""

import argparse
import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time

ANSWER = json.dumps({
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "bench-model",
    "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": "Hello from the fake upstream."},
        "finish_reason": "stop",
    }],
    "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
}, separators=(",", ":")).encode()


# Counters shared by the pre-forked processes (created before the fork).
STATS = {}


def bump(name):
    v = STATS[name]
    with v.get_lock():
        v.value += 1


def chunk_event(model, i, content=None, finish=None):
    delta = {"content": content} if content is not None else {}
    if i == 0:
        delta["role"] = "assistant"
    ev = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(ev, separators=(",", ":")).encode() + b"\n\n"


def http_chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


class Conn:
    def __init__(self, sock, events, gap):
        self.sock = sock
        self.buf = b""
        self.events = events
        self.gap = gap

    def read_request(self):
        """Returns (method, path, headers, body) or None at EOF."""
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        method, path, _ = lines[0].split(b" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        while len(rest) < length:
            data = self.sock.recv(65536)
            if not data:
                return None
            rest += data
        self.buf = rest[length:]
        return method, path, headers, rest[:length]

    def serve(self):
        while True:
            req = self.read_request()
            if req is None:
                return
            method, path, headers, body = req
            if path == b"/_stats":
                stats = json.dumps({k: v.value for k, v in STATS.items()}).encode()
                self.sock.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + b"Content-Length: %d\r\n\r\n" % len(stats)
                    + stats
                )
                continue
            bump("requests")
            close = headers.get(b"connection", b"").lower() == b"close"
            conn_hdr = b"Connection: close\r\n" if close else b"Connection: keep-alive\r\n"
            if method == b"POST" and path.endswith(b"/chat/completions"):
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = {}
                if parsed.get("stream") is True:
                    self.stream(conn_hdr, parsed.get("model", "bench-model"))
                else:
                    self.sock.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        + conn_hdr
                        + b"Content-Length: %d\r\n\r\n" % len(ANSWER)
                        + ANSWER
                    )
            else:
                msg = b'{"error":{"message":"not found","type":"not_found","code":"not_found"}}'
                self.sock.sendall(
                    b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                    + conn_hdr
                    + b"Content-Length: %d\r\n\r\n" % len(msg)
                    + msg
                )
            if close:
                return

    def stream(self, conn_hdr, model):
        # The head and the first event in one send: the upstream's own time to first chunk
        # is as short as it can be, so any extra time through the switcher is the switcher's.
        self.sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            + conn_hdr
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + http_chunk(chunk_event(model, 0, "Hel"))
        )
        words = ["lo", " from", " the", " fake", " upstream", "."]
        for i in range(1, self.events + 1):
            if self.gap > 0:
                time.sleep(self.gap)
            last = i == self.events
            ev = chunk_event(model, i, words[(i - 1) % len(words)], "stop" if last else None)
            self.sock.sendall(http_chunk(ev))
        self.sock.sendall(http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


def handle(sock, events, gap):
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        bump("connections")
        Conn(sock, events, gap).serve()
    except (OSError, ValueError):
        pass
    finally:
        try:
            sock.close()
        except OSError:
            pass


def accept_loop(listener, events, gap, threads):
    """A pool of threads all blocked in accept() on the one socket, each serving the
    connection it accepted until that closes: no thread is started on the path of a new
    connection (a switcher that does not reuse its upstream connections pays for a TCP
    handshake, not for the fake's thread start)."""
    def acceptor():
        while True:
            try:
                sock, _ = listener.accept()
            except InterruptedError:
                continue
            except OSError:
                return
            handle(sock, events, gap)

    pool = [threading.Thread(target=acceptor, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def exit_with_parent(parent):
    # A child must not outlive the process that started it, however that one ended.
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=128,
                    help="connections each process serves at once")
    ap.add_argument("--events", type=int, default=3)
    ap.add_argument("--gap-ms", type=float, default=2.0)
    args = ap.parse_args()

    STATS["connections"] = multiprocessing.Value("q", 0)
    STATS["requests"] = multiprocessing.Value("q", 0)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Linux passes TCP_NODELAY on to accepted sockets; set it on each one anyway.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    port = listener.getsockname()[1]

    children = []
    for _ in range(max(0, args.processes - 1)):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()
            accept_loop(listener, args.events, args.gap_ms / 1000.0, args.threads)
            os._exit(0)
        children.append(pid)

    def stop(*_):
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.rename(tmp, args.ready_file)
    try:
        accept_loop(listener, args.events, args.gap_ms / 1000.0, args.threads)
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main())
