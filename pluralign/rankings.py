"""Padded tensors of a set of annotations' rankings: what every loss and backend consumes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pluralign.data import Annotation

PAD = -1


@dataclass
class Rankings:
    """`ranking[n, L_max]` (indices best first, PAD after the end) and `mask[n, M_max]`
    (True where annotation n has a candidate)."""

    ranking: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def from_annotations(cls, records: Sequence[Annotation]) -> Rankings:
        """Pad the rankings and candidate masks of `records`."""
        n = len(records)
        m_max = max((a.m for a in records), default=2)
        l_max = max((a.L for a in records), default=1)
        ranking = torch.full((n, l_max), PAD, dtype=torch.long)
        mask = torch.zeros((n, m_max), dtype=torch.bool)
        for i, a in enumerate(records):
            ranking[i, : a.L] = torch.tensor(a.ranking)
            mask[i, : a.m] = True
        return cls(ranking, mask)

    def __len__(self) -> int:
        return self.ranking.shape[0]

    def select(self, index: torch.Tensor | Sequence[int]) -> Rankings:
        """The rows at `index`."""
        index = torch.as_tensor(index, dtype=torch.long)
        return Rankings(self.ranking[index], self.mask[index])

    def to(self, device: torch.device | str) -> Rankings:
        """The same rankings on `device`."""
        return Rankings(self.ranking.to(device), self.mask.to(device))

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
