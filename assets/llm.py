"""Stage 3, the LLM layer: user profiles a causal LM writes from purchase histories, and text
embeddings of items and profile facets (the text tower that learns from them trains in `training`)."""

import time

import dagster as dg
import pandas as pd
import torch

from assets.features import interaction_graph, user_histories
from assets.ingestion import items
from assets.priority import LONGEST_CHAIN
from grec_dagster.evaluation.tables import markdown_preview
from grec_dagster.graph.interactions import InteractionGraph
from grec_dagster.llm.embedding_cache import embed_with_cache
from grec_dagster.llm.fidelity import fidelity_warnings, profile_fidelity
from grec_dagster.llm.profile_cache import plan_refresh, store_profiles
from grec_dagster.llm.profile_schema import UserProfile
from grec_dagster.llm.profiles import ProfileResult, generate_profiles
from grec_dagster.llm.prompting import load_prompt
from grec_dagster.llm.text_encoder import TextEncoder, TextEncoderConfig
from grec_dagster.llm.texts import (
    FACETS,
    facet_texts,
    item_texts,
    read_catalog,
    read_current_profiles,
    read_histories,
)
from grec_dagster.resources import CheckpointStoreResource, LlmResource, WarehouseResource
from grec_dagster.storage import save_tensors

GROUP = "llm"
USERS_PER_CHUNK = 128
"""Profiles are stored after every chunk, so an interrupted run keeps what it generated."""


@dg.asset(group_name=GROUP, deps=[user_histories, items], kinds={"duckdb", "transformers"}, op_tags=LONGEST_CHAIN)
def user_profiles(
    context: dg.AssetExecutionContext, llm: LlmResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """A JSON profile per user (crowd segment, interests, categories, brands, summary): a causal LM
    chooses each facet among the user's own options under a JSON-schema grammar, from their recent
    training events. Cached by (user, request digest, model, prompt version): only users whose request
    changed are profiled, at most `llm.max_profiles` of them per run (most active first)."""
    started = time.perf_counter()
    settings = llm.backend_config()
    prompt = load_prompt(llm.prompt)
    with warehouse.connect() as con:
        histories = read_histories(con)
        catalog = read_catalog(con)
        plan = plan_refresh(
            con,
            histories,
            settings.model_id,
            prompt.version,
            llm.max_events,
            catalog=catalog,
            max_profiles=llm.max_profiles,
        )
    summary = plan.summary
    context.log.info(
        f"{summary.regenerated} profiles to write, {summary.reused} reused from the cache, over the budget "
        f"{summary.kept} keep their latest profile and {summary.fallback} get the one their options give"
    )
    results: list[ProfileResult] = []
    generating = time.perf_counter()
    if plan.stale:
        from grec_dagster.llm.backends import TransformersBackend  # transformers loads only when needed

        backend = TransformersBackend.load(settings)
        for start in range(0, len(plan.stale), USERS_PER_CHUNK):
            chunk = generate_profiles(
                plan.stale[start : start + USERS_PER_CHUNK], catalog, backend, prompt, llm.max_events
            )
            with warehouse.connect() as con:
                store_profiles(con, chunk, settings.model_id, prompt.version)
            results.extend(chunk)
            rate = len(results) / (time.perf_counter() - generating)
            context.log.info(f"profiles {len(results)}/{len(plan.stale)} ({rate:.2f} users/s)")
    seconds = time.perf_counter() - generating
    current = plan.standing | {result.user_id: result.profile for result in results}
    table = pd.DataFrame(
        {
            "user_id": list(current),
            "profile_json": [profile.model_dump_json() for profile in current.values()],
            "regenerated": [user_id not in plan.standing for user_id in current],
        }
    )
    with warehouse.connect() as con:
        con.register("current", table)
        con.execute("CREATE OR REPLACE TABLE current_user_profiles AS SELECT * FROM current ORDER BY user_id")
        con.unregister("current")
    statuses = pd.Series([result.status.value for result in results], dtype="string").value_counts().to_dict()
    new_tokens = sum(result.new_tokens for result in results)
    prompt_tokens = sum(result.prompt_tokens - result.cached_tokens for result in results)
    preview = pd.DataFrame(
        [{"user_id": user_id, **profile.model_dump()} for user_id, profile in list(current.items())[:8]]
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(table),
            "regenerated": summary.regenerated,
            "reused": summary.reused,
            "over_budget_kept": summary.kept,
            "over_budget_fallback": summary.fallback,
            "statuses": {status: int(count) for status, count in statuses.items()},
            "model": settings.model_id,
            "prompt_version": prompt.version,
            "users_per_second": round(len(results) / seconds, 3) if results else 0.0,
            "generated_tokens_per_second": round(new_tokens / seconds, 1) if results else 0.0,
            "prompt_tokens_computed": prompt_tokens,
            "preview": dg.MetadataValue.md(markdown_preview(preview, 8)),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )


@dg.asset_check(asset=user_profiles, description="Do the profiles say something true of their users?")
def user_profiles_fidelity(llm: LlmResource, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    """Per facet, how much of what the current profiles say is true of their user (grounded interests
    and brands, debris, category precision and recall, segments from the vocabulary, summaries that
    state a fact: `llm/fidelity.py`); warns below issue 18's targets, with 5 sampled profiles."""
    prompt = load_prompt(llm.prompt)
    with warehouse.connect() as con:
        histories = read_histories(con)
        catalog = read_catalog(con)
        profiles = read_current_profiles(con)
    report = profile_fidelity(profiles, histories, catalog, prompt.instructions(), llm.max_events)
    warnings = fidelity_warnings(report)
    return dg.AssetCheckResult(
        passed=not warnings,
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(warnings) or f"all fidelity targets met on {report.profiles} profiles",
        metadata={
            **{name: value for name, value in report.metrics().items() if value is not None},
            "samples": dg.MetadataValue.json(report.samples),
        },
    )


def _encoder(llm: LlmResource) -> TextEncoder:
    return TextEncoder(TextEncoderConfig(device=llm.device, batch_size=llm.encoder_batch_size))


@dg.asset(group_name=GROUP, deps=[interaction_graph, items], kinds={"transformers"})
def item_text_embeddings(
    llm: LlmResource, warehouse: WarehouseResource, checkpoints: CheckpointStoreResource
) -> dg.MaterializeResult:
    """all-MiniLM-L6-v2 embeddings of each item's catalog text (title, categories, brand, description),
    in the graph's item order; each distinct text is encoded once, then cached in DuckDB."""
    started = time.perf_counter()
    graph = InteractionGraph.load(checkpoints.layout.interaction_graph)
    encoder = _encoder(llm)
    with warehouse.connect() as con:
        texts = item_texts(con.execute("SELECT * FROM items").df(), graph.item_ids)
        vectors, stats = embed_with_cache(texts, encoder, con)
    path = checkpoints.layout.item_text_embeddings
    save_tensors(path, {"item_text": vectors}, {"encoder": encoder.model_id, "n_items": graph.n_items})
    return dg.MaterializeResult(
        metadata={
            "items": graph.n_items,
            "dim": encoder.dim,
            "encoded": stats.computed,
            "reused": stats.reused,
            "example": texts[0] if texts else "",
            "file": dg.MetadataValue.path(str(path)),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )


@dg.asset(group_name=GROUP, deps=[interaction_graph, user_profiles], kinds={"transformers"}, op_tags=LONGEST_CHAIN)
def profile_embeddings(
    llm: LlmResource, warehouse: WarehouseResource, checkpoints: CheckpointStoreResource
) -> dg.MaterializeResult:
    """One embedding per user and profile facet (DynLLM), [n_users, facets, dim] in the graph's user
    order, with a mask of the users that have a profile and the profile cut they were written at
    (`as_of`, epoch seconds: models fuse them only from then on); texts cached by hash like the items'."""
    started = time.perf_counter()
    graph = InteractionGraph.load(checkpoints.layout.interaction_graph)
    encoder = _encoder(llm)
    with warehouse.connect() as con:
        rows = con.execute("SELECT user_id, profile_json FROM current_user_profiles").fetchall()
        profiles = {str(user_id): UserProfile.model_validate_json(text) for user_id, text in rows}
        users = [index for index, user_id in enumerate(map(str, graph.user_ids)) if user_id in profiles]
        texts = [text for index in users for text in facet_texts(profiles[str(graph.user_ids[index])])]
        vectors, stats = embed_with_cache(texts, encoder, con)
        as_of = pd.Timestamp(con.execute("SELECT any_value(as_of) FROM user_histories").fetchone()[0])
    facets = torch.zeros(graph.n_users, len(FACETS), encoder.dim)
    facets[users] = vectors.view(len(users), len(FACETS), encoder.dim)
    mask = torch.zeros(graph.n_users, dtype=torch.bool)
    mask[users] = True
    path = checkpoints.layout.profile_embeddings
    meta = {"encoder": encoder.model_id, "facets": list(FACETS), "as_of": int(as_of.timestamp())}
    save_tensors(path, {"facets": facets, "mask": mask}, meta)
    return dg.MaterializeResult(
        metadata={
            "users_with_profile": len(users),
            "users": graph.n_users,
            "facets": list(FACETS),
            "as_of": str(as_of),
            "encoded": stats.computed,
            "reused": stats.reused,
            "file": dg.MetadataValue.path(str(path)),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
