"""Every asset, check, resource, job, schedule and sensor of grec, in one Definitions object.

Resources start from the embedded defaults under GREC_HOME and take overrides from the YAML
file GREC_CONFIG names, so the same code runs on a laptop or against shared services.
"""

import dagster as dg

from assets import evaluation, fusion, graph, ingestion, llm, quality, temporal, training
from grec_dagster.automation import AutomationSettings, build_automation
from grec_dagster.home import default_paths, load_user_config
from grec_dagster.resources import (
    CheckpointStoreResource,
    DataSourceResource,
    GpuResource,
    LlmResource,
    MlflowResource,
    QualityResource,
    WarehouseResource,
)


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
        "quality": (QualityResource, {}),
        "gpu": (GpuResource, {}),
        "llm": (LlmResource, {}),
    }
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ValueError(f"GREC_CONFIG names unknown resources {sorted(unknown)}; known: {sorted(defaults)}")
    return {name: cls(**(settings | overrides.get(name, {}))) for name, (cls, settings) in defaults.items()}


ASSETS = dg.load_assets_from_modules([ingestion, graph, llm, training, temporal, fusion, evaluation])


def build_definitions(overrides: dict[str, dict] | None = None) -> dg.Definitions:
    """`overrides` is GREC_CONFIG's content: resource settings, plus an optional `automation` section."""
    overrides = dict(overrides or {})
    settings = AutomationSettings.model_validate(overrides.pop("automation", {}))
    resources = build_resources(overrides)
    # Your files are partitioned by file (with a landing sensor); a built-in source is one snapshot.
    raw = ingestion.raw_interactions_for(resources["source"].kind)
    assets = [raw, *(asset for asset in ASSETS if raw.key not in asset.keys)]
    automation = build_automation(settings, assets, raw.key)
    return dg.Definitions(
        assets=assets,
        asset_checks=quality.build_quality_checks(raw),
        jobs=automation.jobs,
        schedules=automation.schedules,
        sensors=[*ingestion.landing_sensors(raw), *automation.sensors],
        resources=resources,
    )


defs = build_definitions(load_user_config())
