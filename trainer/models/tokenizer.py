"""A character-level tokenizer for the built-in tasks: one token per character.

Small on purpose: the toy tasks (addition, reverse, sort) need digits, letters and a handful of
symbols, and a character vocabulary makes every response length equal to its token count.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
DEFAULT_CHARS: str = (
    string.digits + string.ascii_lowercase + string.ascii_uppercase + " +-*/=,.:;?!()<>[]_'\"#|"
)


class CharTokenizer:
    """Maps characters to ids; ids 0..3 are ``<pad> <bos> <eos> <unk>``.

    Unknown characters encode to ``unk_id`` (never raise), and ``decode`` drops special tokens
    unless ``skip_special=False``.
    """

    def __init__(self, chars: str = DEFAULT_CHARS) -> None:
        if len(set(chars)) != len(chars):
            raise ValueError("tokenizer characters must be unique")
        self.chars = chars
        self.id_to_token: list[str] = [*SPECIAL_TOKENS, *chars]
        self._char_to_id = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(chars)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = 0, 1, 2, 3

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = [self._char_to_id.get(c, self.unk_id) for c in text]
        if add_bos:
            ids.insert(0, self.bos_id)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = True,
               stop_at_eos: bool = True) -> str:  # fmt: skip
        """Text of ``ids``; stops at the first ``<eos>`` unless ``stop_at_eos=False``."""
        out: list[str] = []
        n_special = len(SPECIAL_TOKENS)
        for i in ids:
            i = int(i)
            if stop_at_eos and i == self.eos_id:
                break
            if i < n_special:
                if not skip_special:
                    out.append(self.id_to_token[i])
                continue
            out.append(self.id_to_token[i] if i < self.vocab_size else UNK)
        return "".join(out)

    def batch_decode(self, batch: Sequence[Sequence[int]], **kwargs: bool) -> list[str]:
        return [self.decode(ids, **kwargs) for ids in batch]

    def config(self) -> dict[str, str]:
        """Enough to rebuild the tokenizer (used in cache keys and checkpoints)."""
        return {"kind": "char", "chars": self.chars}
