"""Write a tiny random-weight llama GGUF that llama.cpp's server can load and serve.

The model is useless as a language model, but it exercises the real server: real
tokenizer, real slots and batching, real usage accounting. Everything lives in one
file (tokenizer included), so no model hub is needed.

Vocabulary (SentencePiece-style, ``tokenizer.ggml.model = "llama"``):

* ``<unk>``, ``<s>`` (BOS), ``</s>`` (EOS);
* 256 byte tokens ``<0x00>``..``<0xFF>`` so any UTF-8 text tokenizes (byte fallback);
* ``▁`` (the SPM space), lowercase letters, digits, some punctuation and a few merged
  pieces, so ordinary English text costs fewer tokens than bytes.

The output projection only gives non-zero logits to the "normal" pieces, and is
scaled so their logits dwarf the zero logit of EOS: sampling practically never picks
EOS (or a control/byte token), so every completion runs to ``max_tokens`` and the
generated text is plain ASCII.
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt

_SPACE = "\u2581"  # SentencePiece's visible space: llama.cpp maps " " to it

# Merged pieces: every piece is reachable by merging two shorter vocabulary entries,
# which is how llama.cpp's SPM tokenizer builds tokens.
_PIECES = (
    "th",
    "he",
    "in",
    "er",
    "an",
    "on",
    "re",
    "at",
    "en",
    "or",
    "es",
    "is",
    "it",
    "nd",
    _SPACE + "t",
    _SPACE + "a",
    _SPACE + "i",
    _SPACE + "o",
    _SPACE + "s",
    _SPACE + "w",
    _SPACE + "th",
    _SPACE + "the",
    _SPACE + "an",
    _SPACE + "and",
    _SPACE + "of",
    _SPACE + "in",
    _SPACE + "is",
    _SPACE + "it",
    _SPACE + "to",
)
_SINGLE_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"

# A minimal chat template (Jinja, as llama.cpp's server renders it) so chat requests
# do not depend on llama.cpp's fallback template choice.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)

BOS_ID = 1
EOS_ID = 2


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    scores = [0.0, 0.0, 0.0]
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>")
        types.append(gguf.TokenType.BYTE)
        scores.append(0.0)
    # SPM merges the adjacent pair whose result has the highest score: longer pieces
    # score higher so they win over their parts; single characters score lowest.
    for char in _SPACE + _SINGLE_CHARS:
        tokens.append(char)
        types.append(gguf.TokenType.NORMAL)
        scores.append(-100.0)
    for piece in _PIECES:
        tokens.append(piece)
        types.append(gguf.TokenType.NORMAL)
        scores.append(-100.0 + 10.0 * len(piece))
    return tokens, scores, [int(t) for t in types]


def write_tiny_llama(
    path: Path,
    *,
    n_layers: int = 2,
    hidden: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    ffn: int = 128,
    ctx_len: int = 4096,
    seed: int = 0,
) -> Path:
    """Write the model to ``path`` (parent directories are created) and return it.

    The vocabulary size is fixed (~330 tokens, see the module docstring); the file is
    about 0.5 MB with the defaults and takes a few tens of milliseconds to write.
    """
    if hidden % n_heads or n_heads % n_kv_heads:
        raise ValueError("hidden must divide by n_heads, and n_heads by n_kv_heads")
    tokens, scores, types = _vocab()
    vocab = len(tokens)
    head_dim = hidden // n_heads
    rng = np.random.default_rng(seed)

    def dense(n_out: int, n_in: int) -> npt.NDArray[np.float32]:
        # 1/sqrt(n_in) keeps activations around unit scale through the layers.
        scale = 1.0 / math.sqrt(n_in)
        return (rng.standard_normal((n_out, n_in)) * scale).astype(np.float32)

    ones = np.ones(hidden, dtype=np.float32)

    # After the final RMS norm the hidden state has unit RMS, so a row with entries of
    # std s gives logits of std s*sqrt(hidden). With s=2 (std ~16 for hidden=64) the top
    # normal tokens sit tens of nats above the zeroed rows (EOS, control, bytes).
    output = (rng.standard_normal((vocab, hidden)) * 2.0).astype(np.float32)
    normal = np.array(types) == int(gguf.TokenType.NORMAL)
    output[~normal] = 0.0

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("openbatch-tiny-llama")
    writer.add_context_length(ctx_len)
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(True)
    writer.add_chat_template(CHAT_TEMPLATE)

    writer.add_tensor("token_embd.weight", rng.standard_normal((vocab, hidden)).astype(np.float32))
    for i in range(n_layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        writer.add_tensor(f"blk.{i}.attn_q.weight", dense(hidden, hidden))
        writer.add_tensor(f"blk.{i}.attn_k.weight", dense(n_kv_heads * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_v.weight", dense(n_kv_heads * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_output.weight", dense(hidden, hidden))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", dense(ffn, hidden))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", dense(ffn, hidden))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", dense(hidden, ffn))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


if __name__ == "__main__":
    import sys

    print(write_tiny_llama(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny.gguf")))
