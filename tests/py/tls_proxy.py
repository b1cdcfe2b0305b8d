"""A TLS-terminating TCP proxy for the tests: HTTPS in front of a plain service.

Usage: tls_proxy.py CERT KEY TARGET_HOST TARGET_PORT [LOG]

Listens on 127.0.0.1 on a free port, prints that port on one line once it
accepts connections, and forwards every decrypted connection to the target
(plain TCP) until it is killed.  With LOG, one line per accepted TLS
connection is appended to that file.  Python's ssl module (OpenSSL) does the TLS.
"""

import asyncio
import ssl
import sys


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    cert, key, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)

    log = sys.argv[5] if len(sys.argv) > 5 else None

    async def handle(client_reader, client_writer):
        if log:
            with open(log, "a") as f:
                f.write("connection\n")
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, up_writer), pipe(up_reader, client_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
