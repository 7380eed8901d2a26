"""What a stage gets from the engine: :class:`RunContext`."""

from __future__ import annotations

from dataclasses import dataclass, field

import xarray as xr

from obpipe.config import PipelineConfig
from obpipe.engine.blockwise import products_path, stage_complete
from obpipe.io import store

__all__ = ["RunContext"]


@dataclass
class RunContext:
    """What a stage gets: where the survey and products live, and run options.

    ``config`` is the whole typed configuration; a stage reads its own typed section
    (``ctx.config.distance``) and nothing else of it.
    """

    survey_path: str
    products_dir: str
    scheduler: str | None = None
    force: bool = False
    config: PipelineConfig = field(default_factory=PipelineConfig)
    #: model files supplied with ``obpipe run --models DIR`` (copied into
    #: ``PRODUCTS_DIR/models``): the stages that train them reuse them, never retrain
    models_supplied: bool = False

    @property
    def products_path(self) -> str:
        return products_path(self.products_dir)

    def stage_complete(self, stage: str) -> bool:
        return stage_complete(self.products_dir, stage)

    def open_survey(self) -> xr.Dataset:
        return store.open_cube(self.survey_path)
