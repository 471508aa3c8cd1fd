"""An HTTP client that controls every frame: for the held-request tests (tests/e2e_held.rs).

curl cannot send request trailers, or send the headers now and the body later. This client
can, over HTTP/2 (the `h2` package, an independent implementation of RFC 9113) or HTTP/1.1
(chunked transfer coding with a trailer section, RFC 9112 §7.1), on mutual TLS.

Usage: h2_client.py <spec.json>; prints one JSON document with each stream's response.

The spec:
  {"port": 10000, "ca": "...", "cert": "...", "key": "...",   (cert/key optional)
   "protocol": "h2" | "http/1.1",
   "timeout_ms": 10000,           # give up waiting for responses after this long
   "streams": [{
       "headers": [[":method", "POST"], [":path", "/x"], ["authorization", "..."]],
       "events": [                # in time order per stream, `at` in ms from the start
           {"at": 0, "data": "<base64>", "end": false},
           {"at": 1500, "trailers": [["x-checksum", "1"]]}
       ]}]}
A stream without events ends with its headers; an event {"stall": true} sends nothing and
keeps the stream open. An event for a stream the server has already
answered (or reset) is skipped and reported in "skipped". With HTTP/1.1 there is one stream
per connection, sent chunked.

Output: {"streams": [{"status": 200, "headers": {...}, "body": "...", "reset": false,
                      "skipped": 0, "answered_at_ms": 12}]}
"""
import base64
import json
import os
import select
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions


def tls_socket(spec, alpn):
    context = ssl.create_default_context(cafile=spec["ca"])
    if spec.get("cert"):
        context.load_cert_chain(spec["cert"], spec["key"])
    context.set_alpn_protocols([alpn])
    raw = socket.create_connection(("127.0.0.1", spec["port"]), timeout=10)
    sock = context.wrap_socket(raw, server_hostname="localhost")
    if sock.selected_alpn_protocol() != alpn:
        raise SystemExit(f"server did not agree to {alpn}: {sock.selected_alpn_protocol()}")
    sock.setblocking(False)
    return sock


def now_ms(start):
    return int((time.monotonic() - start) * 1000)


def timeline(spec):
    """Every event of every stream, in time order: (at, stream index, event)."""
    events = []
    for i, stream in enumerate(spec["streams"]):
        for event in stream.get("events", []):
            events.append((event.get("at", 0), i, event))
    events.sort(key=lambda e: (e[0], e[1]))
    return events


def run_h2(spec):
    sock = tls_socket(spec, "h2")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    start = time.monotonic()
    results = [
        {"status": None, "headers": {}, "body": b"", "reset": False, "skipped": 0}
        for _ in spec["streams"]
    ]
    ids = []
    for i, stream in enumerate(spec["streams"]):
        stream_id = conn.get_next_available_stream_id()
        ids.append(stream_id)
        conn.send_headers(stream_id, stream["headers"], end_stream=not stream.get("events"))
    sock.sendall(conn.data_to_send())
    if os.environ.get("H2_DEBUG"):
        print(now_ms(start), "sent headers of", ids, file=sys.stderr)
    by_id = {stream_id: i for i, stream_id in enumerate(ids)}
    done = set()
    pending = timeline(spec)
    deadline = spec.get("timeout_ms", 10000)

    while len(done) < len(ids) and now_ms(start) < deadline:
        while pending and pending[0][0] <= now_ms(start):
            _, i, event = pending.pop(0)
            try:
                if "data" in event:
                    conn.send_data(ids[i], base64.b64decode(event["data"]),
                                   end_stream=event.get("end", False))
                if "trailers" in event:
                    conn.send_headers(ids[i], event["trailers"], end_stream=True)
            except h2.exceptions.StreamClosedError:
                results[i]["skipped"] += 1
            sock.sendall(conn.data_to_send())
        wait = (pending[0][0] if pending else deadline) - now_ms(start)
        # Bytes TLS has already decrypted do not make the socket readable: ask it first.
        if not sock.pending():
            readable, _, _ = select.select([sock], [], [], max(wait, 0) / 1000)
            if not readable:
                continue
        try:
            data = sock.recv(65536)
        except ssl.SSLWantReadError:
            continue
        if not data:
            if os.environ.get("H2_DEBUG"):
                print(now_ms(start), "connection closed by the server", file=sys.stderr)
            break
        for event in conn.receive_data(data):
            if os.environ.get("H2_DEBUG"):
                print(now_ms(start), event, file=sys.stderr)
            i = by_id.get(getattr(event, "stream_id", None))
            if isinstance(event, h2.events.ResponseReceived):
                headers = dict((k.decode(), v.decode()) for k, v in event.headers)
                results[i]["status"] = int(headers.pop(":status"))
                results[i]["headers"] = headers
                results[i]["answered_at_ms"] = now_ms(start)
            elif isinstance(event, h2.events.DataReceived):
                results[i]["body"] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                done.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                results[i]["reset"] = True
                done.add(event.stream_id)
        sock.sendall(conn.data_to_send())
    sock.close()
    return results


def run_h1(spec):
    """One connection per stream, the body chunked, trailers in the trailer section."""
    results = []
    for stream in spec["streams"]:
        sock = tls_socket(spec, "http/1.1")
        start = time.monotonic()
        pseudo = {k: v for k, v in stream["headers"] if k.startswith(":")}
        head = f"{pseudo[':method']} {pseudo[':path']} HTTP/1.1\r\nhost: {pseudo.get(':authority', 'localhost')}\r\n"
        for name, value in stream["headers"]:
            if not name.startswith(":"):
                head += f"{name}: {value}\r\n"
        if stream.get("events"):
            head += "transfer-encoding: chunked\r\n"
        sock.setblocking(True)
        sock.sendall((head + "\r\n").encode())
        result = {"status": None, "headers": {}, "body": b"", "reset": False, "skipped": 0}
        answer = b""
        events = list(stream.get("events", []))
        deadline = spec.get("timeout_ms", 10000)
        ended = not events
        while now_ms(start) < deadline:
            while events and events[0].get("at", 0) <= now_ms(start):
                event = events.pop(0)
                out = b""
                if "data" in event:
                    data = base64.b64decode(event["data"])
                    if data:
                        out += b"%x\r\n%s\r\n" % (len(data), data)
                    if event.get("end"):
                        out += b"0\r\n\r\n"
                        ended = True
                if "trailers" in event:
                    out += b"0\r\n" + b"".join(
                        f"{n}: {v}\r\n".encode() for n, v in event["trailers"]) + b"\r\n"
                    ended = True
                try:
                    sock.sendall(out)
                except OSError:
                    result["skipped"] += 1
            wait = (events[0].get("at", 0) if events else deadline) - now_ms(start)
            readable = sock.pending() > 0
            if not readable:
                readable, _, _ = select.select([sock], [], [], max(wait, 0) / 1000)
            if readable:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
                if parse_h1(answer, result, start) and (ended or not events):
                    break
        sock.close()
        result.setdefault("answered_at_ms", None)
        results.append(result)
    return results


def parse_h1(answer, result, start):
    """Fills `result` once a whole response (content-length framed) is in `answer`."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if len(body) < length:
        return False
    result["status"] = int(lines[0].split()[1])
    result["headers"] = headers
    result["body"] = body[:length]
    result.setdefault("answered_at_ms", now_ms(start))
    return True


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    results = run_h2(spec) if spec.get("protocol", "h2") == "h2" else run_h1(spec)
    for result in results:
        result["body"] = result["body"].decode("utf-8", "replace")
    print(json.dumps({"streams": results}))


if __name__ == "__main__":
    main()
