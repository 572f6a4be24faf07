"""The proxy and secrets rows' target: an HTTP server (port 80) and an HTTPS one (443) that answer
GET /<size> with that many bytes, keeping connections alive. The bench runs it inside a network
namespace of its own (target.py): python target_server.py ADDRESS CERTIFICATE_AND_KEY_PEM."""

import http.server
import socket
import ssl
import sys
import threading

chunk = b"x" * (1 << 20)
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def setup(self):  # the head and the body go out as separate writes: no Nagle wait between them
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()
    def do_GET(self):
        size = int(self.path.strip("/").split("?")[0] or 0)
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        while size > 0:
            self.wfile.write(chunk[:size]); size -= len(chunk)
    def log_message(self, *args): pass
secure = http.server.ThreadingHTTPServer((sys.argv[1], 443), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[2])
secure.socket = context.wrap_socket(secure.socket, server_side=True)
threading.Thread(target=secure.serve_forever, daemon=True).start()
http.server.ThreadingHTTPServer((sys.argv[1], 80), Handler).serve_forever()
