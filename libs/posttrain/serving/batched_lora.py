"""Per-row LoRA deltas in one batched forward: row i of the batch gets adapter i's delta.

For every Linear that some adapter of the batch targets, a forward hook adds
    delta[i] = x[i] @ A_i^T @ (scale_i * B_i^T)
computed for all rows at once with two batched matmuls over per-row matrices gathered by
adapter slot (slot 0 is "no adapter": zeros, so base rows get no delta); when every row
has the same adapter, two plain matmuls with its matrices. Adapters of
different ranks are zero-padded to the largest rank of the batch, which changes nothing.
The hooks exist only inside `with BatchedLora(...)`; the base model's weights and
modules are never changed. Memory: batch * rank * (in + out) per targeted Linear.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

import torch

from posttrain.serving.adapters import LoraAdapter


class BatchedLora:
    """The LoRA deltas of one batch; `select_rows` follows the batch as rows finish."""

    def __init__(self, model: torch.nn.Module, adapters: Sequence[LoraAdapter | None]) -> None:
        distinct: list[LoraAdapter] = []
        slots: list[int] = []
        for adapter in adapters:
            if adapter is None:
                slots.append(0)
                continue
            if not any(adapter is d for d in distinct):
                distinct.append(adapter)
            slots.append(1 + next(i for i, d in enumerate(distinct) if d is adapter))
        self._modules = dict(model.named_modules())
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        # Per targeted module: stacked [slots, in, r] and [slots, r, out]; slot 0 is zeros.
        self._stacks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        targets = sorted({m for adapter in distinct for m in adapter.weights})
        for module_name in targets:
            linear = self._modules[module_name]
            rank = max(
                a.weights[module_name][0].shape[1] for a in distinct if module_name in a.weights
            )
            weight = linear.weight
            a_stack = weight.new_zeros(len(distinct) + 1, linear.in_features, rank)
            b_stack = weight.new_zeros(len(distinct) + 1, rank, linear.out_features)
            for slot, adapter in enumerate(distinct, start=1):
                if module_name in adapter.weights:
                    a, b = adapter.weights[module_name]
                    a_stack[slot, :, : a.shape[1]] = a
                    b_stack[slot, : b.shape[0], :] = b
            self._stacks[module_name] = (a_stack, b_stack)
        device = next(model.parameters()).device
        self._slots = torch.tensor(slots, dtype=torch.long, device=device)
        self._gathered: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._gather()

    @property
    def active(self) -> bool:
        return bool(self._stacks)

    def _gather(self) -> None:
        unique = torch.unique(self._slots)
        for module_name, (a_stack, b_stack) in self._stacks.items():
            if unique.numel() == 1:  # one adapter for every row: plain 2-D matmuls
                slot = int(unique[0])
                self._gathered[module_name] = (a_stack[slot], b_stack[slot])
            else:
                self._gathered[module_name] = (a_stack[self._slots], b_stack[self._slots])

    def select_rows(self, keep: torch.Tensor) -> None:
        """Keep only these rows (indices into the current batch), in this order."""
        self._slots = self._slots[keep]
        self._gather()

    def _hook(self, module_name: str):
        def add_delta(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            a, b = self._gathered[module_name]
            x = args[0]
            return output + torch.matmul(torch.matmul(x.to(a.dtype), a), b).to(output.dtype)

        return add_delta

    def __enter__(self) -> BatchedLora:
        for module_name in self._stacks:
            module = self._modules[module_name]
            self._handles.append(module.register_forward_hook(self._hook(module_name)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
