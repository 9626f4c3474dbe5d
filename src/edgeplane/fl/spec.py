"""The experiment a user submits (`edgeplane fl run FILE.yaml`, POST /api/v1/fl/experiments)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Json = dict[str, Any]
Strategy = Literal["fedavg", "median", "trimmed_mean"]


class Data(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: Literal["digits"] = "digits"
    #: iid: each client a random share; labels: each client mostly two digits (non-IID)
    split: Literal["iid", "labels"] = "iid"
    seed: int = Field(0, ge=0, le=2**31)


class Select(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: dict[str, str] = Field(default_factory=dict, max_length=32)


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
    hyperparams: dict[str, float | int | str | bool] = Field(default_factory=dict, max_length=64)
    data: Data = Field(default_factory=Data)
    select: Select = Field(default_factory=Select)

    @model_validator(mode="after")
    def _fits(self) -> ExperimentSpec:
        if self.min_clients > self.clients_per_round:
            raise ValueError("min_clients must be at most clients_per_round")
        return self
