"""The lake layer: table schemas, DuckLake catalog + Parquet data (local or S3), exactly-once
batch commits, confined SQL, datasets, and the artifact store. Imports nothing of ours.

    from storage import Lake
    with Lake.open() as lake:
        print(lake.tables())
"""

from .artifacts import ArtifactStore
from .config import LakeConfig, S3Settings
from .errors import BadInput, FactoryError, LakeBusy, MissingDependency
from .lake import CommitResult, DatasetVersion, Lake
from .schemas import SCHEMA_VERSION, TABLES

__all__ = [
    "ArtifactStore",
    "BadInput",
    "CommitResult",
    "DatasetVersion",
    "FactoryError",
    "Lake",
    "LakeBusy",
    "LakeConfig",
    "MissingDependency",
    "S3Settings",
    "SCHEMA_VERSION",
    "TABLES",
]
