"""A real single-node Slurm cluster for the tests of this directory that need one (started once per module)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from support.slurm_cluster import LocalSlurm, missing_programs

PACKAGES = ("slurm-wlm", "munge", "slurmdbd", "mariadb-server")


@pytest.fixture(scope="module")
def slurm_cluster():
    if shutil.which("slurmctld") is None and not Path("/usr/sbin/slurmctld").exists():
        pytest.skip(f"Slurm is not installed (apt-get install -y {' '.join(PACKAGES)})")
    missing = missing_programs()
    assert not missing, f"Slurm is partly installed; missing {missing}: apt-get install -y {' '.join(PACKAGES)}"
    assert os.geteuid() == 0, "the Slurm tests start munged, MariaDB and the Slurm daemons, which needs root"
    cluster = LocalSlurm().start()
    yield cluster
    cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)
