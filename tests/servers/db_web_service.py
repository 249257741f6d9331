"""A web service that runs two PostgreSQL queries per request (tests/tests/db.rs).

Usage: db_web_service.py WEB_PORT PG_PORT. One thread serves (http.server), with one
connection to the database opened by the first request (after the agent started: the agent
recognises a PostgreSQL connection from its startup message).
"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

import psycopg

web_port, pg_port = int(sys.argv[1]), int(sys.argv[2])
db = None


def database():
    global db
    if db is None:
        db = psycopg.connect(f"host=127.0.0.1 port={pg_port} user=postgres dbname=postgres", autocommit=True)
    return db


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        db = database()
        tables = db.execute("SELECT count(*) FROM pg_class").fetchone()[0]
        name = db.execute("SELECT current_database()").fetchone()[0]
        body = f"{name}: {tables} tables\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", web_port), Handler).serve_forever()
