"""The text tower with the `lora` encoder, run for real: the packaged MiniLM with peft adapters on a
small planted shop whose item texts name their cluster's theme, cold items included."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor

from assets.training import TextTowerConfig
from grec_dagster.evaluation.evaluator import evaluate
from grec_dagster.graph.interactions import TRAIN, VALID
from grec_dagster.llm.lora_encoder import LoraTextEncoder
from grec_dagster.llm.text_encoder import TextEncoder
from grec_dagster.models.popularity import broadcast_scores, most_popular
from grec_dagster.models.text_tower import TextTower, TextTowerParams
from grec_dagster.storage import load_tensors
from grec_dagster.training.embeddings import TrainedEmbeddings, save_embeddings
from grec_dagster.training.loop import TrainParams
from grec_dagster.training.train_text_tower import train_text_tower

from .test_text_tower import N_CLUSTERS, Shop, _metric, make_shop

THEMES = (
    "jazz record with a saxophone solo",
    "hiking boots for mountain trails",
    "chocolate cake baking book",
    "science fiction novel set in space",
    "stainless steel kitchen knife",
    "board game for the whole family",
)
FLAVORS = ("classic", "deluxe", "pocket", "vintage", "modern", "limited", "travel", "starter")
PARAMS = TextTowerParams(dim=16, hidden=32, negatives=2, dropout=0.0, encoder="lora", lora_rank=4)
TRAIN_FAST = TrainParams(epochs=2, lr=1e-2, batch_size=256, patience=5)


@dataclass(frozen=True)
class TextShop:
    shop: Shop
    texts: list[str]
    item_text: Tensor
    """The frozen MiniLM vectors of `texts`, as the `item_text_embeddings` asset gives them."""


@pytest.fixture(scope="module")
def text_shop() -> TextShop:
    assert len(THEMES) == N_CLUSTERS
    shop = make_shop(n_users=60, n_items=48, n_cold_items=8, n_cold_users=6)
    texts = [f"{FLAVORS[i // N_CLUSTERS % len(FLAVORS)]} {THEMES[c]}" for i, c in enumerate(shop.item_cluster.tolist())]
    return TextShop(shop, texts, TextEncoder().encode(texts))


@pytest.fixture(scope="module")
def trained(text_shop: TextShop) -> TrainedEmbeddings:
    return train_text_tower(text_shop.shop.graph, text_shop.item_text, None, PARAMS, TRAIN_FAST, texts=text_shop.texts)


def _tower(text_shop: TextShop, history: Tensor) -> TextTower:
    """A lora tower over the shop's texts, as `train_text_tower` builds it."""
    return TextTower(text_shop.item_text, None, text_shop.shop.graph.n_users, history, PARAMS, text_shop.texts)


def test_adapted_encoder_starts_at_the_frozen_vectors(text_shop: TextShop) -> None:
    """LoRA's B starts at zero: before training, the same pipeline gives the asset's vectors."""
    encoder = _tower(text_shop, text_shop.shop.graph.pairs(TRAIN)).text_encoder
    assert isinstance(encoder, LoraTextEncoder)
    vectors = encoder.encode_all()
    assert vectors.shape == text_shop.item_text.shape
    assert (vectors * text_shop.item_text).sum(1).min() > 0.9999


def test_training_changes_only_adapters_and_heads(text_shop: TextShop, trained: TrainedEmbeddings) -> None:
    torch.manual_seed(TRAIN_FAST.seed)  # as `train_text_tower` does: the tower it started from
    initial = _tower(text_shop, text_shop.shop.graph.pairs(TRAIN)).state_dict()
    final = trained.result.best_state
    assert final.keys() == initial.keys()
    changed = {name for name in final if not torch.equal(final[name], initial[name])}
    assert changed == set(trained.weights)
    adapters = {name for name in changed if ".lora_A." in name or ".lora_B." in name}
    heads = {name for name in changed if name.startswith(("item_mlp.", "user_mlp."))}
    assert adapters and heads and adapters | heads == changed
    assert sum(final[name].numel() for name in changed) < 0.01 * sum(t.numel() for t in final.values())


def test_checkpoint_holds_the_adapters_and_reloads_to_the_same_scores(
    text_shop: TextShop, trained: TrainedEmbeddings, tmp_path: Path
) -> None:
    path = tmp_path / "model.safetensors"
    save_embeddings(path, trained, PARAMS.model_dump())
    tensors, meta = load_tensors(path)
    weights = {name.removeprefix("weights."): t for name, t in tensors.items() if name.startswith("weights.")}
    assert meta["encoder"] == "lora" and meta["lora_rank"] == PARAMS.lora_rank
    assert any(".lora_B." in name for name in weights) and any(".lora_A." in name for name in weights)

    graph = text_shop.shop.graph
    reloaded = _tower(text_shop, graph.pairs(TRAIN, VALID))
    reloaded.load_trained_weights(weights)
    reloaded.eval()
    users, items = reloaded.embed_all()
    torch.testing.assert_close(items, tensors["item_embedding"])
    torch.testing.assert_close(users, tensors["user_embedding"])
    with pytest.raises(ValueError, match="weights for another tower"):
        reloaded.load_trained_weights({name: t for name, t in weights.items() if ".lora_" not in name})


def test_cold_items_get_vectors_from_the_adapted_encoder(text_shop: TextShop, trained: TrainedEmbeddings) -> None:
    shop = text_shop.shop
    cold = shop.cold_items
    assert int(shop.graph.train_item_counts[cold].sum()) == 0 and len(cold) > 1
    vectors = trained.item_embedding[cold]
    assert torch.isfinite(vectors).all() and torch.cdist(vectors, vectors).fill_diagonal_(1).min() > 1e-3
    tower = _tower(text_shop, shop.graph.pairs(TRAIN))
    tower.load_trained_weights(trained.weights)
    tower.eval()
    with torch.no_grad():
        # The whole catalog, as the checkpoint was encoded: MiniLM runs in bf16, and encoding the cold
        # items alone pads them to another width, which changes the sums' rounding (bf16's relative
        # step is 2^-8). The same texts in the same batches run the same kernels: the same bits.
        adapted = tower.encode_items(tower.text_encoder.encode_all()[cold])
        frozen = tower.encode_items(text_shop.item_text[cold])
    assert torch.equal(vectors, adapted)
    assert (vectors - frozen).abs().max() > 1e-3  # the adapters moved items they never trained on


def test_adapted_tower_learns_the_shop(text_shop: TextShop, trained: TrainedEmbeddings) -> None:
    graph = text_shop.shop.graph
    tower = _metric(evaluate(trained.score, graph, "lora"), "all", "ndcg")
    popularity = _metric(evaluate(broadcast_scores(most_popular(graph)), graph, "popularity"), "all", "ndcg")
    assert tower > 2 * popularity, (tower, popularity)


def test_unknown_encoder_or_missing_texts_fail_clearly(text_shop: TextShop) -> None:
    with pytest.raises(ValidationError, match="'frozen' or 'lora'"):
        TextTowerConfig(encoder="adapter")  # the `text_tower_checkpoint` asset's config
    graph = text_shop.shop.graph
    with pytest.raises(ValueError, match="needs one text per item: 48 items, no texts"):
        TextTower(text_shop.item_text, None, graph.n_users, graph.pairs(TRAIN), PARAMS)
