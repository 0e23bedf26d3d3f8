"""Every asset, check, resource, job, schedule and sensor of grec, in one Definitions object.

Resources start from the embedded defaults under GREC_HOME and take overrides from the YAML
file GREC_CONFIG names, so the same code runs on a laptop or against shared services.
"""

import dagster as dg

from assets import evaluation, graph, ingestion, training
from grec_dagster.home import default_paths, load_user_config
from grec_dagster.resources import CheckpointStoreResource, DataSourceResource, MlflowResource, WarehouseResource


def build_resources(overrides: dict[str, dict] | None = None) -> dict[str, dg.ConfigurableResource]:
    """The embedded defaults, with `overrides[name]` merged into resource `name`."""
    overrides = overrides or {}
    paths = default_paths()
    defaults: dict[str, tuple[type[dg.ConfigurableResource], dict]] = {
        "warehouse": (WarehouseResource, {"path": paths["warehouse"]}),
        "mlflow": (
            MlflowResource,
            {"tracking_uri": paths["mlflow_tracking_uri"], "artifact_location": paths["mlflow_artifacts"]},
        ),
        "checkpoints": (CheckpointStoreResource, {"root": paths["checkpoints"]}),
        "source": (DataSourceResource, {"cache_dir": paths["data_cache"]}),
    }
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ValueError(f"GREC_CONFIG names unknown resources {sorted(unknown)}; known: {sorted(defaults)}")
    return {name: cls(**(settings | overrides.get(name, {}))) for name, (cls, settings) in defaults.items()}


ASSETS = dg.load_assets_from_modules([ingestion, graph, training, evaluation])


def build_definitions(overrides: dict[str, dict] | None = None) -> dg.Definitions:
    return dg.Definitions(assets=ASSETS, resources=build_resources(overrides))


defs = build_definitions(load_user_config())
