"""Breaking ties between equally loaded servers in smooth weighted round robin order."""

from __future__ import annotations


class SmoothTies:
    """nginx's smooth weighted round robin, run over whichever servers tie.

    Only the tied servers take part in a step: each adds its weight to its
    current value, the largest wins and pays the step's total. So idle equal
    servers take turns, and idle weighted servers share by weight.
    """

    __slots__ = ("_current",)

    def __init__(self, n: int) -> None:
        self._current = [0.0] * n

    def choose(self, tied: list[int], weights: list[float]) -> int:
        """The winner among ``tied`` (indexes); ``weights[k]`` is the weight of ``tied[k]``."""
        current = self._current
        total = 0.0
        best = -1
        best_value = 0.0
        for i, w in zip(tied, weights, strict=True):
            value = current[i] + w
            current[i] = value
            total += w
            if best < 0 or value > best_value:
                best = i
                best_value = value
        current[best] -= total
        return best
