"""A misbehaving engine worker: speaks ARK's worker protocol (ark.engines.frames) until it is told to break it.

``python tests/fakes/worker.py MODE [--variant NAME] --fd N ...`` (the engine appends its usual arguments):

* ``ok``: answers load, and every generation with one chunk and a done (for the engine's bookkeeping);
* ``garbage``: greets, then answers the first operation with bytes that are not JSON;
* ``not-an-object``: answers with a JSON array;
* ``oversized``: answers with a header that announces a 1 GiB frame;
* ``stranger``: answers a request ARK never sent (an unknown id);
* ``bad-type``: answers with a frame of an unknown type;
* ``segv``: greets, then dies of SIGSEGV at the first operation;
* ``segv-at-start``: dies of SIGSEGV before it greets;
* ``shout``: greets, then at the first operation writes 1 MiB to stderr with no line end, a last line
  ``GGML_ASSERT(boom) failed`` and aborts (SIGABRT), as llama.cpp does on a failed assertion.

It writes its argv, one argument per line, to ``$ARK_FAKE_WORKER_ARGV`` when that is set.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import struct
import sys

from ark.engines import frames


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--variant", default="zen4")
    args, _ = parser.parse_known_args()
    if os.environ.get("ARK_FAKE_WORKER_ARGV"):
        with open(os.environ["ARK_FAKE_WORKER_ARGV"], "a") as out:
            out.write("\n".join(sys.argv) + "\n---\n")
    sock = socket.socket(fileno=args.fd)
    if args.mode == "segv-at-start":
        os.kill(os.getpid(), signal.SIGSEGV)
    sock.sendall(frames.encode({"id": 0, "type": "hello", "data": {"pid": os.getpid(), "variant": args.variant}}))
    while (op := frames.read_blocking(sock)) is not None:
        job = op["id"]
        if op.get("op") in ("cancel", "stats"):
            continue
        if args.mode == "ok":
            if op["op"] == "load":
                sock.sendall(frames.encode({"id": job, "type": "loaded"}))
                continue
            chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "x"}}]}
            if op.get("stream"):
                sock.sendall(frames.encode({"id": job, "type": "chunk", "data": chunk}))
            sock.sendall(frames.encode({"id": job, "type": "done", "data": chunk, "sampled": 1}))
        elif args.mode == "garbage":
            sock.sendall(struct.pack(">I", 9) + b"not json!")
        elif args.mode == "not-an-object":
            sock.sendall(struct.pack(">I", 7) + b"[1,2,3]")
        elif args.mode == "oversized":
            sock.sendall(struct.pack(">I", 1 << 30) + b"{}")
        elif args.mode == "stranger":
            sock.sendall(frames.encode({"id": job + 1000, "type": "done", "data": {}}))
        elif args.mode == "bad-type":
            sock.sendall(frames.encode({"id": job, "type": "surprise", "data": {}}))
        elif args.mode == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif args.mode == "shout":
            sys.stderr.write("x" * (1 << 20) + "\nGGML_ASSERT(boom) failed\n")
            sys.stderr.flush()
            os.abort()


if __name__ == "__main__":
    main()
