"""Padded tensors of a set of annotations' rankings: what every loss and backend consumes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from pluralign.core.columns import record_ranking_columns

if TYPE_CHECKING:
    from pluralign.core.data import Annotation

PAD = -1


@dataclass
class Rankings:
    """`ranking[n, L_max]` (indices best first, PAD after the end) and `mask[n, M_max]`
    (True where annotation n has a candidate)."""

    ranking: torch.Tensor
    mask: torch.Tensor
    _order: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_annotations(cls, records: Sequence[Annotation]) -> Rankings:
        """Pad the rankings and candidate masks of `records`."""
        return cls.from_columns(*record_ranking_columns(records))

    @classmethod
    def from_columns(cls, sizes: np.ndarray, lengths: np.ndarray, flat: np.ndarray) -> Rankings:
        """Pad from flat columns (pluralign.core.columns): each row's number of candidates, its
        ranking's length, and every ranking's indices concatenated in row order."""
        n = len(sizes)
        m_max = int(sizes.max()) if n else 2
        l_max = int(lengths.max()) if n else 1
        ranking = np.full((n, l_max), PAD, dtype=np.int64)
        ranking[np.arange(l_max) < lengths[:, None]] = flat  # row-major: each row's in order
        mask = torch.arange(m_max) < torch.from_numpy(np.ascontiguousarray(sizes))[:, None]
        return cls(torch.from_numpy(ranking), mask)

    def __len__(self) -> int:
        return self.ranking.shape[0]

    def select(self, index: torch.Tensor | Sequence[int]) -> Rankings:
        """The rows at `index`."""
        index = torch.as_tensor(index, dtype=torch.long)
        order = None if self._order is None else self._order[index.to(self._order.device)]
        return Rankings(self.ranking[index], self.mask[index], order)

    def order(self) -> torch.Tensor:
        """Each row's candidates as a permutation: ranked ones best first, then the unranked,
        then padding. Suffix sums over it are Plackett–Luce's 'not yet placed' sets.
        Computed once: losses call it at every evaluation."""
        if self._order is None:
            self._order = self._make_order()
        return self._order

    def _make_order(self) -> torch.Tensor:
        m = self.mask.shape[1]
        col = torch.arange(m, device=self.mask.device).expand_as(self.mask)
        key = torch.where(self.mask, self.positions() * (m + 1) + col,
                          torch.full_like(col, (m + 1) ** 2) + col)
        return torch.argsort(key, dim=1, stable=True)

    def to(self, device: torch.device | str) -> Rankings:
        """The same rankings on `device`."""
        order = None if self._order is None else self._order.to(device)
        return Rankings(self.ranking.to(device), self.mask.to(device), order)

    def positions(self) -> torch.Tensor:
        """Position of each candidate in its ranking; L_max for unranked or padded ones."""
        n, l_max = self.ranking.shape
        device = self.ranking.device
        pos = torch.full(self.mask.shape, l_max, dtype=torch.long, device=device)
        rows = torch.arange(n, device=device).unsqueeze(1).expand(n, l_max)
        valid = self.ranking >= 0
        steps = torch.arange(l_max, device=device).expand(n, l_max)
        pos[rows[valid], self.ranking[valid]] = steps[valid]
        return pos
