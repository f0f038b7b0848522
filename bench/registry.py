#!/usr/bin/env python3
"""A minimal in-memory stand-in for the Confluent Schema Registry (the
endpoints Sluice's producer uses), for benchmarks: python3 bench/registry.py PORT"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

schemas, subjects = [], {}


class H(BaseHTTPRequestHandler):
    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        parts = self.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "subjects" or parts[2] != "versions":
            return self.reply(404, {"error_code": 404})
        schema = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["schema"]
        ids = subjects.setdefault(parts[1], [])
        for i in ids:
            if schemas[i - 1] == schema:
                return self.reply(200, {"id": i})
        schemas.append(schema)
        ids.append(len(schemas))
        self.reply(200, {"id": len(schemas)})

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
