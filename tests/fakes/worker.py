"""A misbehaving engine worker: speaks ARK's worker protocol (ark.engines.frames) until it is told to break it.

``python tests/fakes/worker.py MODE --fd N ...`` (the engine appends its usual arguments). Its CPU variant
is the first of zen4, icelake, haswell that ``--exclude`` does not name.

* ``ok``: answers load, and every generation with one chunk (when streamed) and a done;
* ``burst``: as ok, but a streamed answer is 100 chunks and the done in one write;
* ``hold``: greets, answers a generation with one chunk, then never again;
* ``hang-load``: greets, then never answers a load (it touches ``$ARK_FAKE_WORKER_MARK`` when it gets one);
* ``garbage``: answers the first operation with bytes that are not JSON;
* ``not-an-object``: answers with a JSON array;
* ``oversized``: answers with a header that announces a 1 GiB frame;
* ``stranger``: answers a request ARK never sent (an unknown id);
* ``bad-type``: answers with a frame of an unknown type;
* ``wrong-end``: answers a generation with a ``loaded`` frame;
* ``bad-hello``: greets with data that is not an object;
* ``segv``: dies of SIGSEGV at the first operation, whatever its variant;
* ``segv-on-zen4``: as ok, but dies of SIGSEGV at the first operation when its variant is zen4;
* ``segv-at-start``: dies of SIGSEGV before it greets;
* ``shout``: at the first operation writes 1 MiB to stderr with no line end, a last line
  ``GGML_ASSERT(boom) failed`` and aborts (SIGABRT), as llama.cpp does on a failed assertion.

It appends its argv, one argument per line, to ``$ARK_FAKE_WORKER_ARGV`` when that is set.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path

from ark.engines import frames

CHUNK = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "x"}}]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--exclude", default="")
    args, _ = parser.parse_known_args()
    mode = args.mode
    variant = next(v for v in ("zen4", "icelake", "haswell") if v not in args.exclude.split(","))
    if os.environ.get("ARK_FAKE_WORKER_ARGV"):
        with open(os.environ["ARK_FAKE_WORKER_ARGV"], "a") as out:
            out.write("\n".join(sys.argv) + "\n---\n")
    sock = socket.socket(fileno=args.fd)

    def send(frame: dict[str, object]) -> None:
        sock.sendall(frames.encode(frame))

    if mode == "segv-at-start":
        os.kill(os.getpid(), signal.SIGSEGV)
    if mode == "bad-hello":
        send({"id": 0, "type": "hello", "data": "zen4"})
    send({"id": 0, "type": "hello", "data": {"pid": os.getpid(), "variant": variant}})
    while (op := frames.read_blocking(sock)) is not None:
        job = op["id"]
        if op.get("op") in ("cancel", "stats"):
            continue
        if mode == "segv" or (mode == "segv-on-zen4" and variant == "zen4"):
            os.kill(os.getpid(), signal.SIGSEGV)
        elif mode == "hang-load" and op["op"] == "load":
            if os.environ.get("ARK_FAKE_WORKER_MARK"):
                Path(os.environ["ARK_FAKE_WORKER_MARK"]).touch()
            time.sleep(3600)
        elif mode in ("ok", "burst", "segv-on-zen4", "hold", "hang-load"):
            if op["op"] == "load":
                send({"id": job, "type": "loaded"})
                continue
            if op.get("stream") and mode == "burst":
                sock.sendall(b"".join(frames.encode({"id": job, "type": "chunk", "data": CHUNK}) for _ in range(100)))
            elif op.get("stream"):
                send({"id": job, "type": "chunk", "data": CHUNK})
            if mode == "hold":
                time.sleep(3600)
            send({"id": job, "type": "done", "data": CHUNK, "sampled": 1})
        elif mode == "garbage":
            sock.sendall(struct.pack(">I", 9) + b"not json!")
        elif mode == "not-an-object":
            sock.sendall(struct.pack(">I", 7) + b"[1,2,3]")
        elif mode == "oversized":
            sock.sendall(struct.pack(">I", 1 << 30) + b"{}")
        elif mode == "stranger":
            send({"id": job + 1000, "type": "done", "data": {}})
        elif mode == "bad-type":
            send({"id": job, "type": "surprise", "data": {}})
        elif mode == "wrong-end":
            send({"id": job, "type": "loaded"})
        elif mode == "shout":
            sys.stderr.write("x" * (1 << 20) + "\nGGML_ASSERT(boom) failed\n")
            sys.stderr.flush()
            os.abort()


if __name__ == "__main__":
    main()
