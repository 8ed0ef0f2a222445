"""The data-store block: where datasets, checkpoints and raw data live, and how to reach S3."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from blocks.loading import load_saved
from tasks.core import settings
from workloads.store import ObjectStore, S3Options


class DataStore(Block):
    """Root of gpuflow's storage: a local folder or an S3 prefix, with S3 endpoint and credentials.

    Credentials are secrets: they are never logged and reach workloads only as environment variables
    (or Kubernetes secret references on the cluster backend).

    Example:
        ```python
        from blocks.data_store import DataStore
        store = DataStore.load("BLOCK_NAME")  # e.g. "minio"
        ```
    """

    _block_type_name = "gpuflow Data Store"
    _block_type_slug = "gpuflow-data-store"

    root_uri: str = Field(
        default="",
        description="Root of the store: a path, file:// or s3://bucket/prefix. Empty means GPUFLOW_HOME/store.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint for MinIO or other S3-compatible stores; empty for AWS."
    )
    s3_region: str | None = Field(default=None, description="S3 region, e.g. us-east-1.")
    aws_access_key_id: SecretStr | None = Field(default=None, description="S3 access key id.")
    aws_secret_access_key: SecretStr | None = Field(default=None, description="S3 secret access key.")

    @classmethod
    def embedded(cls) -> DataStore:
        """The default store: GPUFLOW_STORE_URI or GPUFLOW_HOME/store, S3 settings from the environment."""
        return cls(root_uri=settings.store_uri())

    @property
    def root(self) -> str:
        return (self.root_uri or settings.store_uri()).rstrip("/")

    def s3_options(self) -> S3Options:
        return S3Options(
            endpoint_url=self.s3_endpoint_url,
            region=self.s3_region,
            access_key_id=self.aws_access_key_id.get_secret_value() if self.aws_access_key_id else None,
            secret_access_key=self.aws_secret_access_key.get_secret_value() if self.aws_secret_access_key else None,
        )

    def object_store(self) -> ObjectStore:
        return ObjectStore(self.s3_options())

    def workload_env(self) -> dict[str, str]:
        """Plain configuration a workload needs to reach this store: where it is, never who may read it."""
        env = {"GPUFLOW_STORE_URI": self.root}
        opts = self.s3_options()
        if opts.endpoint_url:
            env["AWS_ENDPOINT_URL_S3"] = opts.endpoint_url
        if opts.region:
            env["AWS_DEFAULT_REGION"] = opts.region
        return env

    def workload_secrets(self) -> dict[str, str]:
        """The store's credentials for a workload (values are secrets: never log them; pods get them by reference)."""
        opts = self.s3_options()
        if opts.access_key_id and opts.secret_access_key:
            return {"AWS_ACCESS_KEY_ID": opts.access_key_id, "AWS_SECRET_ACCESS_KEY": opts.secret_access_key}
        return {}


def resolve_data_store(name: str | None) -> DataStore:
    """A saved block by name, or the embedded default when no name is given."""
    return load_saved(DataStore, name) if name else DataStore.embedded()
