"""Settings from the environment (KEYROTOR_*) and the policy file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Process settings. Secrets are SecretStr so they never print."""

    model_config = SettingsConfigDict(env_prefix="KEYROTOR_", extra="ignore")

    data_dir: Path = Path(".keyrotor")
    database_url: str = ""
    # Redis (redis://[:password@]host:6379/0, rediss:// for TLS) for the rate limits of
    # credentials and handles, shared by every API process; unset: they share them through
    # the database.
    redis_url: SecretStr | None = None
    master_key: SecretStr | None = None
    admin_key: SecretStr | None = None
    # comma-separated base64 peppers for API-credential hashes, current first; unset: derived
    # from the master key
    credential_pepper: SecretStr | None = None
    config: Path | None = None
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    # TLS to the Temporal frontend (a cluster with TLS, or Temporal Cloud): on when set, or
    # when any of the TLS files or the API key is. `temporal_tls_ca` verifies the server (unset:
    # the system's roots); `temporal_tls_cert` and `temporal_tls_key` are this process's client
    # certificate (mTLS); `temporal_api_key` is a Temporal Cloud API key.
    temporal_tls: bool = False
    temporal_tls_ca: Path | None = None
    temporal_tls_cert: Path | None = None
    temporal_tls_key: Path | None = None
    temporal_tls_server_name: str = ""
    temporal_api_key: SecretStr | None = None
    task_queue: str = "keyrotor"
    # Workflows a worker keeps in memory (about 90 to 105 KiB each, docs/scaling.md); 500 keeps
    # one worker under 300 MB (the SDK's default of 1000 does not). A workflow not cached is
    # replayed from its history at each wakeup, which doubles its CPU; keyrotor's commits need
    # it cached while they run, so it cannot be 0.
    worker_cache_size: int = Field(default=500, ge=1)
    # processes of `keyrotor worker` on this machine, each a whole worker with its own cache
    # (`worker_cache_size` each) and sticky queue, about one core each (docs/scaling.md)
    worker_processes: int = Field(default=1, ge=1)
    # The only environment whose keys this process creates, reads and uses; empty: every one.
    environment: str = ""
    api_host: str = "127.0.0.1"
    api_port: int = 3000
    # processes of `keyrotor api` sharing the port (each with its own caches: `core.changes`)
    api_workers: int = Field(default=1, ge=1)
    # One log line per request (uvicorn's access log); off by default, as in Vault: the audit
    # trail records every lifecycle change, and a line per encrypt costs more than the encrypt.
    access_log: bool = False
    # Requests a minute each admin key may make to the admin API (every route but the hot
    # ones: use, verify, validate, livez); above it, 429 with Retry-After. 0: no limit.
    admin_rate_limit: int = Field(default=1200, ge=0)
    # Largest request body the hot routes accept (413 above it); Vault's default is 32 MiB.
    max_request_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    # Attempts at each webhook delivery before it is marked failed (1 s apart, doubling, at
    # most 10 min: 20 attempts span about two hours); a failed delivery can be replayed.
    webhook_max_attempts: int = Field(default=20, ge=1, le=100)
    ui_origin: str = "http://localhost:8233"
    # Browser applications (dashboards) that may call the whole API with an admin key, CORS
    # GET, POST and DELETE; comma-separated. The UI origins above may only POST (the codec).
    cors_origins: str = ""
    # Key providers besides `local`; each is available once its address or module is set.
    vault_addr: str = ""
    vault_token: SecretStr | None = None
    vault_mount: str = "transit"
    aws_endpoint_url: str = ""  # with the usual AWS_* credentials; or set aws_region
    aws_region: str = ""
    pkcs11_module: str = ""
    pkcs11_token_label: str = ""
    pkcs11_pin: SecretStr | None = None
    azure_vault_url: str = ""  # credentials: azure-identity's DefaultAzureCredential
    # Seconds a call to a remote provider (vault, aws-kms, azure-keyvault) waits for an answer
    # (connecting waits at most 3 s of it) before it fails as unavailable and the activity
    # retries it: one attempt must end well inside a commit's 15 s timeout.
    provider_timeout: float = Field(default=8.0, gt=0, le=10)

    @field_validator(
        "master_key",
        "admin_key",
        "credential_pepper",
        "redis_url",
        "temporal_api_key",
        "temporal_tls_ca",
        "temporal_tls_cert",
        "temporal_tls_key",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `export KEYROTOR_ADMIN_KEY=` means "none", as an absent variable does
        return None if value == "" else value

    @property
    def provider_connect_timeout(self) -> float:
        return min(3.0, self.provider_timeout)

    def ui_origins(self) -> list[str]:
        """`ui_origin` may list several origins, comma-separated."""
        return [o.strip() for o in self.ui_origin.split(",") if o.strip()]

    def browser_origins(self) -> list[str]:
        """`cors_origins`, comma-separated."""
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'keyrotor.db').resolve()}"
