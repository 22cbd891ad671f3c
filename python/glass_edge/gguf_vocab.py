"""Synthetic SPM ("llama") tokenizers for random-weight GGUF models (synth_tiny, synth).

The vocab is specials, 256 byte tokens (byte fallback: any text tokenizes), the SPM pieces of
some common English words, then made-up filler pieces up to any size, so a model of any vocab
size (32000, 128256, 151936, ...) loads in stock llama.cpp and can be prompted with text.
"""
from __future__ import annotations

import itertools
import string

import gguf

__all__ = ["UNK_ID", "BOS_ID", "EOS_ID", "PAD_ID", "N_SPECIAL", "spm_vocab", "add_spm_tokenizer"]

# Special token ids, written explicitly into the GGUF.
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
N_SPECIAL = 4
MIN_PIECES = 27  # "▁" and the 26 letters

_WORDS = (
    "the a quick brown fox jumps over lazy dog and of to in is it that was "
    "for on with as he she they be at by this had not are but from or have "
    "an what were we when your can said there use each which do how their if "
    "will up other about out many then them these so some her would make like "
    "him into time has look two more write go see number no way could people"
).split()


def _word_pieces() -> list:
    # llama.cpp's SPM tokenizer merges adjacent symbols only when the merged string is itself in
    # the vocab, so each word needs all of its prefixes ("▁t", "▁th", "▁the"); letters come first.
    pieces = ["▁"] + list(string.ascii_lowercase)
    for w in _WORDS:
        pieces += ["▁" + w[:k] for k in range(1, len(w) + 1)]
    pieces += ["▁" + a + b for a in string.ascii_lowercase for b in string.ascii_lowercase]
    return list(dict.fromkeys(pieces))  # dedupe, keep order (llama.cpp asserts unique texts)


def _filler_pieces():
    """Endless pieces "▁aaa", "▁aab", ..., then 4 letters, ... (some equal a word piece: the
    caller skips those)."""
    for n in itertools.count(3):
        for letters in itertools.product(string.ascii_lowercase, repeat=n):
            yield "▁" + "".join(letters)


def spm_vocab(n_vocab: int) -> tuple:
    """(tokens, scores, token types) of an SPM vocab with exactly n_vocab entries."""
    T = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>", "<pad>"]
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL, T.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [T.BYTE] * 256

    n_pieces = n_vocab - len(tokens)
    if n_pieces < MIN_PIECES:
        raise ValueError(f"n_vocab must be >= {len(tokens) + MIN_PIECES}")
    pieces = _word_pieces()[:n_pieces]
    if len(pieces) < n_pieces:
        seen = set(pieces)
        for p in _filler_pieces():
            if p not in seen:
                pieces.append(p)
                if len(pieces) == n_pieces:
                    break
    tokens += pieces
    types += [T.NORMAL] * n_pieces
    # SPM scores: higher merges first; longer pieces score higher so whole words win.
    scores = [0.0] * (n_vocab - n_pieces) + [float(len(p)) - i * 1e-4 for i, p in enumerate(pieces)]
    return tokens, scores, [int(t) for t in types]


def add_spm_tokenizer(writer: gguf.GGUFWriter, n_vocab: int) -> None:
    """Write the tokenizer.ggml.* keys of spm_vocab(n_vocab) (BOS added, EOS not)."""
    tokens, scores, types = spm_vocab(n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_unk_token_id(UNK_ID)
    writer.add_pad_token_id(PAD_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
