"""Every asset, check, resource, job, schedule and sensor of grec, in one Definitions object.

Resources start from the embedded defaults under GREC_HOME and take overrides from the YAML
file GREC_CONFIG names, so the same code runs on a laptop or against shared services.
"""

from collections.abc import Iterator

import dagster as dg

from assets import evaluation, features, fusion, ingestion, ingestion_checks, llm, training
from assets.ingestion import Ingestion
from grec_dagster.automation import AutomationSettings, build_automation
from grec_dagster.layout import HomeLayout
from grec_dagster.resources import (
    CheckpointStoreResource,
    DataSourceResource,
    GpuResource,
    LlmResource,
    MlflowResource,
    QualityResource,
    WarehouseResource,
)
from grec_dagster.settings import load_user_config


def build_resources(overrides: dict[str, dict] | None = None) -> dict[str, dg.ConfigurableResource]:
    """The embedded defaults, with `overrides[name]` merged into resource `name`."""
    overrides = overrides or {}
    home = HomeLayout.current()
    defaults: dict[str, tuple[type[dg.ConfigurableResource], dict]] = {
        "warehouse": (WarehouseResource, {"path": str(home.warehouse)}),
        "mlflow": (
            MlflowResource,
            {"tracking_uri": home.mlflow_tracking_uri, "artifact_location": home.mlflow_artifacts},
        ),
        "checkpoints": (CheckpointStoreResource, {"root": str(home.checkpoints)}),
        "source": (DataSourceResource, {"cache_dir": str(home.data_cache)}),
        "quality": (QualityResource, {}),
        "gpu": (GpuResource, {}),
        "llm": (LlmResource, {}),
    }
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ValueError(f"GREC_CONFIG names unknown resources {sorted(unknown)}; known: {sorted(defaults)}")
    return {name: cls(**(settings | overrides.get(name, {}))) for name, (cls, settings) in defaults.items()}


ASSETS = dg.load_assets_from_modules([ingestion, features, llm, training, fusion, evaluation])


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
        asset_checks=[*ingestion_checks.build_quality_checks(raw), llm.user_profiles_fidelity],
        jobs=automation.jobs,
        schedules=automation.schedules,
        sensors=[*ingestion.landing_sensors(raw), *automation.sensors],
        resources=resources,
    )


def ingest_landed_files(instance: dg.DagsterInstance, again: bool = False) -> Iterator[Ingestion]:
    """`grec ingest`: every file of GREC_CONFIG's `files` source ingested as its partition on `instance`,
    what the landing sensor's runs do, without the daemon (`assets.ingestion.ingest_files`)."""
    return ingestion.ingest_files(build_definitions(load_user_config()), instance, again)


defs = build_definitions(load_user_config())
