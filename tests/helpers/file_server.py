"""A local HTTP server for download tests: serves files from memory on 127.0.0.1.

`serve(files)` starts a threaded `http.server` on a free port and returns a `FileServer`:
`url(name)` is a file's address, `requests` records (path, Range header) of every request. Per file,
`truncate` sends the announced Content-Length but closes after that many bytes, and
`ranges=False` ignores Range headers (a server without resume support).
"""

import http.server
import threading


class FileServer:
    def __init__(self, files, ranges=True):
        self.files = dict(files)
        self.truncate = {}
        self.ranges = ranges
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name]
                start = 0
                header = self.headers.get("Range")
                if server.ranges and header and header.startswith("bytes="):
                    start = int(header[len("bytes="):].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                    self.send_header("Accept-Ranges", "bytes" if server.ranges else "none")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if name in server.truncate:
                    body = body[:server.truncate[name]]
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def url(self, name):
        return self.base + name

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(files, ranges=True):
    return FileServer(files, ranges=ranges)
