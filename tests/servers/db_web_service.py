"""A web service that runs two database queries per request (tests/src/databases.rs).

Usage: db_web_service.py postgres|mysql WEB_PORT DB_PORT. One thread serves (http.server),
with one connection to the database opened by the first request (after the agent started:
the agent recognises the connection from its first bytes, PostgreSQL's startup message or
MySQL's greeting).
"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

backend, web_port, db_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
QUERIES = {
    "postgres": ("SELECT count(*) FROM pg_class", "SELECT current_database()"),
    "mysql": ("SELECT count(*) FROM items", "SELECT DATABASE()"),
}[backend]
db = None


def database():
    global db
    if db is None:
        if backend == "postgres":
            import psycopg

            db = psycopg.connect(f"host=127.0.0.1 port={db_port} user=postgres dbname=postgres", autocommit=True)
        else:
            import mysql.connector

            db = mysql.connector.connect(host="127.0.0.1", port=db_port, user="root", database="shop", autocommit=True)
    return db


def one_value(sql):
    cur = database().cursor()
    cur.execute(sql)
    return cur.fetchall()[0][0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        count, name = (one_value(sql) for sql in QUERIES)
        body = f"{name}: {count}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", web_port), Handler).serve_forever()
