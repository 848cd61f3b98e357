#!/usr/bin/env python3
"""Writes a small llama-architecture GGUF with random weights (fixed seed), for checking and
measuring llama.cpp through Venus without downloading a model. Its tokenizer is a SentencePiece
("llama") vocabulary of the control tokens, the 256 byte tokens and printable ASCII, so any prompt
tokenizes. Runs in scripts/llama-root (python3-gguf, numpy).

Usage: llama-model.py OUT.gguf [--embd 64] [--layers 2] [--heads 4] [--ff 192] [--seed 7]
"""

import argparse

import gguf
import numpy as np


def vocab():
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(6)  # byte
    words = ["\u2581"] + [chr(c) for c in range(33, 127)]
    words += ["\u2581" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    for i, w in enumerate(words):
        tokens.append(w)
        scores.append(-float(i))
        types.append(1)  # normal
    return tokens, scores, types


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--embd", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ff", type=int, default=192)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    tokens, scores, types = vocab()
    n_vocab, d = len(tokens), a.embd

    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name("carbon-vm random llama")
    w.add_context_length(512)
    w.add_embedding_length(d)
    w.add_block_count(a.layers)
    w.add_feed_forward_length(a.ff)
    w.add_head_count(a.heads)
    w.add_head_count_kv(a.heads)
    w.add_rope_dimension_count(d // a.heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)

    def t(name, *shape, scale=None):
        # Weights scaled by fan-in keep activations in range; numpy's shape is ggml's reversed.
        s = scale if scale is not None else 1.0 / np.sqrt(shape[-1])
        w.add_tensor(name, (rng.standard_normal(shape) * s).astype(np.float32))

    t("token_embd.weight", n_vocab, d, scale=1.0)
    for i in range(a.layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, dtype=np.float32))
        for m in ("q", "k", "v", "output"):
            t(f"blk.{i}.attn_{m}.weight", d, d)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, dtype=np.float32))
        t(f"blk.{i}.ffn_gate.weight", a.ff, d)
        t(f"blk.{i}.ffn_up.weight", a.ff, d)
        t(f"blk.{i}.ffn_down.weight", d, a.ff)
    w.add_tensor("output_norm.weight", np.ones(d, dtype=np.float32))
    # Logits with a wide spread, so greedy decoding's choice is far from a tie; the control and
    # byte tokens get none (logit 0, below the best of the rest), so the text stays printable.
    out = rng.standard_normal((n_vocab, d)).astype(np.float32)
    out[: 3 + 256] = 0
    w.add_tensor("output.weight", out)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
