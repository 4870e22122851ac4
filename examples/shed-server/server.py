#!/usr/bin/env python3
"""A WebSocket echo server that keeps the shed contract, version 1 (docs/shed-contract.md), written
with Python's third-party `websockets` library (asyncio). A runnable example of the pod side
besides ws-demo: crates/e2e/tests/shed_contract.rs runs it.

Two listeners, because the `websockets` server speaks only the GET of the opening handshake:
  --port        the WebSocket route /ws/echo (every message is sent back)
  --admin-port  GET /metrics (websocket_connections_active{route="echo"}, the gauge the adapter
                scrapes), GET /healthz, and POST /shed: the port the adapter scrapes, named by the
                pod's ws-metrics-adapter.io/port annotation, which is where the contract puts the
                shed endpoint.

    pip install -r requirements.txt
    python3 server.py --port 8080 --admin-port 9090
    curl -s -XPOST -H 'Content-Type: application/json' \
      -d '{"apiVersion":"shed.ws-metrics-adapter.io/v1","count":2}' localhost:9090/shed

Each listener logs `listening on ws://HOST:PORT` / `listening on http://HOST:PORT` (port 0 picks a
free one). SIGTERM or SIGINT drains: every client gets 1001, the shed endpoint answers closing 0
until the process exits.
"""

import argparse
import asyncio
import json
import signal

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

API_VERSION = "shed.ws-metrics-adapter.io/v1"
TRY_AGAIN_LATER = 1013  # the close code the contract asks for
MAX_BODY = 1024  # bytes; larger shed requests get 413
MAX_HEADERS = 64


class Connections:
    """Open WebSocket connections in open order (a dict keeps insertion order), oldest first."""

    def __init__(self):
        self.open = {}  # id -> ServerConnection, until its handler returns
        self.closing = set()  # ids already asked to close: not picked twice
        self.reason = {}  # id -> why the server closed it ("shed", "drain")
        self.next_id = 0
        self.draining = False
        self.opened_total = 0
        self.closed_total = {"client_close": 0, "shed": 0, "drain": 0}
        self.tasks = set()  # close tasks, referenced until done

    async def handler(self, ws):
        cid = self.next_id
        self.next_id += 1
        self.open[cid] = ws
        self.opened_total += 1
        try:
            if self.draining:
                self.close(cid, 1001, "server draining", "drain")
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            # The gauge goes down only here, once the closing handshake is over: it stays exact.
            del self.open[cid]
            self.closing.discard(cid)
            self.closed_total[self.reason.pop(cid, "client_close")] += 1

    def close(self, cid, code, text, reason):
        self.closing.add(cid)
        self.reason[cid] = reason
        task = asyncio.create_task(self.open[cid].close(code, text))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def shed(self, count):
        """Asks the `count` oldest connections not already closing to close with 1013."""
        if self.draining:
            return 0
        picked = [cid for cid in self.open if cid not in self.closing][:count]
        for cid in picked:
            self.close(cid, TRY_AGAIN_LATER, "rebalancing", "shed")
        return len(picked)

    def drain(self):
        self.draining = True
        for cid in list(self.open):
            if cid not in self.closing:
                self.close(cid, 1001, "server draining", "drain")

    def metrics(self):
        lines = [
            "# HELP websocket_connections_active Open WebSocket connections, by route",
            "# TYPE websocket_connections_active gauge",
            f'websocket_connections_active{{route="echo"}} {len(self.open)}',
            "# HELP websocket_connections_opened_total WebSocket connections upgraded, by route",
            "# TYPE websocket_connections_opened_total counter",
            f'websocket_connections_opened_total{{route="echo"}} {self.opened_total}',
            "# HELP websocket_connections_closed_total WebSocket connections ended, by route and reason",
            "# TYPE websocket_connections_closed_total counter",
        ]
        for reason, n in self.closed_total.items():
            lines.append(
                f'websocket_connections_closed_total{{route="echo",reason="{reason}"}} {n}'
            )
        return "\n".join(lines) + "\n"


class BadRequest(Exception):
    pass


def parse_shed_request(body):
    """The count of a valid request body; BadRequest naming the problem otherwise."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"body is not JSON: {e}")
    if not isinstance(request, dict):
        raise BadRequest(
            f'body must be a JSON object {{"apiVersion":"{API_VERSION}","count":N}}'
        )
    version = request.get("apiVersion")
    if version != API_VERSION:
        shown = json.dumps(version)[:64] if "apiVersion" in request else "(missing)"
        raise BadRequest(
            f'unsupported apiVersion {shown}: this server supports "{API_VERSION}"'
        )
    if "count" not in request:
        raise BadRequest("count is missing: give a positive integer")
    count = request["count"]
    # bool is an int in Python; JSON true is not a count.
    if type(count) is not int or count < 1:
        raise BadRequest(f"count {json.dumps(count)[:64]}: must be a positive integer")
    return count


async def respond(writer, code, body, content_type="text/plain; charset=utf-8", extra=()):
    reasons = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
               411: "Length Required", 413: "Content Too Large", 415: "Unsupported Media Type",
               503: "Service Unavailable"}
    data = body.encode()
    head = [f"HTTP/1.1 {code} {reasons[code]}", f"Content-Type: {content_type}",
            f"Content-Length: {len(data)}", "Connection: close", *extra]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
    await writer.drain()


async def handle_shed(conns, method, headers, reader, writer):
    if method != "POST":
        return await respond(writer, 405, "use POST\n", extra=["Allow: POST"])
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        return await respond(writer, 415, "Content-Type must be application/json\n")
    length = headers.get("content-length")
    if length is None or not length.isdigit():
        return await respond(writer, 411, "Content-Length required\n")
    if int(length) > MAX_BODY:
        return await respond(writer, 413, f"body larger than {MAX_BODY} bytes\n")
    body = await reader.readexactly(int(length))
    try:
        count = parse_shed_request(body)
    except BadRequest as e:
        return await respond(writer, 400, f"{e}\n")
    closing = conns.shed(count)
    print(f"shed request: asked {count}, closing {closing} with 1013", flush=True)
    answer = json.dumps({"apiVersion": API_VERSION, "closing": closing}, separators=(",", ":"))
    await respond(writer, 200, answer, content_type="application/json")


async def admin(conns, reader, writer):
    """One HTTP/1.1 request per connection: /metrics, /healthz, /shed."""
    try:
        line = await asyncio.wait_for(reader.readline(), 10)
        method, target, _version = line.decode("latin-1").split(" ", 2)
        headers = {}
        for _ in range(MAX_HEADERS):
            line = await asyncio.wait_for(reader.readline(), 10)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        path = target.split("?", 1)[0]
        if path == "/shed":
            await handle_shed(conns, method, headers, reader, writer)
        elif path == "/metrics" and method == "GET":
            await respond(writer, 200, conns.metrics(), "text/plain; version=0.0.4")
        elif path == "/healthz" and method == "GET":
            await respond(writer, 503 if conns.draining else 200,
                          "draining\n" if conns.draining else "ok")
        else:
            await respond(writer, 404, "not found\n")
    except (ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        pass  # a malformed or vanished client: drop it
    finally:
        writer.close()


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="WebSocket port (/ws/echo)")
    parser.add_argument("--admin-port", type=int, default=9090,
                        help="/metrics, /healthz and POST /shed")
    args = parser.parse_args()

    conns = Connections()
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))

    def only_echo(connection, request):
        if request.path != "/ws/echo":
            return connection.respond(404, "not found\n")
        return None

    async with serve(conns.handler, args.host, args.port, process_request=only_echo,
                     compression=None, ping_interval=10, ping_timeout=10) as ws_server:
        admin_server = await asyncio.start_server(
            lambda r, w: admin(conns, r, w), args.host, args.admin_port)
        ws_port = ws_server.sockets[0].getsockname()[1]
        admin_port = admin_server.sockets[0].getsockname()[1]
        print(f"listening on ws://{args.host}:{ws_port}", flush=True)
        print(f"listening on http://{args.host}:{admin_port}", flush=True)
        await stop
        print("draining: closing every connection with 1001", flush=True)
        conns.drain()
        ws_server.close(close_connections=False)  # no new connections; ours are closing
        await asyncio.wait_for(ws_server.wait_closed(), 15)
        admin_server.close()
    print("drained", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
