"""``trainer:``: epochs, batches, precision, devices and the time budget."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from nailseg.config.base import _Section


class TrainerConfig(_Section):
    max_epochs: int = Field(30, ge=1)
    batch_size: int = Field(8, ge=1)
    precision: Literal["auto", "32", "32-true", "16-mixed", "bf16-mixed", "mixed_float16", "float32"] = Field(
        "auto", description="auto: bf16-mixed + channels_last (Lightning) / mixed_float16 (Keras) on a GPU; "
                        "bf16-mixed + channels_last for torch on a CPU with AMX; else 32")
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    devices: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    num_nodes: int = Field(1, ge=1)
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "ddp_notebook", "fsdp",
                      "deepspeed", "single_device"] = "auto"
    accumulate_grad_batches: int = Field(1, ge=1)
    gradient_clip_val: float | None = Field(None, ge=0, allow_inf_nan=False)
    seed: int = Field(42, ge=0, le=2**32 - 1)
    limit_train_batches: int | float | None = Field(None, description="batches per epoch: a whole number >= 1, "
                                                                      "or a share in (0, 1]")
    limit_val_batches: int | float | None = Field(None, description="as limit_train_batches")
    deterministic: bool = False
    max_time: str | None = Field(None, description="a wall-clock budget (20m, 1h30m, 900s): the epochs that fit, "
                                                   "measured on the first two, and the schedule sized to them")

    @field_validator("max_time", mode="before")
    @classmethod
    def _duration(cls, v):
        from nailseg.core.budget import parse_duration

        if v is None:
            return v
        parse_duration(v)
        return str(v)

    @property
    def max_time_s(self) -> float | None:
        from nailseg.core.budget import parse_duration

        return None if self.max_time is None else parse_duration(self.max_time)

    @field_validator("limit_train_batches", "limit_val_batches")
    @classmethod
    def _count_or_share(cls, v):
        if v is None or isinstance(v, bool):
            if isinstance(v, bool):
                raise ValueError("must be a whole number >= 1 or a share in (0, 1]")
            return v
        if isinstance(v, int):
            if v < 1:
                raise ValueError(f"{v}: a number of batches must be at least 1")
            return v
        if not (0.0 < v <= 1.0):
            raise ValueError(f"{v}: a share of the batches must be in (0, 1] (or give a whole number)")
        return v

    @model_validator(mode="after")
    def _launchable_here(self):
        import os as _os

        cluster = any(v in _os.environ for v in ("SLURM_NTASKS", "WORLD_SIZE", "MASTER_ADDR", "TORCHELASTIC_RUN_ID"))
        if self.num_nodes > 1 and not cluster:
            raise ValueError(f"num_nodes={self.num_nodes}: several nodes need a cluster launcher (SLURM or torchrun "
                             "sets WORLD_SIZE/MASTER_ADDR); none is set, so training would wait forever")
        return self
