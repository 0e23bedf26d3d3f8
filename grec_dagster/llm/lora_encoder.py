"""MiniLM with LoRA adapters over a fixed list of texts: the text encoder the text tower can train.

The pipeline is `TextEncoder`'s (same weights, dtype and truncation, mean pooling + L2 norm) with
peft LoRA adapters on some of its linear layers (the text tower picks the attention's query and
value): W x + (alpha / r) B A x, where only A and B train and the base weights stay frozen. B
starts at zero, so before training the vectors are the frozen encoder's (up to bf16 rounding).
The texts are tokenized once, at construction; a call embeds some of them by index.

Adapters are kept in float32 over the bf16 base (peft's default), so the optimizer updates full
precision weights while the encoder's matmuls run in the base's bf16: no autocast is needed.
"""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn

from grec_dagster.llm.text_encoder import TextEncoder, pool


class LoraTextEncoder(nn.Module):
    def __init__(self, texts: list[str], adapters: LoraConfig) -> None:
        super().__init__()
        encoder = TextEncoder()  # its own copy: peft injects the adapters into the model in place
        self.dim, self.chunk_size = encoder.dim, encoder.config.batch_size
        with warnings.catch_warnings():  # peft 0.21 reads an attribute transformers 5 deprecates
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            self.model = get_peft_model(encoder.model, adapters)
        tokens = encoder.tokenize(texts)
        self.register_buffer("input_ids", tokens["input_ids"], persistent=False)
        self.register_buffer("attention_mask", tokens["attention_mask"], persistent=False)
        self.register_buffer("lengths", tokens["attention_mask"].sum(1), persistent=False)

    def __len__(self) -> int:
        return len(self.input_ids)

    def forward(self, rows: Tensor) -> Tensor:
        """Unit-length float32 embeddings [len(rows), dim] of the texts `rows` indexes, through the
        adapters (with gradient in training). Texts run longest first, in chunks cut to their own
        longest text, so little compute goes to padding; rows come back in input order."""
        order = torch.argsort(self.lengths[rows], descending=True)
        parts = [self._embed(rows[chunk]) for chunk in order.split(self.chunk_size)]
        return torch.cat(parts)[torch.argsort(order)]

    @torch.no_grad()
    def encode_all(self) -> Tensor:
        """Every text's embedding as the adapters stand, without dropout or gradient."""
        training = self.training
        self.eval()
        vectors = self(torch.arange(len(self), device=self.input_ids.device))
        self.train(training)
        return vectors

    def _embed(self, rows: Tensor) -> Tensor:
        width = int(self.lengths[rows].max())
        mask = self.attention_mask[rows, :width]
        hidden = self.model(input_ids=self.input_ids[rows, :width], attention_mask=mask).last_hidden_state
        return pool(hidden, mask)
