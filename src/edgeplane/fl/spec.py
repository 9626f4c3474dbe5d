"""The experiment a user submits (`edgeplane fl run FILE.yaml`, POST /api/v1/fl/experiments)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Json = dict[str, Any]
Strategy = Literal["fedavg", "median", "trimmed_mean"]
#: per_round: a new training task per selected worker and round; persistent: one
#: long-lived client task per worker for the whole experiment, handed each round it is
#: selected for (docs/fl.md)
ClientTasks = Literal["per_round", "persistent"]


class Data(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: Literal["digits"] = "digits"
    #: iid: each client a random share; labels: each client mostly two digits (non-IID)
    split: Literal["iid", "labels"] = "iid"
    seed: int = Field(0, ge=0, le=2**31)


class Select(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: dict[str, str] = Field(default_factory=dict, max_length=32)


#: The largest initial model a spec carries inline (base64 of raw ``f32`` or ``.npz``):
#: 64 MiB of base64 is 48 MiB of model, 12M float32 parameters; the API's body limit
#: (``max_body_mb``, 64 by default) bounds it first unless raised.
MAX_INITIAL_B64 = 64 * 2**20


class InitialModel(BaseModel):
    """Version 0 of an experiment's model: the bytes of one (``data``: base64 of the raw
    ``f32`` encoding or of an ``.npz``, docs/fl.md), or a version of another experiment
    the caller may see (``experiment``, ``version``; the newest without it)."""

    model_config = ConfigDict(extra="forbid")

    data: str | None = Field(None, min_length=1, max_length=MAX_INITIAL_B64)
    experiment: str | None = Field(None, min_length=1, max_length=128)
    version: int | None = Field(None, ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _one_source(self) -> InitialModel:
        if (self.data is None) == (self.experiment is None):
            raise ValueError("give either data (the model's bytes, base64) or experiment")
        if self.version is not None and self.experiment is None:
            raise ValueError("version names a version of another experiment: give experiment")
        return self


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    #: the client task's body (runtime, command, module, image, …): validated as a task's
    workload: Json
    rounds: int = Field(5, ge=1, le=10_000)
    clients_per_round: int = Field(4, ge=1, le=1_000)
    min_clients: int = Field(1, ge=1, le=1_000)
    round_timeout_s: float = Field(120, gt=0, le=86_400)
    #: what a round short of min_clients at its deadline does: retry (up to round_retries) or fail
    on_short: Literal["retry", "fail"] = "retry"
    round_retries: int = Field(2, ge=0, le=100)
    strategy: Strategy = "fedavg"
    client_tasks: ClientTasks = "per_round"
    hyperparams: dict[str, float | int | str | bool] = Field(default_factory=dict, max_length=64)
    data: Data = Field(default_factory=Data)
    select: Select = Field(default_factory=Select)
    #: version 0 (None: the digits example's softmax model, all zeros); not kept in the
    #: stored spec once it is version 0 (``Experiment.initial_model`` says where it came from)
    initial_model: InitialModel | None = None

    @model_validator(mode="after")
    def _fits(self) -> ExperimentSpec:
        if self.min_clients > self.clients_per_round:
            raise ValueError("min_clients must be at most clients_per_round")
        return self
