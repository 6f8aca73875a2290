"""The data order and the batches: which rows go into which micro-batch of which step.

Owns the sampler. An epoch's row order is a permutation drawn from (seed, epoch) alone,
so a resumed run re-derives it and continues at (epoch, step) exactly where the
interrupted one stopped; the order is also stored in checkpoints and checked on resume.
Batches are padded to their own longest sequence (dynamic padding); with packing, rows
are laid end to end into sequences of at most max_seq_len tokens (next-fit, in order) and
position ids restart at each row, which transformers turns into a block-diagonal mask,
so rows never attend to each other.
"""

from __future__ import annotations

import hashlib

import torch

from posttrain.data.chat_template import IGNORE_INDEX, EncodedChat

# A sequence is the row indices laid into it (one row unless packing); a micro-batch is a
# list of sequences; a step is a list of micro-batches.
Sequence_ = list[int]
MicroBatch = list[Sequence_]
StepPlan = list[MicroBatch]


def epoch_order(num_rows: int, seed: int, epoch: int) -> list[int]:
    """The shuffled row order of one epoch; depends on nothing but its arguments."""
    digest = hashlib.sha256(f"posttrain.sampler:{seed}:{epoch}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    return torch.randperm(num_rows, generator=generator).tolist()


def plan_epoch(
    order: list[int],
    lengths: list[int],
    *,
    batch_size: int,
    grad_accum: int,
    packing: bool,
    max_seq_len: int,
) -> list[StepPlan]:
    """Split one epoch's order into optimizer steps of grad_accum micro-batches of
    batch_size sequences. The last step of an epoch may be smaller."""
    sequences = _pack(order, lengths, max_seq_len) if packing else [[i] for i in order]
    per_step = batch_size * grad_accum
    steps: list[StepPlan] = []
    for start in range(0, len(sequences), per_step):
        chunk = sequences[start : start + per_step]
        steps.append([chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)])
    return steps


def _pack(order: list[int], lengths: list[int], max_seq_len: int) -> list[Sequence_]:
    sequences: list[Sequence_] = []
    current: Sequence_ = []
    used = 0
    for index in order:
        if current and used + lengths[index] > max_seq_len:
            sequences.append(current)
            current, used = [], 0
        current.append(index)
        used += lengths[index]
    if current:
        sequences.append(current)
    return sequences


def collate(
    rows: list[EncodedChat], micro_batch: MicroBatch, pad_id: int, packed: bool
) -> dict[str, torch.Tensor]:
    """Tensors for one micro-batch, right-padded to its longest sequence.

    Unpacked: input_ids, labels, attention_mask. Packed: input_ids, labels, position_ids
    (restarting per row; padding forms its own segment) and no attention mask."""
    ids, labels, positions = [], [], []
    for sequence in micro_batch:
        seq_ids: list[int] = []
        seq_labels: list[int] = []
        seq_positions: list[int] = []
        for index in sequence:
            row = rows[index]
            seq_ids += row.input_ids
            seq_labels += row.labels
            seq_positions += range(len(row.input_ids))
        ids.append(seq_ids)
        labels.append(seq_labels)
        positions.append(seq_positions)
    width = max(len(s) for s in ids)
    batch = {
        "input_ids": torch.tensor([s + [pad_id] * (width - len(s)) for s in ids]),
        "labels": torch.tensor([s + [IGNORE_INDEX] * (width - len(s)) for s in labels]),
    }
    if packed:
        batch["position_ids"] = torch.tensor([s + list(range(width - len(s))) for s in positions])
    else:
        batch["attention_mask"] = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids])
    return batch


def count_tokens(rows: list[EncodedChat], micro_batch: MicroBatch) -> int:
    """Real (non-padding) tokens in a micro-batch."""
    return sum(len(rows[index]) for sequence in micro_batch for index in sequence)
