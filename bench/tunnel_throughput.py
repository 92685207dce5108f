"""Throughput of one WebSocket tunnel through guardproxy, against the same transfer direct.

A raw upstream answers the opening handshake with a valid 101 and then, per the path, sends
`--mib` blocks of about 1 MiB to the client (`/down`) or reads them from it and says `done`
(`/up`). A block is binary frames of `--frame` payload bytes each: guardproxy follows frame
boundaries (to send 1001 at shutdown), so the frame size is what its per-frame work depends on.
Each round runs both directions direct and through guardproxy (interleaved); the report is the
median MiB/s per case and the ratio through/direct. One guardproxy worker, started through its
CLI.

Usage: python bench/tunnel_throughput.py [--mib 256] [--rounds 5] [--frame 65536]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

MIB = 1024 * 1024
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = base64.b64encode(os.urandom(16))


def block_of_frames(payload: int) -> bytes:
    """About 1 MiB of binary frames (unmasked: the frame tracker does not look at masks)."""
    if payload < 126:
        header = bytes([0x82, payload])
    elif payload < 65536:
        header = bytes([0x82, 126]) + payload.to_bytes(2, "big")
    else:
        header = bytes([0x82, 127]) + payload.to_bytes(8, "big")
    frame = header + b"\x5a" * payload
    return frame * max(1, MIB // len(frame))


async def upstream_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mib: int, block: bytes
) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    key = next(
        line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())  # noqa: S324 - RFC 6455
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
    writer.write(b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    if head.startswith(b"GET /down "):
        for _ in range(mib):
            writer.write(block)
            await writer.drain()
    else:
        await reader.readexactly(mib * len(block))
        writer.write(b"done")
        await writer.drain()
    writer.close()


def run_upstream(port: int, mib: int, frame: int) -> None:
    block = block_of_frames(frame)

    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: upstream_connection(r, w, mib, block), "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def transfer(port: int, direction: str, mib: int, block: bytes) -> float:
    """MiB/s of one transfer through a fresh tunnel to `port`."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            f"GET /{direction} HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY.decode()}\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 101"), data[:100]
        received = len(data.split(b"\r\n\r\n", 1)[1])
        started = time.perf_counter()
        total = mib * len(block)
        if direction == "down":
            while received < total:
                chunk = sock.recv(4 * MIB)
                assert chunk, "closed early"
                received += len(chunk)
        else:
            for _ in range(mib):
                sock.sendall(block)
            assert sock.recv(16) == b"done"
        return total / MIB / (time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(port: int) -> None:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frame", type=int, default=65536, help="payload bytes per frame")
    args = parser.parse_args()
    block = block_of_frames(args.frame)
    upstream_port, proxy_port, admin_port = free_port(), free_port(), free_port()
    upstream = subprocess.Popen(
        [sys.executable, __file__, "--serve-upstream", str(upstream_port), str(args.mib), str(args.frame)]
    )
    wait_for(upstream_port)
    proxy = subprocess.Popen(
        [
            *(sys.executable, "-m", "guardproxy", "run", "--upstream", f"http://127.0.0.1:{upstream_port}"),
            *("--listen", f"127.0.0.1:{proxy_port}", "--admin-listen", f"127.0.0.1:{admin_port}"),
        ],
        stdout=subprocess.DEVNULL,
        env={**os.environ, "GUARDPROXY_SERVER__DRAIN_DELAY": "0"},
    )
    try:
        wait_for(proxy_port)
        results: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for direction in ("down", "up"):
                for name, port in (("direct", upstream_port), ("guardproxy", proxy_port)):
                    results.setdefault(f"{direction} {name}", []).append(transfer(port, direction, args.mib, block))
        print(f"one tunnel, {args.mib} MiB per transfer in {args.frame}-byte frames, median of {args.rounds} rounds")
        for direction in ("down", "up"):
            direct = statistics.median(results[f"{direction} direct"])
            through = statistics.median(results[f"{direction} guardproxy"])
            label = "upstream -> client" if direction == "down" else "client -> upstream"
            ratio = through / direct
            print(f"  {label} MiB/s: direct {direct:6.0f}  through guardproxy {through:6.0f}  ratio {ratio:.2f}")
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(30)
        upstream.kill()
        upstream.wait()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve-upstream":
        run_upstream(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
