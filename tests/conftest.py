"""Shared fixtures: a throw-away GREC_HOME per test, the MovieLens files `make test` fetched, and one
GREC_HOME where the whole graph was materialized under the multiprocess executor."""

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from grec_dagster.cli import DAGSTER_YAML, init_home

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(os.environ.get("GREC_HOME", ".grec")).resolve() / "data"


@pytest.fixture(scope="session")
def movielens_folder() -> Path:
    """The verified MovieLens-100K files; `make test` fetches them before the tests run."""
    from grec_dagster.data.movielens import is_cached

    folder = SHARED_DATA / "ml-100k"
    if not is_cached(folder):
        pytest.fail(f"MovieLens-100K is not in {folder}: run `grec data fetch` (make test does)")
    return folder


@pytest.fixture
def grec_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty GREC_HOME (and DAGSTER_HOME inside it) for one test."""
    home = tmp_path / "grec"
    monkeypatch.setenv("GREC_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.delenv("GREC_CONFIG", raising=False)
    init_home()
    return home


SMALL_SHOP = {"source": {"kind": "synthetic", "synthetic_interactions": 4000, "synthetic_days": 30}}
QUICK_TRAINING = {
    "lightgcn_checkpoint": {"config": {"epochs": 3, "batch_size": 1024}},
    "graphsage_checkpoint": {"config": {"epochs": 1, "batch_size": 1024, "dim": 16}},
    "temporal_checkpoint": {"config": {"epochs": 1, "dim": 16, "neighbors": 5}},
    "temporal_profiles_checkpoint": {"config": {"epochs": 1, "dim": 16, "neighbors": 5}},
    "text_tower_checkpoint": {"config": {"epochs": 1, "batch_size": 1024}},
    "sasrec_checkpoint": {"config": {"epochs": 1}},
    "fusion_checkpoint": {"config": {"epochs": 2}},
}
DEMO_RUN_CONFIG = Path(__file__).parents[1] / "configs" / "demo.yaml"
MULTIPROCESS = yaml.safe_load(DEMO_RUN_CONFIG.read_text())["execution"]["config"]["multiprocess"] | {"max_concurrent": 3}
"""`make demo`'s executor: step processes fork from a server that imported grec once, instead of each
importing torch anew (the server keeps the environment of its start: this is the session's only
multiprocess run); three at a time here."""


@dataclass(frozen=True)
class Materialized:
    home: Path
    run_id: str

    @property
    def env(self) -> dict[str, str]:
        """The environment a process needs to see this GREC_HOME as its own."""
        return {
            "GREC_HOME": str(self.home),
            "DAGSTER_HOME": str(self.home / "dagster"),
            "GREC_CONFIG": str(self.home / "grec.yaml"),
        }


def everything():
    """Every asset and check of the definitions GREC_CONFIG selects, as one job; each step process
    rebuilds it by this name (see `materialized`)."""
    import dagster as dg

    from grec_dagster.definitions import build_definitions
    from grec_dagster.settings import load_user_config

    defs = dg.Definitions.merge(
        build_definitions(load_user_config()), dg.Definitions(jobs=[dg.define_asset_job("everything")])
    )
    return defs.resolve_job_def("everything")


@pytest.fixture(scope="session")
def materialized(tmp_path_factory: pytest.TempPathFactory) -> Materialized:
    """A GREC_HOME where the whole graph ran once (small synthetic shop, a few epochs) under Dagster's
    multiprocess executor, on the Dagster instance `grec init` writes. Tests read it; the UI and CLI
    tests may add caches and logs but change nothing the assets wrote."""
    import dagster as dg

    done = Materialized(tmp_path_factory.mktemp("materialized") / "grec", run_id="")
    done.home.mkdir()
    (done.home / "grec.yaml").write_text(yaml.safe_dump(SMALL_SHOP))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in done.env.items():
            patch.setenv(name, value)
        dagster_home = init_home()
        assert yaml.safe_load((dagster_home / "dagster.yaml").read_text()) == yaml.safe_load(DAGSTER_YAML)
        job = dg.build_reconstructable_job(
            __name__, everything.__name__, reconstructor_working_directory=str(Path(__file__).parent)
        )
        run_config = {"ops": QUICK_TRAINING, "execution": {"config": {"multiprocess": MULTIPROCESS}}}
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            with dg.execute_job(job, instance=instance, run_config=run_config) as result:
                assert result.success, [event.message for event in result.all_events if event.is_failure]
                return Materialized(done.home, result.run_id)
