"""How the tools reach S3: credentials and endpoint, from an Airflow connection or the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from pg_backups.errors import Unreachable


@dataclass(frozen=True)
class S3Access:
    region: str
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    endpoint_url: str | None = None  # None: AWS itself
    ca_file: str | None = None  # CA bundle of an endpoint with its own certificate

    def __repr__(self) -> str:  # never print the keys, even by accident in a traceback
        return f"S3Access(region={self.region!r}, endpoint_url={self.endpoint_url!r}, ca_file={self.ca_file!r})"

    __str__ = __repr__

    @property
    def endpoint_host(self) -> str:
        if not self.endpoint_url:
            return f"s3.{self.region}.amazonaws.com"
        return urlsplit(self.endpoint_url).hostname or ""

    @property
    def endpoint_port(self) -> int | None:
        return urlsplit(self.endpoint_url).port if self.endpoint_url else None

    @property
    def path_style(self) -> bool:
        """Custom endpoints (an IP, a proxy) cannot do virtual-hosted bucket names."""
        return bool(self.endpoint_url)

    def check_reachable(self, bucket: str) -> None:
        """Fail fast, with a message Ops can act on, when the bucket cannot be reached.

        The backup tools report an unreachable endpoint late and obliquely (pgBackRest: "has a
        stanza-create been performed?" after its I/O timeouts), so preflight asks S3 first.
        """
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.boto3_client(Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2}))
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise Unreachable(f"S3 bucket {bucket} at {self.endpoint_url or 'AWS ' + self.region} answered {code}",
                              "check that the bucket exists (run the S3 bucket DAG) and the credentials") from None
        except BotoCoreError as exc:
            raise Unreachable(f"S3 endpoint {self.endpoint_url or 'AWS ' + self.region} is unreachable for bucket "
                              f"{bucket}: {exc}. Nothing was backed up", "check the endpoint and the network") from None

    def boto3_client(self, config=None):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", region_name=self.region, endpoint_url=self.endpoint_url, verify=self.ca_file or True,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            aws_session_token=self.session_token,
            config=Config(s3={"addressing_style": "path" if self.path_style else "auto"},
                          retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10,
                          read_timeout=60).merge(config or Config()))


def access_from_env(settings, env: dict | None = None) -> S3Access:
    """For cron: the standard AWS variables, with the cluster configuration's endpoint and CA."""
    env = os.environ if env is None else env
    return S3Access(
        region=settings.region,
        access_key=env.get("AWS_ACCESS_KEY_ID"),
        secret_key=env.get("AWS_SECRET_ACCESS_KEY"),
        session_token=env.get("AWS_SESSION_TOKEN"),
        endpoint_url=settings.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
        ca_file=settings.ca_file or env.get("AWS_CA_BUNDLE"),
    )
