"""A real grokking run for the detector's tests: an MLP learning a + b mod p.

The classic setup of Power et al. (2022), with an MLP for a transformer: full-batch
AdamW with strong weight decay on 40% of all pairs. The MLP memorises the training
pairs (loss < 0.01 by step 200, validation accuracy ~0), then, long after, weight
decay pushes it to the general (Fourier) solution: validation accuracy climbs from
1% at step ~425 to 50% at ~775 and 98% at step 1000.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from grec_dagster.grokking import Evaluation


@dataclass(frozen=True)
class ModularAdditionConfig:
    """Tuned to grok within 1,000 steps, ~8 s of CPU time on one core."""

    modulus: int = 53
    train_fraction: float = 0.4
    embedding_dim: int = 64
    hidden_dim: int = 256
    learning_rate: float = 1e-2
    weight_decay: float = 1.0
    steps: int = 1000
    eval_every: int = 25
    seed: int = 0


class ModularAdditionMLP(nn.Module):
    """logits(a, b) = W2 relu(W1 [e_a; e_b]) with a shared embedding e."""

    def __init__(self, config: ModularAdditionConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(config.modulus, config.embedding_dim)
        self.hidden = nn.Linear(2 * config.embedding_dim, config.hidden_dim)
        self.output = nn.Linear(config.hidden_dim, config.modulus)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        pair = torch.cat([self.embedding(a), self.embedding(b)], dim=-1)
        return self.output(F.relu(self.hidden(pair)))


def train_modular_addition(config: ModularAdditionConfig) -> list[Evaluation]:
    """Train from scratch; every `eval_every` steps record (step, train loss, val accuracy).

    Runs on one thread, restored afterwards: the result is then identical on any
    machine, and these small matmuls gain nothing from a second, shared core.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(config)
    finally:
        torch.set_num_threads(threads)


def _train(config: ModularAdditionConfig) -> list[Evaluation]:
    torch.manual_seed(config.seed)
    p = config.modulus
    a, b = torch.arange(p).repeat_interleave(p), torch.arange(p).repeat(p)
    target = (a + b) % p
    order = torch.randperm(p * p)
    n_train = int(config.train_fraction * p * p)
    train, val = order[:n_train], order[n_train:]

    model = ModularAdditionMLP(config)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, betas=(0.9, 0.98)
    )
    history = []
    for step in range(config.steps + 1):
        loss = F.cross_entropy(model(a[train], b[train]), target[train])
        if step % config.eval_every == 0:
            with torch.no_grad():
                accuracy = (model(a[val], b[val]).argmax(dim=-1) == target[val]).float().mean()
            history.append(Evaluation(step, loss.item(), accuracy.item()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return history
