"""Token readouts: which tokens a change direction reads from or writes to the residual stream."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mechdiff.checkpoint.layout import READS_RESIDUAL, WRITES_RESIDUAL
from mechdiff.checkpoint.sources import TORCH_DTYPES, TensorSource, read_tensor
from mechdiff.errors import InputError


class Vocabulary:
    """Token id -> readable string, from tokenizer.json or vocab.txt; ids when neither exists."""

    def __init__(self, id_to_token: dict[int, str] | None = None) -> None:
        self._id_to_token = id_to_token or {}

    @classmethod
    def from_folder(cls, folder: Path | None) -> Vocabulary:
        """Load the tokenizer that sits beside a model (None -> ids only)."""
        if folder is None:
            return cls()
        if (folder / "tokenizer.json").is_file():
            return cls(_from_tokenizer_json(folder / "tokenizer.json"))
        if (folder / "vocab.txt").is_file():
            lines = (folder / "vocab.txt").read_text(encoding="utf-8", errors="replace").splitlines()
            return cls(dict(enumerate(lines)))
        return cls()

    @property
    def has_tokens(self) -> bool:
        return bool(self._id_to_token)

    def token(self, token_id: int) -> str:
        text = self._id_to_token.get(int(token_id))
        return f"#{int(token_id)}" if text is None else text


def _from_tokenizer_json(path: Path) -> dict[int, str]:
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises its own exception types
        raise InputError(f"{path} is not a readable tokenizer: {exc}") from exc
    return {token_id: token for token, token_id in tokenizer.get_vocab(with_added_tokens=True).items()}


@dataclass
class ReadoutMatrices:
    """Embedding (what the residual stream reads from tokens) and unembedding (what it writes to logits).

    Both are [vocab, d] in the checkpoint's stored dtype: a float32 copy of a 128k-token
    table is 2 GB, so products run in row blocks upcast one at a time; a table larger than
    the diff's streaming threshold stays on disk (a RowTable) and is read in those blocks. ``unembed_gain`` is
    the final norm's effective gain, applied to a direction before it meets the unembedding
    (W_U (g * x)), so the direction is read as the logits it would cause.
    """

    embed: torch.Tensor | RowTable | None
    unembed: torch.Tensor | RowTable | None
    vocab: Vocabulary
    unembed_gain: torch.Tensor | None = None
    _pending: list = field(default_factory=list, repr=False)

    def tokens_for(self, kind: str, U: np.ndarray, V: np.ndarray, n_dirs: int, top: int) -> tuple[list[str], list[str]]:
        """Readouts of the first ``n_dirs`` singular directions of a change.

        Args:
            kind: the tensor's kind (decides which side touches the residual stream).
            U: output-side singular vectors [out, k]; V: input-side [in, k].
            n_dirs: how many directions to read out.
            top: tokens per direction.

        Returns:
            (tokens_in, tokens_out): tokens the change reads, and tokens it writes.
        """
        found = {"tokens_in": [], "tokens_out": []}
        for attr, table, directions in self._requests(kind, U, V, n_dirs):
            found[attr] = self._tokens(_column_tops(table, directions, top))
        return found["tokens_in"], found["tokens_out"]

    def read_out(self, target: object, kind: str, U: np.ndarray, V: np.ndarray, n_dirs: int, top: int) -> None:
        """`tokens_for` into ``target.tokens_in`` / ``target.tokens_out``: at once through a table in
        memory, at `flush` through a RowTable (one pass over it for every change read out)."""
        for attr, table, directions in self._requests(kind, U, V, n_dirs):
            if isinstance(table, RowTable):
                self._pending.append((target, attr, table, directions, top))
            else:
                setattr(target, attr, self._tokens(_column_tops(table, directions, top)))

    def flush(self) -> None:
        """Finish the readouts `read_out` left for the streamed tables: one pass over each."""
        pending, self._pending = self._pending, []
        for table in {id(p[2]): p[2] for p in pending}.values():
            mine = [p for p in pending if p[2] is table]
            top = max(p[4] for p in mine)
            tops = _column_tops(table, np.concatenate([p[3] for p in mine], axis=1), top)
            start = 0
            for target, attr, _, directions, wanted in mine:
                cols = tops[start:start + directions.shape[1]]
                setattr(target, attr, self._tokens([ids[:wanted] for ids in cols]))
                start += directions.shape[1]

    def _requests(self, kind: str, U: np.ndarray, V: np.ndarray, n_dirs: int) -> list[tuple]:
        out = []
        if kind in READS_RESIDUAL and self.embed is not None and V.shape[0] == self.embed.shape[1]:
            out.append(("tokens_in", self.embed, V[:, :n_dirs]))
        if kind in WRITES_RESIDUAL and self.unembed is not None and U.shape[0] == self.unembed.shape[1]:
            U = U[:, :n_dirs] if self.unembed_gain is None else U[:, :n_dirs] * self.unembed_gain.numpy()[:, None]
            out.append(("tokens_out", self.unembed, U))
        return [(attr, table, np.ascontiguousarray(d, dtype=np.float32)) for attr, table, d in out]

    def _tokens(self, column_tops: list[list[int]]) -> list[str]:
        tokens: list[str] = []
        for ids in column_tops:
            for token_id in ids:
                text = self.vocab.token(token_id)
                if text not in tokens:
                    tokens.append(text)
        return tokens

    def moved_rows(self, delta_rows: torch.Tensor, top: int) -> list[str]:
        """Tokens whose embedding (or unembedding) rows moved most."""
        return self.moved_from_norms(torch.linalg.vector_norm(delta_rows.float(), dim=1), top)

    def moved_from_norms(self, norms: torch.Tensor, top: int) -> list[str]:
        """`moved_rows` from each row's ||delta row|| (a streamed table's, gathered block by block)."""
        idx = torch.topk(norms, min(top, norms.numel())).indices.tolist()
        return [self.vocab.token(i) for i in idx if norms[i] > 0]


READOUT_BLOCK_ROWS = 16384


class RowTable:
    """A [vocab, d] table left in its checkpoint and read a block of rows at a time.

    Why: a 128k-token embedding is 1 GB even in bf16, and an untied unembedding another;
    the readouts only ever multiply row blocks of it (`rows_times`, the routing readout).
    ``table[a:b]`` is a view of one reused buffer, valid until the next read.
    """

    def __init__(self, source: TensorSource, name: str) -> None:
        meta = source.meta(name)
        self.shape = torch.Size((meta.shape[0], math.prod(meta.shape[1:])))
        self.dtype = TORCH_DTYPES[meta.dtype]
        self._source, self._name = source, name
        self._buffer = np.empty(0, np.uint8)

    def __getitem__(self, rows: slice) -> torch.Tensor:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("a RowTable reads contiguous row slices only")
        start, stop, _ = rows.indices(self.shape[0])
        need = max(stop - start, 0) * self.shape[1] * self.dtype.itemsize
        if len(self._buffer) < need:
            self._buffer = np.empty(0, np.uint8)  # free the old one first
            self._buffer = np.empty(need, np.uint8)
        block = read_tensor(self._source, self._name, self._buffer, slice(start, stop))
        return block.reshape(max(stop - start, 0), self.shape[1])


def rows_times(table: torch.Tensor | RowTable, matrix: torch.Tensor) -> torch.Tensor:
    """``table.float() @ matrix`` for a [rows, d] table in any float dtype, upcasting one block of
    rows at a time (the float32 copy of a 128k-token table alone would be 2 GB)."""
    if isinstance(table, torch.Tensor) and table.dtype == torch.float32:
        return table @ matrix
    out = torch.empty(table.shape[0], matrix.shape[1])
    for start in range(0, table.shape[0], READOUT_BLOCK_ROWS):
        out[start:start + READOUT_BLOCK_ROWS] = table[start:start + READOUT_BLOCK_ROWS].float() @ matrix
    return out


def _column_tops(table: torch.Tensor | RowTable, directions: np.ndarray, top: int) -> list[list[int]]:
    """Per column of ``table @ directions``: the ids of its `top` largest entries, descending,
    after orienting the column so its strongest entry is positive (a singular vector's sign
    is arbitrary). A RowTable is read once, keeping each column's running extremes."""
    matrix = torch.from_numpy(directions)
    if not isinstance(table, RowTable):
        return [_oriented_top(col, top) for col in rows_times(table, matrix).T]
    r, k = matrix.shape[1], min(top, table.shape[0])
    high_v, high_i = torch.empty(0, r), torch.empty(0, r, dtype=torch.long)
    low_v, low_i = torch.empty(0, r), torch.empty(0, r, dtype=torch.long)
    for start in range(0, table.shape[0], READOUT_BLOCK_ROWS):
        scores = table[start:start + READOUT_BLOCK_ROWS].float() @ matrix
        ids = torch.arange(start, start + scores.shape[0]).unsqueeze(1).expand_as(scores)
        high_v, high_i = _merge_top(high_v, high_i, scores, ids, k)
        low_v, low_i = _merge_top(low_v, low_i, -scores, ids, k)
    # orient as _oriented_top does: col.max() >= -col.min() keeps the column's sign
    return [(high_i[:, j] if high_v[0, j] >= low_v[0, j] else low_i[:, j]).tolist() for j in range(r)]


def _merge_top(values: torch.Tensor, ids: torch.Tensor, scores: torch.Tensor, score_ids: torch.Tensor,
               k: int) -> tuple[torch.Tensor, torch.Tensor]:
    values, ids = torch.cat([values, scores]), torch.cat([ids, score_ids])
    best = torch.topk(values, min(k, values.shape[0]), dim=0)
    return best.values, torch.gather(ids, 0, best.indices)


def _oriented_top(col: torch.Tensor, top: int) -> list[int]:
    col = col if col.max() >= -col.min() else -col
    return torch.topk(col, min(top, col.numel())).indices.tolist()
