"""moto's SNS/SQS emulator, stopped and started on command like a broker that goes down and
comes back with its state.

`python3 sns_sqs_emulator.py <port>` serves moto on 127.0.0.1:<port> and then reads commands,
one a line, on its standard input: `stop` closes the listening socket and cuts every open
connection (a long poll in flight included), so clients see their connections refused and
reset; `start` listens on the same port again. It answers each command with a line once done
(`stopped`, `listening`), and exits when its input closes (when the test that started it
ends). moto keeps its topics, queues and messages in this process's memory, which outlives
the HTTP server: after `start` everything is where it was, as after a real SNS/SQS outage,
which a killed and restarted `moto_server` would not be. The port stays the test's while the
emulator is down: the test holds it with a bound socket that does not listen (see
`ReservedPort` in tests/src/process.rs), and the server binds it alongside with SO_REUSEADDR.
"""

import socket
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import ThreadedWSGIServer


class Server(ThreadedWSGIServer):
    """werkzeug's threaded server, keeping hold of the connections it accepted."""

    def __init__(self, port, app):
        self.connections = set()
        self.connections_lock = threading.Lock()
        super().__init__("127.0.0.1", port, app)

    def process_request(self, request, client_address):
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self):
        # A handler thread may still be inside moto: a long poll waits up to 20 s, and what it
        # takes meanwhile (after `start`, too) goes nowhere and is visible again only after
        # its visibility timeout, as with any answer lost on its way.
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main():
    port = int(sys.argv[1])
    app = DomainDispatcherApplication(create_backend_app)
    server, serving = None, None

    def start():
        nonlocal server, serving
        server = Server(port, app)
        serving = threading.Thread(target=server.serve_forever, daemon=True)
        serving.start()

    def stop():
        # serve_forever closes the listening socket on its way out: joining its thread
        # waits for that, after which no connection is accepted any more.
        server.shutdown()
        serving.join()
        server.cut_connections()

    start()
    print("listening", flush=True)
    for command in sys.stdin:
        command = command.strip()
        if command == "stop" and serving is not None:
            stop()
            serving = None
            print("stopped", flush=True)
        elif command == "start" and serving is None:
            start()
            print("listening", flush=True)
        else:
            print(f"cannot {command!r} now", flush=True)


if __name__ == "__main__":
    main()
