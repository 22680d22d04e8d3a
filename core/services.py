"""The services one keyrotor process needs, built from its settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.api_credentials import CredentialService
from core.bulk import BulkService
from core.changes import ChangeFeed
from core.cleanup import CleanupService
from core.codec import TemporalTLSError, temporal_tls
from core.credentials import AuthenticationError, PepperError, PepperRing, parse_admin_key
from core.envelope import EnvelopeError, MasterKeyring
from core.keys import KeyService
from core.master_keys import MasterKeyService
from core.policy import Policies, default_policy_path, parse_policies, read_policy_text
from core.policy_versions import PolicyVersions
from core.providers.base import KeyProvider
from core.providers.local import LocalProvider
from core.ratelimit import DatabaseRateLimiter, RedisLimits
from core.settings import Settings
from core.store.db import Store
from core.webhooks import WebhookService


class ConfigurationError(RuntimeError):
    """The process cannot start with these settings; the message says which one and why."""


@dataclass
class Services:
    """Everything the worker and the API share."""

    settings: Settings
    policies: Policies
    keyring: MasterKeyring
    store: Store
    providers: dict[str, KeyProvider]
    keys: KeyService
    credentials: CredentialService
    webhooks: WebhookService
    bulk: BulkService
    policy_versions: PolicyVersions
    # the version of `policies` (the newest in the store when last looked)
    policy_version: int
    # the API polls it to keep the use path's caches fresh (`core.changes`)
    changes: ChangeFeed = field(init=False)
    master_keys: MasterKeyService = field(init=False)
    cleanup: CleanupService = field(init=False)

    def __post_init__(self) -> None:
        rows = {"key": self.keys.rows}
        rows |= dict.fromkeys(("credential", "handle"), self.credentials.rows)
        self.changes = ChangeFeed(self.store, rows)
        self.master_keys = MasterKeyService(self.store, self.keyring)
        self.cleanup = CleanupService(self.store, self.keys, lambda: self.policies)

    def refresh_policies(self) -> bool:
        """Take up a newer policy version if there is one (API processes and workers call this
        every few seconds); whether it changed. Master keys retired meanwhile are refused from
        now on."""
        self.master_keys.load_retired()
        if self.policy_versions.newest_version() == self.policy_version:
            return False
        row = self.policy_versions.newest()
        self.policies = parse_policies(row.text, f"policy version {row.version}")
        self.policy_version = row.version
        self.keys.pqc = self.policies.pqc
        return True

    def close(self) -> None:
        self.credentials.close()
        self.webhooks.close()
        self.store.dispose()


def build_services(settings: Settings) -> Services:
    """Load the policy, open and migrate the store, and set up the providers."""
    if settings.master_key is None:
        raise ConfigurationError("KEYROTOR_MASTER_KEY is not set")
    keyring = MasterKeyring.parse(settings.master_key.get_secret_value())
    if settings.admin_key is not None:
        try:
            parse_admin_key(settings.admin_key.get_secret_value())
        except AuthenticationError:
            raise ConfigurationError(
                "KEYROTOR_ADMIN_KEY is malformed: expected kra_<id>_<secret of 32 or more"
                " characters>, like the key `keyrotor dev` prints (or leave it unset)"
            ) from None
    try:
        temporal_tls(settings)  # a wrong TLS file stops the start here, not at first connect
    except TemporalTLSError as e:
        raise ConfigurationError(str(e)) from None
    redis_limits = build_redis_limits(settings)
    path = settings.config or default_policy_path()
    text = read_policy_text(path)
    policies = parse_policies(text, str(path))  # a bad file stops the start, whatever is stored
    store = Store(settings.resolved_database_url())
    store.migrate()
    versions = PolicyVersions(store)
    versions.sync_file(text)
    newest = versions.newest()
    if newest.text != text:  # PUT /config made a newer one
        policies = parse_policies(newest.text, f"policy version {newest.version}")
    if settings.environment and settings.environment not in policies.environments:
        raise ConfigurationError(
            f"KEYROTOR_ENVIRONMENT {settings.environment!r} is not one of the policy's"
            f" environments ({', '.join(policies.environments)})"
        )
    providers = build_providers(settings, keyring)
    pepper = settings.credential_pepper
    try:
        peppers = PepperRing.from_setting(pepper.get_secret_value() if pepper else None, keyring)
    except PepperError as e:
        raise ConfigurationError(f"KEYROTOR_CREDENTIAL_PEPPER: {e}") from None
    services = Services(
        settings,
        policies,
        keyring,
        store,
        providers,
        KeyService(store, providers, settings.environment or None, policies.pqc),
        CredentialService(
            store,
            keyring,
            peppers,
            redis_limits or DatabaseRateLimiter(store),
            redis_limits,
            settings.environment or None,
        ),
        WebhookService(store, keyring),
        BulkService(store),
        versions,
        newest.version,
    )
    try:
        services.master_keys.load_retired()
    except EnvelopeError as e:
        services.close()
        raise ConfigurationError(f"KEYROTOR_MASTER_KEY: {e}") from None
    return services


def build_redis_limits(settings: Settings) -> RedisLimits | None:
    """Rate limits and usage limits in Redis when `KEYROTOR_REDIS_URL` is set. It connects on
    first use: a Redis that is down at start is not a reason not to serve (`RedisLimits`)."""
    if settings.redis_url is None:
        return None
    try:
        return RedisLimits(settings.redis_url.get_secret_value())
    except ValueError:  # its text may quote the URL, password and all
        raise ConfigurationError(
            "KEYROTOR_REDIS_URL is not a Redis URL: expected redis://[:password@]host[:port][/db]"
            " (rediss:// for TLS, or unix:///path)"
        ) from None


def build_providers(settings: Settings, keyring: MasterKeyring) -> dict[str, KeyProvider]:
    """`local` always; each other provider once its settings are there. A key that names a
    provider missing here is refused when it is created (400 PROVIDER_NOT_CONFIGURED)."""
    providers: dict[str, KeyProvider] = {"local": LocalProvider(keyring)}
    if settings.vault_addr:
        if settings.vault_token is None:
            raise ConfigurationError(
                "KEYROTOR_VAULT_ADDR is set: KEYROTOR_VAULT_TOKEN is needed too"
            )
        from core.providers.vault_transit import VaultTransitProvider

        providers["vault"] = VaultTransitProvider(
            settings.vault_addr,
            settings.vault_token.get_secret_value(),
            settings.vault_mount,
            timeout=(settings.provider_connect_timeout, settings.provider_timeout),
        )
    if settings.aws_endpoint_url or settings.aws_region:
        from core.providers.aws_kms import AWSKMSProvider, build_client  # boto3: slow import

        client = build_client(
            endpoint_url=settings.aws_endpoint_url or None,
            region_name=settings.aws_region or None,
            connect_timeout=settings.provider_connect_timeout,
            read_timeout=settings.provider_timeout,
        )
        providers["aws-kms"] = AWSKMSProvider(client)
    if settings.azure_vault_url:
        try:
            from azure.identity import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
                DefaultAzureCredential,
            )
        except ImportError:
            raise ConfigurationError(
                "KEYROTOR_AZURE_VAULT_URL is set: install azure-identity (pip install"
                " 'keyrotor[azure]') for its credentials"
            ) from None
        from core.providers.azure_keyvault import AzureKeyVaultProvider

        providers["azure-keyvault"] = AzureKeyVaultProvider(
            settings.azure_vault_url,
            DefaultAzureCredential(),
            connection_timeout=settings.provider_connect_timeout,
            read_timeout=settings.provider_timeout,
        )
    if settings.pkcs11_module:
        if not settings.pkcs11_token_label or settings.pkcs11_pin is None:
            raise ConfigurationError(
                "KEYROTOR_PKCS11_MODULE is set: KEYROTOR_PKCS11_TOKEN_LABEL and"
                " KEYROTOR_PKCS11_PIN are needed too"
            )
        from core.providers.pkcs11 import PKCS11Provider  # loads the PKCS#11 library

        providers["pkcs11"] = PKCS11Provider(
            settings.pkcs11_module,
            settings.pkcs11_token_label,
            settings.pkcs11_pin.get_secret_value(),
        )
    return providers
