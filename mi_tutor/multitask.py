"""A multi-task toy transformer whose tasks we know: the ground truth for notebook 06.

Every example is four tokens ``x1 x2 x3 op`` and the answer is read at the last position:

- ``add``: (x1 + x2) mod p (x3 is a distractor);
- ``copy``: x1 (copy the first token);
- ``repeat``: exactly two of x1, x2, x3 are equal; answer the repeated token.

The model (`TinyTransformer`) is one attention layer plus one ReLU MLP, no LayerNorm, written in
plain torch. Every parameter lives in an ``nn.Linear`` (the token and position embeddings are
linear maps of one-hot vectors), so that `torch.func` sees every operation and the
Kronecker-projection trick of `mi_tutor.gradients` covers every parameter.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TASKS = ("add", "copy", "repeat")


@dataclass
class TaskData:
    """Examples of the three tasks: `tokens` [N, 4], `targets` [N], `task` [N] (index into TASKS)."""

    tokens: torch.Tensor
    targets: torch.Tensor
    task: torch.Tensor
    p: int

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, idx) -> "TaskData":
        idx = torch.as_tensor(idx)
        return TaskData(self.tokens[idx], self.targets[idx], self.task[idx], self.p)


def make_tasks(n_per_task: int, p: int = 17, seed: int = 0) -> TaskData:
    """`n_per_task` random examples of each task, interleaved and seeded.

    Tokens 0..p-1 are numbers; p, p+1, p+2 are the op tokens of add, copy, repeat.
    """
    if n_per_task < 1 or p < 3:
        raise ValueError(f"need n_per_task >= 1 and p >= 3, got n_per_task={n_per_task}, p={p}")
    rng = np.random.default_rng(seed)
    rows, targets, tasks = [], [], []
    for t, name in enumerate(TASKS):
        x = rng.integers(0, p, size=(n_per_task, 3))
        if name == "add":
            y = (x[:, 0] + x[:, 1]) % p
        elif name == "copy":
            y = x[:, 0]
        else:  # repeat: put one value at two of the three slots, a different value at the third
            a = rng.integers(0, p, n_per_task)
            b = (a + rng.integers(1, p, n_per_task)) % p
            odd = rng.integers(0, 3, n_per_task)
            x = np.repeat(a[:, None], 3, axis=1)
            x[np.arange(n_per_task), odd] = b
            y = a
        rows.append(np.column_stack([x, np.full(n_per_task, p + t)]))
        targets.append(y)
        tasks.append(np.full(n_per_task, t))
    order = rng.permutation(3 * n_per_task)
    tok = np.concatenate(rows)[order]
    return TaskData(torch.tensor(tok, dtype=torch.long), torch.tensor(np.concatenate(targets)[order], dtype=torch.long),
                    torch.tensor(np.concatenate(tasks)[order], dtype=torch.long), p)


class TinyTransformer(nn.Module):
    """One attention layer (`n_heads` heads) + one ReLU MLP, no LayerNorm; logits at the last position.

    Only the last position's output is used, so only its query, attention and MLP are computed
    (the same function as a causal transformer read at the last position, ~4x cheaper).
    """

    def __init__(self, d_vocab: int, d_out: int, n_ctx: int = 4, d_model: int = 32, n_heads: int = 4,
                 d_mlp: int = 128, seed: int = 0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        g = torch.Generator().manual_seed(seed)
        self.d_vocab, self.n_ctx, self.n_heads = d_vocab, n_ctx, n_heads
        self.embed = nn.Linear(d_vocab, d_model, bias=False)   # W_E as a linear map of one-hot tokens
        self.pos = nn.Linear(n_ctx, d_model, bias=False)       # W_pos as a linear map of one-hot positions
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)
        self.mlp_in = nn.Linear(d_model, d_mlp)
        self.mlp_out = nn.Linear(d_mlp, d_model)
        self.unembed = nn.Linear(d_model, d_out, bias=False)
        with torch.no_grad():
            for name, p in self.named_parameters():
                std = 1.0 if name.startswith(("embed", "pos")) else p.shape[-1] ** -0.5
                p.copy_(torch.randn(p.shape, generator=g) * std if p.ndim == 2 else torch.zeros_like(p))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, n_ctx] (long) -> logits at the last position [B, d_out]."""
        if tokens.ndim != 2 or tokens.shape[1] != self.n_ctx:
            raise ValueError(f"tokens must have shape [batch, {self.n_ctx}], got {tuple(tokens.shape)}")
        B, T = tokens.shape
        x = self.embed((tokens[..., None] == torch.arange(self.d_vocab)).float())  # one-hot (vmap-safe)
        x = x + self.pos(torch.eye(T, self.n_ctx).expand(B, T, self.n_ctx))  # batched: per-example gradients
        h, dh = self.n_heads, x.shape[-1] // self.n_heads
        # only the last position's output is read, so only its query, attention and MLP are computed
        q = self.q(x[:, -1]).view(B, h, 1, dh)
        k, v = (m(x).view(B, T, h, dh).transpose(1, 2) for m in (self.k, self.v))
        z = ((q @ k.transpose(-1, -2) / dh ** 0.5).softmax(-1) @ v).reshape(B, h * dh)
        r = x[:, -1] + self.o(z)
        r = r + self.mlp_out(F.relu(self.mlp_in(r)))
        return self.unembed(r)


def build_model(p: int = 17, seed: int = 0, **kw) -> TinyTransformer:
    """The toy for `make_tasks(p=p)`: vocabulary p numbers + 3 op tokens, p output classes."""
    return TinyTransformer(d_vocab=p + len(TASKS), d_out=p, seed=seed, **kw)


def train_model(model: TinyTransformer, train: TaskData, test: TaskData, steps: int = 600, lr: float = 3e-3,
                weight_decay: float = 0.1, seed: int = 0, progress: bool = True, live=None):
    """Full-batch AdamW with `mi_tutor.training.train`; logs train/test loss and per-task test accuracy.

    Returns the `History`.
    """
    from .training import train as run

    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))

    def step(_s: int) -> float:
        model.train()
        loss = F.cross_entropy(model(train.tokens), train.targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    @torch.no_grad()
    def evaluate(_s: int) -> dict[str, float]:
        model.eval()
        out = {"train_loss": F.cross_entropy(model(train.tokens), train.targets).item()}
        logits = model(test.tokens)
        out["test_loss"] = F.cross_entropy(logits, test.targets).item()
        right = logits.argmax(-1) == test.targets
        for t, name in enumerate(TASKS):
            out[f"acc_{name}"] = right[test.task == t].float().mean().item()
        return out

    hist = run(step, steps, eval_fn=evaluate, eval_every=max(1, steps // 20), live=live, desc="multi-task toy",
               progress=progress)
    model.eval()
    return hist


@torch.no_grad()
def per_example_loss(model: nn.Module, data: TaskData) -> torch.Tensor:
    """Cross-entropy of every example [N]."""
    return F.cross_entropy(model(data.tokens), data.targets, reduction="none")


__all__ = ["TASKS", "TaskData", "make_tasks", "TinyTransformer", "build_model", "train_model", "per_example_loss"]
