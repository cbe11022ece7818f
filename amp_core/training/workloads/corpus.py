"""Real text every machine has offline: the Python standard library's own source files.

A fixed selection (the top-level `*.py` files of `sysconfig`'s stdlib folder, in sorted order, until
`CORPUS_BYTES` are reached), read as characters; the vocabulary is the set of characters in it. The
split into training and held-out text is by blocks chosen with the run's seed. Another Python
version has other files, so a record notes the corpus's size and hash: two runs trained on the same
text iff their hashes agree. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

CORPUS_BYTES = 2**20  # about 1 MiB: enough text that a few thousand steps do not repeat it
SPLIT_BLOCK = 4096  # characters per block of the train/held-out split
HELD_OUT_SHARE = 0.1


@dataclass(frozen=True)
class Corpus:
    text: str
    files: tuple[str, ...]
    root: str
    sha256: str

    @functools.cached_property
    def vocab(self) -> list[str]:
        return sorted(set(self.text))

    @functools.cached_property
    def ids(self) -> torch.Tensor:
        """The text as vocabulary indices."""
        index = {ch: i for i, ch in enumerate(self.vocab)}
        return torch.tensor([index[ch] for ch in self.text], dtype=torch.long)

    def notes(self) -> dict:
        return {
            "source": "Python standard library (top-level *.py files, sorted)",
            "root": self.root,
            "python": platform.python_version(),
            "files": len(self.files),
            "first_file": self.files[0],
            "last_file": self.files[-1],
            "characters": len(self.text),
            "vocab_size": len(self.vocab),
            "sha256": self.sha256,
        }


@functools.lru_cache(maxsize=1)
def stdlib_corpus(limit_bytes: int = CORPUS_BYTES) -> Corpus:
    root = Path(sysconfig.get_paths()["stdlib"])
    chosen, parts, size = [], [], 0
    for path in sorted(root.glob("*.py")):
        if size >= limit_bytes:
            break
        data = path.read_bytes()
        chosen.append(path.name)
        parts.append(data)
        size += len(data)
    if not parts:
        raise FileNotFoundError(f"no Python source files in {root} (the standard library's folder, from sysconfig)")
    raw = b"\n".join(parts)
    return Corpus(raw.decode("utf-8", errors="replace"), tuple(chosen), str(root), hashlib.sha256(raw).hexdigest())


def split(ids: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and held-out ids: whole blocks, HELD_OUT_SHARE of them chosen with `seed`."""
    blocks = list(torch.split(ids, SPLIT_BLOCK))
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[: max(1, round(len(blocks) * HELD_OUT_SHARE))])
    train = torch.cat([b for i, b in enumerate(blocks) if i not in held])
    held_out = torch.cat([b for i, b in enumerate(blocks) if i in held])
    return train, held_out


class Windows(Dataset):
    """`count` windows of `context` characters at seeded random offsets, each with its next-character targets."""

    def __init__(self, ids: torch.Tensor, context: int, count: int, seed: int):
        if len(ids) <= context + 1:
            raise ValueError(f"context {context} is longer than the training text ({len(ids)} characters)")
        self.ids, self.context = ids, context
        self.starts = torch.randint(0, len(ids) - context - 1, (count,), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = int(self.starts[i])
        return self.ids[s : s + self.context], self.ids[s + 1 : s + self.context + 1]


def window_loader(ids: torch.Tensor, context: int, batch_size: int, batches: int, seed: int) -> DataLoader:
    return DataLoader(Windows(ids, context, batch_size * batches, seed), batch_size=batch_size, drop_last=True)
