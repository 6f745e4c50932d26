"""An empty MLflow SQLite store, migrated once per test session and copied into each scratch
project (creating one runs MLflow's schema migrations: ~7 s on two busy cores)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    from mlflow.tracking import MlflowClient
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def empty_store(mlflow_template):
    """Factory: empty_store(workdir) puts an empty migrated ``mlflow.db`` there."""
    def put(workdir: Path) -> Path:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(mlflow_template, Path(workdir) / "mlflow.db"))
    return put
