"""The Azure Key Vault provider: one Key Vault key per keyrotor key, native versions pinned.

Keyrotor key `k` is the Key Vault key `keyrotor-<k>` (characters Key Vault names refuse are
escaped, see `key_vault_key_name`). Each keyrotor version is one native Key Vault version,
tagged `keyrotor-version=<n>`: `create_version` looks for that tag before it creates anything,
so a retried activity finds the version it made before. `provider_key_ref` is the version's full
id (`https://<vault>/keys/<name>/<version>`) and every operation uses exactly that version.

| keyrotor algorithm | Key Vault key      | signature algorithm                          |
| ------------------ | ------------------ | -------------------------------------------- |
| ECDSA-P256         | EC, P-256          | ES256 (raw r||s, returned as DER like core)  |
| RSA-2048           | RSA 2048           | PS256 (salt 32, as core.algorithms)          |
| RSA-4096           | RSA 4096           | PS256                                        |

RSA versions are signing keys only (key_ops sign/verify): Key Vault's RSA-OAEP-256 takes no
associated data, so it cannot bind keyrotor's aad; encrypting raises UnsupportedOperationError.
A standard-tier vault holds no symmetric, HMAC, Ed25519 or post-quantum keys: those algorithms
are refused with UnsupportedAlgorithmError at creation.

A key brought in (BYOK, `import_version`) becomes version 1 through Key Vault's key import.

Key Vault signs digests, so the provider hashes the message with SHA-256 first. Verification is
done here with `cryptography` against the public key Key Vault returns for the pinned version
(as the SDK itself does): fetching it also makes Key Vault refuse a disabled version.

Disabling a version sets `enabled=false` on it; Key Vault then refuses every use (403 with
inner error `KeyDisabled`, mapped to ProviderOperationError). Key Vault deletes whole keys, never
single versions, so destroying a version disables it and tags it `keyrotor-destroyed=true`;
once every version of the key is destroyed the whole key is deleted (soft delete: Key Vault
purges it at the end of the vault's retention period, the earliest destruction it allows).
Destroying a version whose key still has live versions therefore leaves its material in the
vault, disabled, until the last version goes.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.keyvault.keys import JsonWebKey, KeyClient, KeyVaultKey, KeyVaultKeyIdentifier
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from core.algorithms import (
    Algorithm,
    InvalidSignatureError,
    Operation,
    UnsupportedOperationError,
)
from core.providers.base import (
    ProviderConfigurationError,
    ProviderError,
    ProviderHealth,
    ProviderOperationError,
    ProviderUnavailableError,
    UnsupportedAlgorithmError,
    VersionHandle,
    VersionMaterial,
    big_endian,
    held,
    holds,
)

KEY_NAME_PREFIX = "keyrotor-"
VERSION_TAG = "keyrotor-version"
KEY_ID_TAG = "keyrotor-key-id"
ALGORITHM_TAG = "keyrotor-algorithm"
DESTROYED_TAG = "keyrotor-destroyed"
# A version that lost a creation race: disabled, and never the answer to a lookup.
DISCARDED_TAG = "keyrotor-discarded"
_MAX_NAME_LENGTH = 127
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
# One attempt and short timeouts: the calling activity has its own retry policy, which
# ProviderUnavailableError tells it to use, and an attempt must end inside the commit's 15 s
# timeout (workflows.managed.COMMIT_TIMEOUT). Callers' kwargs override these.
_DEFAULT_CLIENT_KWARGS: dict[str, Any] = {
    "retry_total": 0,
    "connection_timeout": 3,
    "read_timeout": 8,
}
_MAX_CACHED_CLIENTS = 256
_NOT_FOUND = (ResourceNotFoundError,)

_T = TypeVar("_T")


@dataclass(frozen=True)
class _AKVSpec:
    """How one keyrotor algorithm is held in Key Vault."""

    kty: str
    signature_algorithm: SignatureAlgorithm
    key_bits: int
    curve: str | None = None


_SPECS: dict[str, _AKVSpec] = {
    "ECDSA-P256": _AKVSpec("EC", SignatureAlgorithm.es256, 256, curve="P-256"),
    "RSA-2048": _AKVSpec("RSA", SignatureAlgorithm.ps256, 2048),
    "RSA-4096": _AKVSpec("RSA", SignatureAlgorithm.ps256, 4096),
}
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def key_vault_key_name(key_id: str) -> str:
    """The Key Vault key holding every version of keyrotor key `key_id`.

    Key Vault names allow letters, digits and dashes only, so the mapping is an escape that no
    two key ids share: a dash becomes `--`, any other byte outside [A-Za-z0-9] becomes `-xx`
    (lower-case hex of the UTF-8 byte). Names over 127 characters end in a SHA-256 prefix of
    the key id instead; the `keyrotor-key-id` tag tells such names apart.
    """
    if not key_id:
        raise ProviderOperationError("an empty key id cannot name a Key Vault key")
    escaped = []
    for byte in key_id.encode("utf-8"):
        char = chr(byte)
        if char in _ALNUM:
            escaped.append(char)
        elif char == "-":
            escaped.append("--")
        else:
            escaped.append(f"-{byte:02x}")
    name = KEY_NAME_PREFIX + "".join(escaped)
    if len(name) > _MAX_NAME_LENGTH:
        digest = hashlib.sha256(key_id.encode("utf-8")).hexdigest()[:32]
        name = f"{name[: _MAX_NAME_LENGTH - 34]}-h{digest}"
    return name


class AzureKeyVaultProvider:
    """Keys held in Azure Key Vault, one Key Vault key per keyrotor key, one version per version.

    Material never leaves Key Vault: `create_version` returns the version's Key Vault id as
    `provider_key_ref` and its SubjectPublicKeyInfo. `credential` is any azure.core
    TokenCredential (azure-identity's are the usual choice; it is not required here). Extra
    keyword arguments go to the SDK clients (`connection_verify`, `api_version`, retry and
    timeout settings, `verify_challenge_resource`).
    """

    name: str = "azure-keyvault"
    disables_older: bool = False

    def __init__(self, vault_url: str, credential: TokenCredential, **client_kwargs: Any) -> None:
        parts = urlsplit(vault_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ProviderConfigurationError("azure-keyvault vault URL must be an https:// URL")
        port = f":{parts.port}" if parts.port else ""
        # Only scheme, host and port: never userinfo or a query string in messages or ids.
        self._vault_url = f"https://{parts.hostname}{port}"
        self._credential = credential
        self._client_kwargs = {**_DEFAULT_CLIENT_KWARGS, **client_kwargs}
        try:
            self._client = KeyClient(self._vault_url, credential, **self._client_kwargs)
        except (ValueError, TypeError, AzureError) as e:
            raise ProviderConfigurationError(
                f"azure-keyvault client cannot be built ({type(e).__name__})"
            ) from e
        self._crypto_clients: dict[str, CryptographyClient] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AzureKeyVaultProvider({self._vault_url!r})"

    # -- algorithms and names ----------------------------------------------------------------

    def supports(self, algorithm: str) -> bool:
        return holds(_SPECS, algorithm)

    def _spec(self, algorithm: str) -> tuple[Algorithm, _AKVSpec]:
        algo = held(self.name, _SPECS, algorithm)
        return algo, _SPECS[algo.name]

    def _spec_for(self, version: VersionHandle, operation: Operation) -> _AKVSpec:
        algo, spec = self._spec(version.algorithm)
        if operation not in algo.operations or operation in (Operation.ENCRYPT, Operation.DECRYPT):
            # RSA can encrypt in the registry, but Key Vault's RSA-OAEP cannot bind the aad.
            raise UnsupportedOperationError(
                f"{algo.name} in azure-keyvault does not support {operation}"
            )
        return spec

    def _locate(self, version: VersionHandle) -> tuple[str, str]:
        """The (key name, Key Vault version) a handle pins; refuses refs of another key."""
        name = key_vault_key_name(version.key_id)
        ref = version.provider_key_ref
        try:
            parsed = KeyVaultKeyIdentifier(ref)
        except ValueError:
            parsed = None
        if (
            parsed is None
            or not parsed.version
            or parsed.name != name
            or parsed.vault_url.rstrip("/") != self._vault_url
        ):
            raise ProviderOperationError(
                f"azure-keyvault {_what(version)}: reference is not a version of {name} "
                f"in {self._vault_url}"
            )
        return name, parsed.version

    # -- lifecycle ---------------------------------------------------------------------------

    def create_version(
        self, key_id: str, number: int, algorithm: str, key_bits: int | None = None
    ) -> VersionMaterial:
        algo, spec = self._spec(algorithm)
        if key_bits is not None:
            algo.validate_key_bits(key_bits)
            if key_bits != spec.key_bits:
                raise UnsupportedAlgorithmError(
                    f"azure-keyvault holds {algo.name} keys of {spec.key_bits} bits only; "
                    f"{key_bits} was requested"
                )
        name = key_vault_key_name(key_id)
        what = f"key {key_id} v{number}"
        existing = self._tagged_version(name, key_id, number, what)
        if existing is None:
            tags = {VERSION_TAG: str(number), KEY_ID_TAG: key_id, ALGORITHM_TAG: algo.name}
            if spec.kty == "EC":
                created = self._call(
                    "create key",
                    what,
                    lambda: self._client.create_ec_key(
                        name, curve=spec.curve, key_operations=["sign", "verify"], tags=tags
                    ),
                )
            else:
                created = self._call(
                    "create key",
                    what,
                    lambda: self._client.create_rsa_key(
                        name, size=spec.key_bits, key_operations=["sign", "verify"], tags=tags
                    ),
                )
            existing = self._settle_race(name, key_id, number, created, what)
        key = existing
        if key.properties.tags and key.properties.tags.get(ALGORITHM_TAG) != algo.name:
            raise ProviderOperationError(
                f"azure-keyvault {what}: {name} already holds this version as "
                f"{key.properties.tags.get(ALGORITHM_TAG)}, not {algo.name}"
            )
        assert key.id is not None
        return VersionMaterial(
            provider_key_ref=key.id, wrapped_material=None, public_key=_spki(key, what)
        )

    def import_version(
        self, key_id: str, number: int, algorithm: str, material: bytes
    ) -> VersionMaterial:
        """Version 1 of a key made of material brought in (BYOK): Key Vault's key import, the
        private key as a JSON web key in the request body (over the client's TLS, as Key Vault's
        own import takes it), tagged like a generated version. Later versions are generated in
        Key Vault as usual. `material`: the private key as PKCS#8 DER."""
        algo, spec = self._spec(algorithm)
        if number != 1:
            raise ProviderOperationError("only the first version of a key can be imported")
        name = key_vault_key_name(key_id)
        what = f"key {key_id} v{number}"
        try:
            self._call("get key", what, lambda: self._client.get_key(name), raw=_NOT_FOUND)
        except _NOT_FOUND:
            pass
        else:  # Key Vault would add the material as a new version of that key
            raise ProviderOperationError(f"azure-keyvault {what}: {name} exists already")
        jwk = _private_jwk(material, spec, what)
        tags = {VERSION_TAG: str(number), KEY_ID_TAG: key_id, ALGORITHM_TAG: algo.name}
        imported = self._call(
            "import key", what, lambda: self._client.import_key(name, jwk, tags=tags)
        )
        assert imported.id is not None
        return VersionMaterial(
            provider_key_ref=imported.id, wrapped_material=None, public_key=_spki(imported, what)
        )

    def _tagged_version(self, name: str, key_id: str, number: int, what: str) -> KeyVaultKey | None:
        """The live version of `name` tagged as keyrotor version `number`, if there is one."""
        candidates = self._candidates(name, key_id, number, what)
        if not candidates:
            return None
        version = candidates[0][1]
        return self._call("get key", what, lambda: self._client.get_key(name, version))

    def _candidates(
        self, name: str, key_id: str, number: int, what: str
    ) -> list[tuple[tuple[float, str], str]]:
        try:
            listed = self._call(
                "list versions",
                what,
                lambda: list(self._client.list_properties_of_key_versions(name)),
                raw=(ResourceNotFoundError,),
            )
        except ResourceNotFoundError:
            return []
        found = []
        for props in listed:
            tags = props.tags or {}
            if tags.get(VERSION_TAG) != str(number) or tags.get(DISCARDED_TAG):
                continue
            if tags.get(KEY_ID_TAG, key_id) != key_id:
                raise ProviderOperationError(
                    f"azure-keyvault {what}: {name} belongs to another keyrotor key"
                )
            created = props.created_on.timestamp() if props.created_on else 0.0
            found.append(((created, props.version or ""), props.version or ""))
        # The earliest version wins, so every caller agrees on one even after a race.
        found.sort()
        return found

    def _settle_race(
        self, name: str, key_id: str, number: int, created: KeyVaultKey, what: str
    ) -> KeyVaultKey:
        """Keep one version per number should two attempts have created one concurrently."""
        candidates = self._candidates(name, key_id, number, what)
        if not candidates or candidates[0][1] == created.properties.version:
            return created
        loser = created.properties.version
        tags = {**(created.properties.tags or {}), DISCARDED_TAG: "true"}
        try:
            self._call(
                "discard version",
                what,
                lambda: self._client.update_key_properties(name, loser, enabled=False, tags=tags),
            )
        except ProviderError:
            pass  # Best effort: the version is tagged, an operator can find and disable it.
        winner = candidates[0][1]
        return self._call("get key", what, lambda: self._client.get_key(name, winner))

    def disable_version(self, version: VersionHandle) -> None:
        name, kv_version = self._locate(version)
        self._disable(name, kv_version, None, _what(version))

    def _disable(self, name: str, kv_version: str, tags: dict[str, str] | None, what: str) -> None:
        try:
            self._call(
                "disable version",
                what,
                lambda: self._client.update_key_properties(
                    name, kv_version, enabled=False, tags=tags
                ),
                raw=(ResourceNotFoundError,),
            )
        except ResourceNotFoundError:
            return  # Gone (its key was deleted): more than disabled already.

    def destroy_version(self, version: VersionHandle) -> None:
        name, kv_version = self._locate(version)
        what = _what(version)
        try:
            listed = self._call(
                "list versions",
                what,
                lambda: list(self._client.list_properties_of_key_versions(name)),
                raw=(ResourceNotFoundError,),
            )
        except ResourceNotFoundError:
            return  # The whole key is already deleted.
        mine = next((p for p in listed if p.version == kv_version), None)
        if mine is None:
            return
        tags = {**(mine.tags or {}), DESTROYED_TAG: "true"}
        # Key Vault has no per-version deletion: the version stays, disabled and marked.
        self._disable(name, kv_version, tags, what)
        live = [
            p
            for p in listed
            if p.version != kv_version
            and not (p.tags or {}).get(DESTROYED_TAG)
            and not (p.tags or {}).get(DISCARDED_TAG)
        ]
        if live:
            return
        try:
            # Starting the deletion is what matters; the poller only reports when it completes.
            self._call(
                "delete key",
                what,
                lambda: self._client.begin_delete_key(name),
                raw=(ResourceNotFoundError,),
            )
        except ResourceNotFoundError:
            return

    # -- operations --------------------------------------------------------------------------

    def encrypt(self, version: VersionHandle, plaintext: bytes, aad: bytes) -> bytes:
        self._spec_for(version, Operation.ENCRYPT)
        raise AssertionError("unreachable: _spec_for refuses encryption")

    def decrypt(self, version: VersionHandle, data: bytes, aad: bytes) -> bytes:
        self._spec_for(version, Operation.DECRYPT)
        raise AssertionError("unreachable: _spec_for refuses decryption")

    def sign(self, version: VersionHandle, message: bytes) -> bytes:
        spec = self._spec_for(version, Operation.SIGN)
        _, kv_version = self._locate(version)
        what = _what(version)
        crypto = self._crypto_client(version.provider_key_ref)
        digest = hashlib.sha256(message).digest()
        result = self._call("sign", what, lambda: crypto.sign(spec.signature_algorithm, digest))
        signature = bytes(result.signature)
        if result.key_id and KeyVaultKeyIdentifier(result.key_id).version != kv_version:
            # Defence in depth should a backend ignore the pinned version.
            raise ProviderOperationError(f"azure-keyvault {what}: signed by another version")
        if spec.kty == "EC":
            if len(signature) != 64:
                raise ProviderOperationError(f"azure-keyvault {what}: malformed ES256 signature")
            # Key Vault returns JWS (r || s); keyrotor's ECDSA signatures are DER like core's.
            return utils.encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
        return signature

    def verify(self, version: VersionHandle, message: bytes, signature: bytes) -> None:
        spec = self._spec_for(version, Operation.VERIFY)
        name, kv_version = self._locate(version)
        what = _what(version)
        # Fetching the pinned version's key also makes Key Vault refuse a disabled version.
        key = self._call("get key", what, lambda: self._client.get_key(name, kv_version))
        public = serialization.load_der_public_key(_spki(key, what))
        try:
            if spec.kty == "EC":
                if not isinstance(public, ec.EllipticCurvePublicKey):
                    raise ProviderOperationError(f"azure-keyvault {what}: not an EC key")
                public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            else:
                if not isinstance(public, rsa.RSAPublicKey):
                    raise ProviderOperationError(f"azure-keyvault {what}: not an RSA key")
                public.verify(signature, message, _PSS, hashes.SHA256())
        except (InvalidSignature, ValueError):
            # ValueError: a signature that is not even DER; simply not valid.
            raise InvalidSignatureError(f"{version.algorithm} signature does not verify") from None

    def public_key(self, version: VersionHandle) -> bytes | None:
        self._spec(version.algorithm)
        name, kv_version = self._locate(version)
        what = _what(version)
        try:
            key = self._call("get key", what, lambda: self._client.get_key(name, kv_version))
        except ProviderOperationError:
            # Key Vault refuses to read a disabled version, but its public key is no secret and
            # verifiers may still need it: serve the copy stored at creation.
            if version.public_key is None:
                raise
            return version.public_key
        return _spki(key, what)

    def health(self) -> ProviderHealth:
        where = f"azure-keyvault at {self._vault_url}"
        try:
            # One page of one key: the cheapest call that proves URL, TLS, token and permission.
            self._call(
                "list keys",
                "health check",
                lambda: next(
                    iter(self._client.list_properties_of_keys(max_page_size=1).by_page()), None
                ),
            )
        except ProviderError as e:
            return ProviderHealth(ok=False, detail=f"{where}: {e}")
        return ProviderHealth(ok=True, detail=f"{where}: reachable")

    # -- SDK calls ---------------------------------------------------------------------------

    def _crypto_client(self, ref: str) -> CryptographyClient:
        # One client per version: each keeps its challenge-authenticated pipeline warm.
        with self._lock:
            client = self._crypto_clients.get(ref)
            if client is None:
                if len(self._crypto_clients) >= _MAX_CACHED_CLIENTS:
                    self._crypto_clients.clear()
                client = CryptographyClient(ref, self._credential, **self._client_kwargs)
                self._crypto_clients[ref] = client
            return client

    def _call(
        self,
        operation: str,
        what: str,
        call: Callable[[], _T],
        *,
        raw: tuple[type[Exception], ...] = (),
    ) -> _T:
        """Run one SDK call, turning azure.core errors into ProviderErrors.

        Exceptions of the types in `raw` are re-raised as they are, for the caller to give them
        an operation-specific meaning (an already deleted key is fine to destroy).
        """
        try:
            return call()
        except raw:
            raise
        except ProviderError:
            raise
        except (ServiceRequestError, ServiceResponseError) as e:
            # Refused or dropped connections and timeouts: the vault may come back.
            raise ProviderUnavailableError(
                f"azure-keyvault {operation} ({what}): vault unreachable ({type(e).__name__})"
            ) from e
        except HttpResponseError as e:
            raise _mapped(operation, what, e) from e
        except ClientAuthenticationError as e:
            raise ProviderConfigurationError(
                f"azure-keyvault {operation} ({what}): authentication failed"
            ) from e
        except AzureError as e:
            raise ProviderOperationError(
                f"azure-keyvault {operation} ({what}) failed ({type(e).__name__})"
            ) from e
        except ValueError as e:
            # The SDK's own refusals, e.g. a challenge for a resource that is not this vault.
            raise ProviderConfigurationError(
                f"azure-keyvault {operation} ({what}): request refused by the SDK "
                f"({type(e).__name__})"
            ) from e


def _mapped(operation: str, what: str, e: HttpResponseError) -> ProviderError:
    # Only status and error codes go into the message: never tokens, bodies or plaintext.
    status = int(e.status_code or 0)
    code = (e.error.code if e.error is not None else None) or "Unknown"
    inner = e.error.innererror if e.error is not None else None
    inner_code = inner.get("code") if isinstance(inner, dict) else None
    message = f"azure-keyvault {operation} ({what}) failed: HTTP {status} {code}"
    if inner_code:
        message += f" ({inner_code})"
    if status == 429 or status >= 500:
        return ProviderUnavailableError(message)
    if inner_code == "KeyDisabled":
        # A refusal of this version, not of our credentials.
        return ProviderOperationError(message)
    if status in (401, 403):
        return ProviderConfigurationError(message)
    return ProviderOperationError(message)


def _what(version: VersionHandle) -> str:
    return f"key {version.key_id} v{version.number}"


def _private_jwk(material: bytes, spec: _AKVSpec, what: str) -> JsonWebKey:
    """The JSON web key of a PKCS#8 private key of `spec`'s type (signing operations only)."""
    try:
        private = serialization.load_der_private_key(material, None)
    except ValueError:
        raise ProviderOperationError(f"azure-keyvault {what}: not a PKCS#8 private key") from None
    if spec.kty == "EC" and isinstance(private, ec.EllipticCurvePrivateKey):
        if not isinstance(private.curve, ec.SECP256R1):
            raise ProviderOperationError(f"azure-keyvault {what}: not a {spec.curve} key")
        numbers = private.private_numbers()
        point = numbers.public_numbers
        return JsonWebKey(
            kty="EC",
            crv=spec.curve,
            key_ops=["sign", "verify"],
            d=numbers.private_value.to_bytes(32, "big"),
            x=point.x.to_bytes(32, "big"),
            y=point.y.to_bytes(32, "big"),
        )
    if spec.kty == "RSA" and isinstance(private, rsa.RSAPrivateKey):
        if private.key_size != spec.key_bits:
            raise ProviderOperationError(f"azure-keyvault {what}: not a {spec.key_bits}-bit key")
        rsa_numbers = private.private_numbers()
        public = rsa_numbers.public_numbers
        return JsonWebKey(
            kty="RSA",
            key_ops=["sign", "verify"],
            **{
                field: big_endian(value)
                for field, value in (
                    ("n", public.n),
                    ("e", public.e),
                    ("d", rsa_numbers.d),
                    ("p", rsa_numbers.p),
                    ("q", rsa_numbers.q),
                    ("dp", rsa_numbers.dmp1),
                    ("dq", rsa_numbers.dmq1),
                    ("qi", rsa_numbers.iqmp),
                )
            },
        )
    raise ProviderOperationError(f"azure-keyvault {what}: not a {spec.kty} private key")


def _spki(key: KeyVaultKey, what: str) -> bytes:
    """SubjectPublicKeyInfo DER of a Key Vault key's public JWK."""
    # JsonWebKey sets its fields dynamically, so it has no typed attributes to check.
    jwk: Any = key.key
    # The SDK gives enum members (KeyType, KeyCurveName) whose str() is not the wire value.
    kty = str(getattr(jwk.kty, "value", jwk.kty) or "")
    crv = str(getattr(jwk.crv, "value", jwk.crv) or "")
    public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    try:
        if kty.startswith("EC"):
            if crv != "P-256" or jwk.x is None or jwk.y is None:
                raise ValueError("unexpected curve")
            public = ec.EllipticCurvePublicNumbers(
                int.from_bytes(jwk.x, "big"), int.from_bytes(jwk.y, "big"), ec.SECP256R1()
            ).public_key()
        elif kty.startswith("RSA"):
            if jwk.n is None or jwk.e is None:
                raise ValueError("missing modulus")
            public = rsa.RSAPublicNumbers(
                int.from_bytes(jwk.e, "big"), int.from_bytes(jwk.n, "big")
            ).public_key()
        else:
            raise ValueError("unexpected key type")
    except ValueError as e:
        raise ProviderOperationError(
            f"azure-keyvault {what}: Key Vault returned an unusable public key"
        ) from e
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
