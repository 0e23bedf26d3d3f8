"""The LLM layer's assets through Dagster, with the packaged SmolLM2 and MiniLM weights: profiles are
written for every user, every facet is true of its user, and only the users whose history changed
are written again."""

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from grec_dagster.definitions import build_definitions
from grec_dagster.llm.fidelity import fidelity_warnings, profile_fidelity
from grec_dagster.llm.profile_schema import DEFAULT_MAX_EVENTS, UserProfile
from grec_dagster.llm.prompting import load_prompt
from grec_dagster.llm.texts import FACETS, read_catalog, read_current_profiles, read_histories
from grec_dagster.storage import load_tensors

UPSTREAM = ["raw_interactions", "items", "users", "interaction_graph", "user_histories"]
SMALL_SHOP = {"source": {"kind": "synthetic", "synthetic_interactions": 1500, "synthetic_days": 30}}


def materialize(defs: dg.Definitions, instance: dg.DagsterInstance, *names: str) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets(*names),
        resources=defs.resources,
        instance=instance,
    )
    assert result.success
    return result


def metadata(result: dg.ExecuteInProcessResult, name: str) -> dict:
    return {key: value.value for key, value in result.asset_materializations_for_node(name)[0].metadata.items()}


@pytest.fixture
def profiled(grec_home: Path) -> tuple[dg.Definitions, dg.DagsterInstance, dict]:
    defs = build_definitions(SMALL_SHOP)
    instance = dg.DagsterInstance.get()
    materialize(defs, instance, *UPSTREAM)
    first = metadata(materialize(defs, instance, "user_profiles"), "user_profiles")
    return defs, instance, first


def test_every_user_gets_a_valid_profile_and_facet_embeddings(profiled, grec_home: Path) -> None:
    defs, instance, first = profiled
    with duckdb.connect(str(grec_home / "warehouse.duckdb"), read_only=True) as con:
        users = con.execute("SELECT count(*) FROM user_histories").fetchone()[0]
        profiles = con.execute("SELECT profile_json FROM current_user_profiles").fetchall()
        categories = {row[0] for row in con.execute("SELECT DISTINCT category FROM items").fetchall()}
    assert first["regenerated"] == users == len(profiles) > 0 and first["reused"] == 0
    assert sum(first["statuses"].values()) == users
    known = {part for value in categories if value for part in value.split("|")}
    for (text,) in profiles:
        assert set(UserProfile.model_validate_json(text).categories) <= known
    with duckdb.connect(str(grec_home / "warehouse.duckdb")) as con:
        report = profile_fidelity(
            read_current_profiles(con),
            read_histories(con),
            read_catalog(con),
            load_prompt().instructions(),
            DEFAULT_MAX_EVENTS,
        )
    assert report.profiles == users and fidelity_warnings(report) == [], report.metrics()
    assert report.interests_grounded.value == report.segments_in_vocabulary.value == 1.0
    cached = materialize(defs, instance, "user_profiles")  # every profile cached: the fidelity check is the work
    [check] = [e for e in cached.get_asset_check_evaluations() if e.check_name == "user_profiles_fidelity"]
    assert check.passed and check.metadata["profiles"].value == users
    for name in ("interests_grounded", "category_precision", "segments_in_vocabulary", "debris_any_facet"):
        assert check.metadata[name].value == report.metrics()[name], name
    assert len(check.metadata["samples"].value) == min(5, users)

    done = materialize(defs, instance, "item_text_embeddings", "profile_embeddings")
    item_text = load_tensors(grec_home / "checkpoints" / "item_text_embeddings" / "item_text.safetensors")[0]
    facets = load_tensors(grec_home / "checkpoints" / "profile_embeddings" / "profile_embeddings.safetensors")[0]
    assert item_text["item_text"].shape[1] == 384
    assert facets["facets"].shape[1:] == (len(FACETS), 384)
    assert int(facets["mask"].sum()) == users
    norms = facets["facets"][facets["mask"]].norm(dim=-1)
    assert ((norms - 1).abs() < 1e-3).all()  # unit vectors: a real encoder ran on every facet
    assert metadata(done, "profile_embeddings")["users_with_profile"] == users


def add_an_event_for_five_users(grec_home: Path) -> list[str]:
    """Five users each buy one more item, halfway between their latest event the profiles may read and
    the profile cut (`as_of`): it lands in the training split, before the cut, and in the window of
    recent events the prompt shows. Returns the five users."""
    with duckdb.connect(str(grec_home / "warehouse.duckdb")) as con:
        changed = [
            row[0] for row in con.execute("SELECT user_id FROM user_histories ORDER BY user_id LIMIT 5").fetchall()
        ]
        con.execute(
            """INSERT INTO event_splits BY NAME
               SELECT e.* REPLACE (
                   (SELECT min(item_id) FROM items WHERE item_id NOT IN
                       (SELECT item_id FROM event_splits s WHERE s.user_id = e.user_id)) AS item_id,
                   e.ts + (h.as_of - e.ts) / 2 AS ts)
               FROM (SELECT * FROM event_splits WHERE split = 'train' AND user_id IN (SELECT unnest(?))
                     AND ts < (SELECT any_value(as_of) FROM user_histories)
                     QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY ts DESC) = 1) AS e
               JOIN user_histories AS h USING (user_id)""",
            [changed],
        )
    return changed


def test_new_interactions_for_five_users_regenerate_exactly_their_profiles(profiled, grec_home: Path) -> None:
    defs, instance, first = profiled
    changed = add_an_event_for_five_users(grec_home)
    materialize(defs, instance, "user_histories")
    second = metadata(materialize(defs, instance, "user_profiles"), "user_profiles")
    assert second["regenerated"] == 5
    assert second["reused"] == first["regenerated"] - 5
    with duckdb.connect(str(grec_home / "warehouse.duckdb"), read_only=True) as con:
        again = {
            row[0] for row in con.execute("SELECT user_id FROM current_user_profiles WHERE regenerated").fetchall()
        }
    assert again == {str(user) for user in changed}


def test_a_budget_profiles_the_most_active_changed_users_and_the_rest_keep_their_profile(
    profiled, grec_home: Path
) -> None:
    defs, instance, first = profiled
    changed = add_an_event_for_five_users(grec_home)
    with duckdb.connect(str(grec_home / "warehouse.duckdb"), read_only=True) as con:
        before = dict(con.execute("SELECT user_id, profile_json FROM current_user_profiles").fetchall())
    budgeted = build_definitions(SMALL_SHOP | {"llm": {"max_profiles": 2}})
    materialize(budgeted, instance, "user_histories")
    second = metadata(materialize(budgeted, instance, "user_profiles"), "user_profiles")
    assert (second["regenerated"], second["over_budget_kept"], second["over_budget_fallback"]) == (2, 3, 0)
    assert second["reused"] == first["regenerated"] - 5
    with duckdb.connect(str(grec_home / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT user_id, profile_json, regenerated FROM current_user_profiles").fetchall()
        activity = dict(con.execute("SELECT user_id, n_events FROM user_histories").fetchall())
    regenerated = {user for user, _, again in rows if again}
    most_active = sorted(changed, key=lambda user: (-activity[user], str(user)))[:2]
    assert regenerated == {str(user) for user in most_active}
    for user, profile_json, again in rows:
        if not again:  # over the budget or unchanged: the profile it had
            assert profile_json == before[user]
