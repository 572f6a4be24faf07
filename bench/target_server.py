"""The proxy row's target: an HTTP server that answers GET /<size> with that many bytes. The bench
runs it inside a network namespace of its own (target.py): python target_server.py ADDRESS."""

import http.server
import sys

chunk = b"x" * (1 << 20)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        size = int(self.path.strip("/").split("?")[0] or 0)
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        while size > 0:
            self.wfile.write(chunk[:size]); size -= len(chunk)
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer((sys.argv[1], 80), Handler).serve_forever()
