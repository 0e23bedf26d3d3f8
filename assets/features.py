"""Stage 2, features: the interaction graph with its split, each user's training history, and the
continuous-time graph the temporal models read."""

import time

import dagster as dg
import pandas as pd
from pydantic import Field

from assets.ingestion import items, raw_interactions, users
from assets.priority import LONGEST_CHAIN
from grec_dagster.data.errors import DataSourceError
from grec_dagster.data.warehouse import held_back_rows, rows_below_positive_min, trusted_interactions
from grec_dagster.evaluation.tables import markdown_preview
from grec_dagster.graph.features import item_features, user_features
from grec_dagster.graph.interactions import SPLIT_NAMES, TEST, TRAIN, VALID, InteractionGraph, build_graph
from grec_dagster.graph.splits import PROFILE_SHARE, SplitParams, profile_cut, split_labels
from grec_dagster.graph.temporal import ITEM, USER, TemporalGraph, build_temporal_graph
from grec_dagster.resources import CheckpointStoreResource, WarehouseResource

GROUP = "features"


class InteractionGraphConfig(dg.Config, SplitParams):
    pass


def _split_summary(graph: InteractionGraph) -> pd.DataFrame:
    rows = []
    for split in (TRAIN, VALID, TEST):
        users, items_, ts = graph.edges(split)
        first = pd.Timestamp(int(ts.min()), unit="s") if len(ts) else None
        last = pd.Timestamp(int(ts.max()), unit="s") if len(ts) else None
        rows.append(
            {
                "split": SPLIT_NAMES[split],
                "events": len(users),
                "users": int(users.unique().numel()),
                "items": int(items_.unique().numel()),
                "from": first,
                "to": last,
                "cold users": int((graph.train_user_counts[users.unique()] == 0).sum()),
                "cold items": int((graph.train_item_counts[items_.unique()] == 0).sum()),
            }
        )
    return pd.DataFrame(rows)


@dg.asset(group_name=GROUP, deps=[raw_interactions], kinds={"pytorch", "duckdb"})
def interaction_graph(
    config: InteractionGraphConfig, warehouse: WarehouseResource, checkpoints: CheckpointStoreResource
) -> dg.MaterializeResult:
    """Dense ids, time-ordered user-item events and their train/valid/test split (temporal by default)."""
    started = time.perf_counter()
    with warehouse.connect() as con:
        log = trusted_interactions(con)
        held_back = held_back_rows(con)
        below_threshold = rows_below_positive_min(con)
        if log.empty:
            raise DataSourceError(f"no interactions to build the graph from ({held_back} held back by failing checks)")
        labels = split_labels(log, config.protocol, config.seed)
        splits = log.assign(split=pd.Series(labels).map(SPLIT_NAMES).astype("string"))
        con.register("event_split_rows", splits)
        con.execute("CREATE OR REPLACE TABLE event_splits AS SELECT * FROM event_split_rows")
        con.unregister("event_split_rows")
    graph = build_graph(log, labels, config.protocol, config.seed)
    graph.save(checkpoints.layout.interaction_graph)
    return dg.MaterializeResult(
        metadata={
            "protocol": config.protocol,
            "users": graph.n_users,
            "items": graph.n_items,
            "events": len(graph.users),
            "held_back_rows": held_back,
            "below_positive_min_rows": below_threshold,
            "fingerprint": graph.fingerprint(),
            "splits": dg.MetadataValue.md(markdown_preview(_split_summary(graph))),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )


class UserHistoriesConfig(dg.Config):
    max_events: int = 50
    profile_share: float = Field(
        default=PROFILE_SHARE,
        gt=0,
        le=1,
        description="Profiles read training events in this first share of the training period's time.",
    )


@dg.asset(group_name=GROUP, deps=[interaction_graph, items], kinds={"duckdb"}, op_tags=LONGEST_CHAIN)
def user_histories(config: UserHistoriesConfig, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Each user's most recent training events before the profile cut, with item text: what the LLM
    may read about them.

    Only training events are used, so nothing a model is evaluated on leaks into a profile; and
    only those before the cut (`as_of`), so a model that learns from profiles on training events
    after it never reads a profile that holds the event it is predicting (`graph/splits.py`).
    """
    started = time.perf_counter()
    with warehouse.connect() as con:
        first, last = con.execute("SELECT min(ts), max(ts) FROM event_splits WHERE split = 'train'").fetchone()
        as_of = profile_cut(pd.Timestamp(first), pd.Timestamp(last), config.profile_share)
        con.execute(
            """
            CREATE OR REPLACE TABLE user_histories AS
            WITH ranked AS (
                SELECT e.user_id, e.ts, e.item_id, i.title, i.category, i.brand,
                       count(*) OVER (PARTITION BY e.user_id) AS n_events,
                       row_number() OVER (PARTITION BY e.user_id ORDER BY e.ts DESC, e.item_id) AS recency
                FROM event_splits e LEFT JOIN items i USING (item_id)
                WHERE e.split = 'train' AND e.ts < $as_of
            )
            SELECT user_id, any_value(n_events) AS n_events, max(ts) AS last_ts, $as_of AS as_of,
                   list({'ts': ts, 'item_id': item_id, 'title': title, 'category': category, 'brand': brand}
                        ORDER BY ts, item_id) AS events
            FROM ranked WHERE recency <= $max_events
            GROUP BY user_id ORDER BY user_id
            """,
            {"max_events": config.max_events, "as_of": as_of.to_pydatetime()},
        )
        count = con.execute("SELECT count(*) FROM user_histories").fetchone()[0]
        preview = con.execute(
            "SELECT user_id, n_events, last_ts, list_transform(events[-3:], lambda e: e.title) AS latest FROM user_histories LIMIT 10"
        ).df()
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": count,
            "as_of": str(as_of),
            "preview": dg.MetadataValue.md(markdown_preview(preview)),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )


def _degrees(temporal: TemporalGraph) -> pd.DataFrame:
    rows = []
    for name, side in (("user -> items", USER), ("item -> users", ITEM)):
        csr = temporal.csr(side)
        degree = csr.rowptr.diff().float()
        rows.append(
            {
                "adjacency": name,
                "nodes": csr.num_nodes,
                "without events": int((degree == 0).sum()),
                "median degree": float(degree.median()),
                "max degree": int(degree.max()),
            }
        )
    return pd.DataFrame(rows)


@dg.asset(group_name=GROUP, deps=[interaction_graph, items, users], kinds={"pytorch"})
def temporal_graph(warehouse: WarehouseResource, checkpoints: CheckpointStoreResource) -> dg.MaterializeResult:
    """Events in time order, node features and time-sorted CSRs both ways, for temporal models."""
    started = time.perf_counter()
    graph = InteractionGraph.load(checkpoints.layout.interaction_graph)
    with warehouse.connect(read_only=True) as con:
        catalog = con.execute("SELECT * FROM items").df()
        people = con.execute("SELECT * FROM users").df()
    temporal = build_temporal_graph(
        graph, user_features(people, graph.user_ids), item_features(catalog, graph.item_ids)
    )
    path = checkpoints.layout.temporal_graph
    temporal.save(path)
    return dg.MaterializeResult(
        metadata={
            "events": temporal.ts.numel(),
            "distinct_times": temporal.user_csr.distinct_time.numel(),
            "from": str(pd.Timestamp(int(temporal.ts.min()), unit="s")),
            "to": str(pd.Timestamp(int(temporal.ts.max()), unit="s")),
            "user_feature_dim": temporal.user_features.shape[1],
            "item_feature_dim": temporal.item_features.shape[1],
            "degrees": dg.MetadataValue.md(markdown_preview(_degrees(temporal))),
            "fingerprint": temporal.fingerprint(),
            "file": dg.MetadataValue.path(str(path)),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
