"""Sends each request on several keep-alive HTTPS connections at the same instant.

For tests/e2e_concurrency.rs: Envoy spreads connections over its workers (SO_REUSEPORT), so
copies of one signed request sent at once on several connections reach several worker VMs
together, which is what a race on the shared replay record needs.

Usage: race_client.py <spec.json>
  {"port": 10000, "ca": "...", "cert": "...", "key": "...", "connections": 4,
   "requests": ["<base64 of a whole HTTP/1.1 request>", ...]}
Prints {"statuses": [[200, 401, 401, 401], ...]}: one list per request, one status per
connection (0 if that connection failed).
"""
import base64
import json
import socket
import ssl
import sys
import threading


def connect(spec):
    context = ssl.create_default_context(cafile=spec["ca"])
    context.load_cert_chain(spec["cert"], spec["key"])
    raw = socket.create_connection(("127.0.0.1", spec["port"]), timeout=20)
    return context.wrap_socket(raw, server_hostname="localhost")


def read_response(sock, pending):
    """One content-length framed response; returns (status, leftover bytes)."""
    data = pending
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        rest += chunk
    return int(lines[0].split()[1]), rest[length:]


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    requests = [base64.b64decode(r) for r in spec["requests"]]
    n = spec.get("connections", 2)
    statuses = [[0] * n for _ in requests]
    barrier = threading.Barrier(n)

    def worker(index):
        sock = connect(spec)
        pending = b""
        for i, request in enumerate(requests):
            barrier.wait()
            try:
                sock.sendall(request)
                statuses[i][index], pending = read_response(sock, pending)
            except (OSError, ConnectionError, ValueError):
                sock = connect(spec)
                pending = b""

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({"statuses": statuses}))


if __name__ == "__main__":
    main()
