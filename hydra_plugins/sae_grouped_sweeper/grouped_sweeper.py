"""Hydra's basic sweeper, plus `sweep.grouped=true`: jobs that read the same activations in the same
order run as one job per group (sae/sweeps/grouping.py), through whichever launcher is configured.

Hydra only loads sweepers from the `hydra_plugins` namespace; train.py runs from the repository
root, where this directory is found. conf/train.yaml selects it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from sae.sweeps.grouping import plan_groups


class GroupedSweeper(BasicSweeper):
    def sweep(self, arguments: list[str]) -> Any:
        if not OmegaConf.select(self.config, "sweep.grouped", default=False):
            return super().sweep(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        jobs = [job for batch in self.split_arguments(overrides, None) for job in batch]
        self.validate_batch_is_legal(jobs)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        compose = lambda job: self.hydra_context.config_loader.load_sweep_config(self.config, job)
        group_jobs = plan_groups(jobs, compose, sweep_dir)
        self.overrides = [group_jobs]
        self.batch_index = 1
        results = self.launcher.launch(group_jobs, initial_job_idx=0)
        for result in results:
            _ = result.return_value  # raises if the job failed
        return [results]
