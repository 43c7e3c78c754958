"""One timed generation with the llama-cpp-python unpacked in SITE: run by run.py, prints one JSON line.

    python worker.py SITE MODEL --threads N --tokens N --seed N

SITE goes first on sys.path, so ``import llama_cpp`` finds that build and not the one installed in the
venv. The CPU backend is registered the way ARK's embedded engine does it (``load_cpu_backend``), which
for a build without variants (native) does nothing and says ``builtin``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "Explain in a few paragraphs how a compiler turns source code into machine code: lexing, parsing, "
    "the intermediate representation, optimisation passes, register allocation and code generation. "
    "Mention why the instruction set the compiler targets matters for speed.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("site")
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--tokens", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    a = ap.parse_args()
    sys.path.insert(0, a.site)

    from ark.engines.cpu_backend import load_cpu_backend

    variant = load_cpu_backend()
    import llama_cpp

    assert llama_cpp.__file__ and llama_cpp.__file__.startswith(a.site), llama_cpp.__file__
    llm = llama_cpp.Llama(
        model_path=a.model,
        n_ctx=1024,
        n_threads=a.threads,
        n_threads_batch=a.threads,
        seed=a.seed,
        verbose=False,
    )
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    _generate(llm, prompt, 8)  # warm-up: first-touch page faults and thread start-up are not measured
    llm.reset()
    stamps = _generate(llm, prompt, a.tokens)
    first, last = stamps[1], stamps[-1]
    print(
        json.dumps(
            {
                "variant": variant,
                "system_info": llama_cpp.llama_print_system_info().decode(),
                "prompt_tokens": len(prompt),
                "tokens": a.tokens,
                "prompt_tps": len(prompt) / (first - stamps[0]),
                "gen_tps": (a.tokens - 1) / (last - first),
            }
        )
    )


def _generate(llm: Any, prompt: list[int], n: int) -> list[float]:
    """Greedy tokens, exactly n of them (an end token does not stop it): the start time, then each token's."""
    stamps = [time.perf_counter()]
    for _token in llm.generate(prompt, temp=0.0, reset=True):
        stamps.append(time.perf_counter())
        if len(stamps) > n:
            break
    return stamps


if __name__ == "__main__":
    main()
