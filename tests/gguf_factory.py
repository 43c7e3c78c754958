"""Write a tiny random-weight llama GGUF that llama.cpp loads and runs, offline, in ~0.1 s.

The text it generates is meaningless, but every engine path is real: tokenizer,
chat template (ChatML, from the file's metadata), sampling, streaming and mean
pooled embeddings. Weights come from a seeded RandomState, so a seed gives the
same file and, at temperature 0, the same output on every run.

Only printable tokens get output weights, so the model never ends by itself:
generation stops at max_tokens ("length"), at a stop string, or when the end
token is forced with ``logit_bias={END_TOKEN: 100}`` ("stop").
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
END_TOKEN = 4  # <|im_end|>: the end-of-turn token the chat template closes turns with
_WORDS = ["the", "a", "of", "and", "to", "in", "is", "it", "hello", "world", "ark", "model", "test", "yes", "no", "ok"]


def _vocab() -> tuple[list[str], list[int]]:
    kinds = gguf.TokenType
    tokens = list(SPECIAL)
    types = [int(kinds.UNKNOWN)] + [int(kinds.CONTROL)] * (len(SPECIAL) - 1)
    tokens += [f"<0x{b:02X}>" for b in range(256)]  # byte fallback: any text can be tokenized
    types += [int(kinds.BYTE)] * 256
    pieces = ["\u2581"] + [chr(c) for c in range(0x21, 0x7F)]
    pieces += sorted({"\u2581" + w[:n] for w in _WORDS for n in range(1, len(w) + 1)} - set(pieces))
    tokens += pieces
    types += [int(kinds.NORMAL)] * len(pieces)
    return tokens, types


def make_tiny_gguf(
    path: Path, *, seed: int = 0, n_embd: int = 64, n_layer: int = 2, n_ctx: int = 2048, chat_template: str = CHATML
) -> Path:
    """Write the model to ``path`` and return it (``chat_template``: what its metadata says, ChatML by default)."""
    n_head, n_head_kv, n_ff = 4, 2, 128
    head_dim = n_embd // n_head
    tokens, types = _vocab()
    rng = np.random.RandomState(seed)

    def weight(rows: int, cols: int, scale: float) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("ark-test-tiny")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0 if t != int(gguf.TokenType.NORMAL) else -1.0 - i / 1e3 for i, t in enumerate(types)])
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(END_TOKEN)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(chat_template)

    scale = n_embd**-0.5
    writer.add_tensor("token_embd.weight", weight(len(tokens), n_embd, 1.0))
    for layer in range(n_layer):
        prefix = f"blk.{layer}."
        writer.add_tensor(prefix + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(prefix + "attn_q.weight", weight(n_head * head_dim, n_embd, scale))
        writer.add_tensor(prefix + "attn_k.weight", weight(n_head_kv * head_dim, n_embd, scale))
        writer.add_tensor(prefix + "attn_v.weight", weight(n_head_kv * head_dim, n_embd, scale))
        writer.add_tensor(prefix + "attn_output.weight", weight(n_embd, n_head * head_dim, scale))
        writer.add_tensor(prefix + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(prefix + "ffn_gate.weight", weight(n_ff, n_embd, scale))
        writer.add_tensor(prefix + "ffn_up.weight", weight(n_ff, n_embd, scale))
        writer.add_tensor(prefix + "ffn_down.weight", weight(n_embd, n_ff, n_ff**-0.5))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    output = weight(len(tokens), n_embd, 0.5)  # peaked logits: greedy decoding has no near-ties
    output[np.array(types) != int(gguf.TokenType.NORMAL)] = 0.0  # never sample control or byte tokens
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
