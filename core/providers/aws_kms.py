"""The AWS KMS provider: every keyrotor key version is its own KMS key, found by an alias.

A version of key `k` numbered `n` is the KMS key behind `alias/<prefix>/<k>/v<n>`. One KMS key per
version (rather than KMS's own automatic rotation) lets asymmetric keys rotate too, lets a single
version be disabled or destroyed, and pins every operation to exactly one version's key.

| keyrotor algorithm | KMS key spec      | key usage           | KMS algorithm          |
| ------------------ | ----------------- | ------------------- | ---------------------- |
| AES-256-GCM        | SYMMETRIC_DEFAULT | ENCRYPT_DECRYPT     | SYMMETRIC_DEFAULT      |
| HMAC-SHA256        | HMAC_256          | GENERATE_VERIFY_MAC | HMAC_SHA_256           |
| HMAC-SHA512        | HMAC_512          | GENERATE_VERIFY_MAC | HMAC_SHA_512           |
| ECDSA-P256         | ECC_NIST_P256     | SIGN_VERIFY         | ECDSA_SHA_256 (DER)    |
| RSA-2048           | RSA_2048          | SIGN_VERIFY         | RSASSA_PSS_SHA_256     |

A KMS key has one usage, and a keyrotor version has one public key, so RSA-2048 versions are
signing keys only: encrypting with them raises UnsupportedOperationError. Ed25519 and
ChaCha20-Poly1305 (and anything else KMS cannot hold) are refused with UnsupportedAlgorithmError.

The associated data of AES-256-GCM goes into the KMS encryption context, so decryption with any
other aad fails. KMS's Encrypt takes at most 4096 bytes of plaintext; larger requests are refused
as bad requests (AlgorithmError) before any call.

A key brought in (BYOK, `import_version`) becomes version 1 as a KMS key of origin EXTERNAL; its
material reaches KMS only wrapped to the wrapping key KMS issues for that key.

The boto3 client is built with few SDK retries and short timeouts: the activity that calls the
provider has its own retry policy, and ProviderUnavailableError tells it to use it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from core.algorithms import (
    Algorithm,
    AlgorithmError,
    DecryptionError,
    InvalidSignatureError,
    Operation,
    UnsupportedOperationError,
)
from core.providers.base import (
    OAEP_SHA256,
    ProviderConfigurationError,
    ProviderError,
    ProviderHealth,
    ProviderOperationError,
    ProviderUnavailableError,
    UnsupportedAlgorithmError,
    VersionHandle,
    VersionMaterial,
    held,
    holds,
    rsa_aes_key_wrap,
)

# KMS's limits on RAW messages (Sign, GenerateMac) and on Encrypt's plaintext.
MAX_RAW_MESSAGE_BYTES = 4096
MAX_PLAINTEXT_BYTES = 4096
# The shortest ScheduleKeyDeletion allows: destroyed versions should go as soon as possible.
MIN_DELETION_WINDOW_DAYS = 7
DEFAULT_ALIAS_PREFIX = "keyrotor"
# The name under which the aad travels in the KMS encryption context.
AAD_CONTEXT_KEY = "keyrotor-aad"
# KMS alias names allow only these characters.
_ALIAS_PART = re.compile(r"^[A-Za-z0-9/_-]+$")
_MAX_ALIAS_LENGTH = 256


@dataclass(frozen=True)
class _KMSSpec:
    """How one keyrotor algorithm is held in KMS."""

    key_spec: str
    key_usage: str
    kms_algorithm: str
    key_bits: int
    # Signatures hash the message with this before KMS signs a DIGEST (messages over 4 KiB).
    digest: Callable[[bytes], bytes] | None = None


def _sha256(message: bytes) -> bytes:
    return hashlib.sha256(message).digest()


_SPECS: dict[str, _KMSSpec] = {
    "AES-256-GCM": _KMSSpec("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "SYMMETRIC_DEFAULT", 256),
    "HMAC-SHA256": _KMSSpec("HMAC_256", "GENERATE_VERIFY_MAC", "HMAC_SHA_256", 256),
    "HMAC-SHA512": _KMSSpec("HMAC_512", "GENERATE_VERIFY_MAC", "HMAC_SHA_512", 512),
    "ECDSA-P256": _KMSSpec("ECC_NIST_P256", "SIGN_VERIFY", "ECDSA_SHA_256", 256, _sha256),
    "RSA-2048": _KMSSpec("RSA_2048", "SIGN_VERIFY", "RSASSA_PSS_SHA_256", 2048, _sha256),
}

# Error codes (ClientError `Error.Code`) by what they mean for the caller.
_UNAVAILABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "KMSInternalException",
        "DependencyTimeoutException",
        "KeyUnavailableException",
        "InternalFailure",
        "InternalError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
_CONFIGURATION_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        # AWS's request-signature check (bad secret key), not a KMS signature verification.
        "InvalidSignatureException",
        "IncompleteSignature",
        "InvalidClientTokenId",
        "ExpiredToken",
        "ExpiredTokenException",
        "MissingAuthenticationToken",
        "SignatureDoesNotMatch",
        "OptInRequired",
    }
)
# Key states in which KMS already refuses every cryptographic operation.
_SWITCHED_OFF = frozenset({"Disabled", "PendingDeletion", "PendingReplicaDeletion"})
# The wording KMS uses when a ciphertext names a key the request cannot use.
_FOREIGN_CIPHERTEXT = "The ciphertext refers to"


def build_client(
    *,
    endpoint_url: str | None = None,
    region_name: str | None = None,
    max_attempts: int = 1,
    connect_timeout: float = 3.0,
    read_timeout: float = 8.0,
) -> Any:
    """A boto3 KMS client; credentials come from boto3's usual chain (the AWS_* variables).

    One attempt, at most 11 s: Temporal retries the activity with backoff, and an attempt must
    end before the commit's 15 s timeout (workflows.managed.COMMIT_TIMEOUT), or a retry could
    run beside it and create a second KMS key for the same version."""
    config = Config(
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    try:
        return boto3.session.Session().client(
            "kms",
            endpoint_url=endpoint_url or None,
            region_name=region_name or None,
            config=config,
        )
    except NoRegionError as e:
        raise ProviderConfigurationError(
            "aws-kms needs a region (region_name or AWS_REGION / AWS_DEFAULT_REGION)"
        ) from e
    except (ValueError, BotoCoreError) as e:
        raise ProviderConfigurationError(
            f"aws-kms client cannot be built ({type(e).__name__})"
        ) from e


class AWSKMSProvider:
    """Keys held in AWS KMS, one KMS key per keyrotor key version behind its own alias.

    Material never leaves KMS: `create_version` returns the KMS key ARN as `provider_key_ref` and
    the SubjectPublicKeyInfo of asymmetric keys. KMS refuses disabled and pending-deletion keys;
    the provider also checks the key state itself (cached for `key_state_ttl` seconds, forgotten
    at once when this provider disables or destroys the key) so that every backend speaking the
    KMS API, including emulators that do not enforce key states, refuses them the same way.
    """

    name: str = "aws-kms"
    disables_older: bool = False

    def __init__(
        self,
        client: Any | None = None,
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        alias_prefix: str = DEFAULT_ALIAS_PREFIX,
        key_state_ttl: float = 5.0,
    ) -> None:
        if not _ALIAS_PART.match(alias_prefix) or alias_prefix.startswith("aws"):
            raise ProviderConfigurationError(
                f"aws-kms alias prefix {alias_prefix[:64]!r} is not a valid KMS alias part"
            )
        self._client = (
            client
            if client is not None
            else build_client(endpoint_url=endpoint_url, region_name=region_name)
        )
        self._alias_prefix = alias_prefix.strip("/")
        self._key_state_ttl = key_state_ttl
        self._enabled_until: dict[str, float] = {}
        self._lock = threading.Lock()

    # -- naming and algorithms ---------------------------------------------------------------

    def alias_name(self, key_id: str, number: int) -> str:
        """The KMS alias of version `number` of `key_id`."""
        alias = f"alias/{self._alias_prefix}/{key_id}/v{number}"
        if not _ALIAS_PART.match(key_id) or len(alias) > _MAX_ALIAS_LENGTH:
            raise ProviderOperationError(
                f"key id {key_id[:64]!r} cannot be part of a KMS alias "
                "(letters, digits, '/', '_' and '-' only, 256 characters at most)"
            )
        return alias

    def supports(self, algorithm: str) -> bool:
        return holds(_SPECS, algorithm)

    def _spec(self, algorithm: str) -> tuple[Algorithm, _KMSSpec]:
        algo = held(self.name, _SPECS, algorithm)
        return algo, _SPECS[algo.name]

    def _spec_for(self, version: VersionHandle, operation: Operation) -> _KMSSpec:
        algo, spec = self._spec(version.algorithm)
        if operation not in algo.operations or (
            spec.key_usage == "SIGN_VERIFY" and operation in (Operation.ENCRYPT, Operation.DECRYPT)
        ):
            # RSA-2048 can encrypt in the registry, but its KMS key is a signing key.
            raise UnsupportedOperationError(f"{algo.name} in aws-kms does not support {operation}")
        return spec

    def _management_key(self, version: VersionHandle) -> str:
        # DisableKey and ScheduleKeyDeletion never work across accounts, so the bare key id is
        # as precise as the ARN there (and moto's server accepts only the bare id for them).
        ref = version.provider_key_ref
        if ref.startswith("arn:") and ":key/" in ref:
            return ref.rsplit(":key/", 1)[1]
        return self._key(version)

    def _key(self, version: VersionHandle) -> str:
        # The ARN pins the exact key; the alias is only a fallback for refs stored without one.
        return version.provider_key_ref or self.alias_name(version.key_id, version.number)

    # -- lifecycle ---------------------------------------------------------------------------

    def create_version(
        self, key_id: str, number: int, algorithm: str, key_bits: int | None = None
    ) -> VersionMaterial:
        algo, spec = self._spec(algorithm)
        if key_bits is not None:
            algo.validate_key_bits(key_bits)
            if key_bits != spec.key_bits:
                raise UnsupportedAlgorithmError(
                    f"aws-kms holds {algo.name} keys of {spec.key_bits} bits only; "
                    f"{key_bits} was requested"
                )
        alias = self.alias_name(key_id, number)
        what = f"key {key_id} v{number}"

        metadata = self._describe(alias, what, missing_ok=True)
        if metadata is None:
            metadata = self._create_key_behind_alias(alias, key_id, number, algo, spec, what, None)
        if metadata.get("KeySpec") != spec.key_spec or metadata.get("KeyUsage") != spec.key_usage:
            raise ProviderOperationError(
                f"aws-kms {what}: {alias} already names a {metadata.get('KeySpec')} key, "
                f"not a {spec.key_spec} key for {algo.name}"
            )
        return self._version_material(metadata, spec, what)

    def _version_material(
        self, metadata: dict[str, Any], spec: _KMSSpec, what: str
    ) -> VersionMaterial:
        arn = str(metadata["Arn"])
        public = self._get_public_key(arn, what) if spec.key_usage == "SIGN_VERIFY" else None
        return VersionMaterial(provider_key_ref=arn, wrapped_material=None, public_key=public)

    def import_version(
        self, key_id: str, number: int, algorithm: str, material: bytes
    ) -> VersionMaterial:
        """Version 1 of a key made of material brought in (BYOK): a KMS key of origin EXTERNAL
        behind the version's alias, its material never expiring. The material reaches KMS only
        wrapped to the RSA-4096 wrapping key KMS issues for that key: with RSAES_OAEP_SHA_256
        (symmetric and HMAC keys), or under an ephemeral AES key (RSA_AES_KEY_WRAP_SHA_256, which
        KMS requires for private keys). Later versions are generated in KMS as usual.
        `material`: the raw key (symmetric, HMAC) or PKCS#8 DER (asymmetric)."""
        algo, spec = self._spec(algorithm)
        if number != 1:
            raise ProviderOperationError("only the first version of a key can be imported")
        alias = self.alias_name(key_id, number)
        what = f"key {key_id} v{number}"
        if self._describe(alias, what, missing_ok=True) is not None:
            raise ProviderOperationError(f"aws-kms {what}: {alias} exists already")
        metadata = self._create_key_behind_alias(alias, key_id, number, algo, spec, what, material)
        return self._version_material(metadata, spec, what)

    def _import_material(self, kms_key_id: str, spec: _KMSSpec, material: bytes, what: str) -> None:
        private = spec.key_usage == "SIGN_VERIFY"
        wrapping_algorithm = "RSA_AES_KEY_WRAP_SHA_256" if private else "RSAES_OAEP_SHA_256"
        parameters = self._call(
            "GetParametersForImport",
            what,
            self._client.get_parameters_for_import,
            KeyId=kms_key_id,
            WrappingAlgorithm=wrapping_algorithm,
            WrappingKeySpec="RSA_4096",
        )
        wrapping = serialization.load_der_public_key(bytes(parameters["PublicKey"]))
        if not isinstance(wrapping, rsa.RSAPublicKey):
            raise ProviderOperationError(f"aws-kms {what}: the wrapping key is not an RSA key")
        wrapped = (
            rsa_aes_key_wrap(wrapping, material)
            if private
            else wrapping.encrypt(material, OAEP_SHA256)
        )
        self._call(
            "ImportKeyMaterial",
            what,
            self._client.import_key_material,
            KeyId=kms_key_id,
            ImportToken=parameters["ImportToken"],
            EncryptedKeyMaterial=wrapped,
            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
        )

    def _create_key_behind_alias(
        self,
        alias: str,
        key_id: str,
        number: int,
        algo: Algorithm,
        spec: _KMSSpec,
        what: str,
        material: bytes | None,
    ) -> dict[str, Any]:
        """A new KMS key behind `alias`: generated by KMS, or made of `material` (imported
        before the alias names it, so an alias never names a key without material)."""
        origin: dict[str, Any] = {} if material is None else {"Origin": "EXTERNAL"}
        created = self._call(
            "CreateKey",
            what,
            self._client.create_key,
            **origin,
            KeySpec=spec.key_spec,
            KeyUsage=spec.key_usage,
            Description=f"keyrotor {key_id} v{number} ({algo.name})",
            # Tags let an operator find a key orphaned by a crash before CreateAlias.
            Tags=[
                {"TagKey": "keyrotor:key-id", "TagValue": key_id},
                {"TagKey": "keyrotor:version", "TagValue": str(number)},
                {"TagKey": "keyrotor:algorithm", "TagValue": algo.name},
            ],
        )
        metadata: dict[str, Any] = created["KeyMetadata"]
        if material is not None:
            try:
                self._import_material(metadata["KeyId"], spec, material, what)
            except ProviderError:
                self._discard(metadata["KeyId"], what)
                raise
        try:
            self._call(
                "CreateAlias",
                what,
                self._client.create_alias,
                AliasName=alias,
                TargetKeyId=metadata["KeyId"],
                raw_codes=frozenset({"AlreadyExistsException"}),
            )
        except ClientError:
            # A concurrent attempt won the alias: keep its key, schedule ours for deletion.
            self._discard(metadata["KeyId"], what)
            if material is not None:
                raise ProviderOperationError(f"aws-kms {what}: {alias} exists already") from None
            winner = self._describe(alias, what, missing_ok=False)
            assert winner is not None
            return winner
        except ProviderError:
            self._discard(metadata["KeyId"], what)
            raise
        return metadata

    def _discard(self, kms_key_id: str, what: str) -> None:
        try:
            self._call(
                "ScheduleKeyDeletion",
                what,
                self._client.schedule_key_deletion,
                KeyId=kms_key_id,
                PendingWindowInDays=MIN_DELETION_WINDOW_DAYS,
            )
        except ProviderError:
            pass  # Best effort: the key is tagged, an operator can find and delete it.

    def disable_version(self, version: VersionHandle) -> None:
        what = _what(version)
        self._forget_state(version)
        # Look first: a key already disabled, pending deletion or gone needs nothing, and a
        # pending-deletion key must never be touched (emulators would flip it back to Disabled).
        metadata = self._describe(self._key(version), what, missing_ok=True)
        if metadata is None or metadata.get("KeyState") in _SWITCHED_OFF:
            return
        try:
            self._call(
                "DisableKey",
                what,
                self._client.disable_key,
                KeyId=self._management_key(version),
                raw_codes=frozenset({"KMSInvalidStateException", "NotFoundException"}),
            )
        except ClientError as e:
            self._accept_gone_or_in(version, e, what, _SWITCHED_OFF)

    def destroy_version(self, version: VersionHandle) -> None:
        self.disable_version(version)
        what = _what(version)
        try:
            self._call(
                "ScheduleKeyDeletion",
                what,
                self._client.schedule_key_deletion,
                KeyId=self._management_key(version),
                PendingWindowInDays=MIN_DELETION_WINDOW_DAYS,
                raw_codes=frozenset({"KMSInvalidStateException", "NotFoundException"}),
            )
        except ClientError as e:
            self._accept_gone_or_in(version, e, what, frozenset({"PendingDeletion"}))

    def _accept_gone_or_in(
        self, version: VersionHandle, e: ClientError, what: str, states: frozenset[str]
    ) -> None:
        """Idempotency: a refusal is fine when the key is gone or already in one of `states`."""
        if _code(e) == "NotFoundException":
            return
        metadata = self._describe(self._key(version), what, missing_ok=True)
        if metadata is None or metadata.get("KeyState") in states:
            return
        raise ProviderOperationError(
            f"aws-kms {what}: key is in state {metadata.get('KeyState')}"
        ) from e

    # -- operations --------------------------------------------------------------------------

    def encrypt(self, version: VersionHandle, plaintext: bytes, aad: bytes) -> bytes:
        spec = self._spec_for(version, Operation.ENCRYPT)
        if len(plaintext) > MAX_PLAINTEXT_BYTES:
            raise AlgorithmError(
                f"aws-kms encrypts at most {MAX_PLAINTEXT_BYTES} bytes; got {len(plaintext)}"
            )
        what = _what(version)
        self._require_enabled(version, what)
        response = self._call(
            "Encrypt",
            what,
            self._client.encrypt,
            KeyId=self._key(version),
            Plaintext=plaintext,
            EncryptionAlgorithm=spec.kms_algorithm,
            **_context(aad),
        )
        return bytes(response["CiphertextBlob"])

    def decrypt(self, version: VersionHandle, data: bytes, aad: bytes) -> bytes:
        spec = self._spec_for(version, Operation.DECRYPT)
        what = _what(version)
        self._require_enabled(version, what)
        key = self._key(version)
        try:
            response = self._call(
                "Decrypt",
                what,
                self._client.decrypt,
                # Pinned: KMS must refuse a ciphertext made under any other version's key.
                KeyId=key,
                CiphertextBlob=data,
                EncryptionAlgorithm=spec.kms_algorithm,
                raw_codes=frozenset(
                    {"InvalidCiphertextException", "IncorrectKeyException", "AccessDeniedException"}
                ),
                **_context(aad),
            )
        except ClientError as e:
            message = _message(e)
            # A denial that names the ciphertext's key is about the data, not our credentials.
            # moto sends that denial with no message at all; real KMS always words its denials
            # (and answers a mismatched pinned key with IncorrectKeyException).
            if (
                _code(e) != "AccessDeniedException"
                or not message
                or message.startswith(_FOREIGN_CIPHERTEXT)
            ):
                raise DecryptionError("decryption failed") from None
            raise self._mapped("Decrypt", what, e) from e
        if version.provider_key_ref and response.get("KeyId") != version.provider_key_ref:
            # Defence in depth should a backend ignore the pinned KeyId.
            raise DecryptionError("decryption failed")
        return bytes(response["Plaintext"])

    def sign(self, version: VersionHandle, message: bytes) -> bytes:
        spec = self._spec_for(version, Operation.SIGN)
        what = _what(version)
        self._require_enabled(version, what)
        _check_message(message, mac=spec.key_usage == "GENERATE_VERIFY_MAC")
        if spec.key_usage == "GENERATE_VERIFY_MAC":
            response = self._call(
                "GenerateMac",
                what,
                self._client.generate_mac,
                KeyId=self._key(version),
                Message=message,
                MacAlgorithm=spec.kms_algorithm,
            )
            return bytes(response["Mac"])
        response = self._call(
            "Sign",
            what,
            self._client.sign,
            KeyId=self._key(version),
            SigningAlgorithm=spec.kms_algorithm,
            **_signing_input(spec, message),
        )
        return bytes(response["Signature"])

    def verify(self, version: VersionHandle, message: bytes, signature: bytes) -> None:
        spec = self._spec_for(version, Operation.VERIFY)
        what = _what(version)
        self._require_enabled(version, what)
        if not signature:
            # KMS rejects an empty signature as a malformed request; it is simply not valid.
            raise InvalidSignatureError(f"{version.algorithm} signature does not verify")
        _check_message(message, mac=spec.key_usage == "GENERATE_VERIFY_MAC")
        if spec.key_usage == "GENERATE_VERIFY_MAC":
            call: Callable[..., Any] = self._client.verify_mac
            operation, bad_code, valid_field = "VerifyMac", "KMSInvalidMacException", "MacValid"
            arguments: dict[str, Any] = {
                "Message": message,
                "Mac": signature,
                "MacAlgorithm": spec.kms_algorithm,
            }
        else:
            call = self._client.verify
            operation, bad_code = "Verify", "KMSInvalidSignatureException"
            valid_field = "SignatureValid"
            arguments = {
                "Signature": signature,
                "SigningAlgorithm": spec.kms_algorithm,
                **_signing_input(spec, message),
            }
        try:
            response = self._call(
                operation,
                what,
                call,
                KeyId=self._key(version),
                raw_codes=frozenset({bad_code}),
                **arguments,
            )
        except ClientError:
            raise InvalidSignatureError(f"{version.algorithm} signature does not verify") from None
        if response.get(valid_field) is not True:
            raise InvalidSignatureError(f"{version.algorithm} signature does not verify")

    def public_key(self, version: VersionHandle) -> bytes | None:
        _, spec = self._spec(version.algorithm)
        if spec.key_usage != "SIGN_VERIFY":
            return None
        try:
            return self._get_public_key(self._key(version), _what(version))
        except ProviderOperationError:
            # KMS refuses GetPublicKey once the key is disabled, but a retired version's public
            # key is no secret and verifiers may still need it: serve the copy from creation.
            if version.public_key is None:
                raise
            return version.public_key

    def health(self) -> ProviderHealth:
        where = self._where()
        try:
            # The cheapest authenticated call: proves endpoint, credentials and permissions.
            self._call("ListKeys", "health check", self._client.list_keys, Limit=1)
        except ProviderError as e:
            return ProviderHealth(ok=False, detail=f"aws-kms at {where}: {e}")
        return ProviderHealth(ok=True, detail=f"aws-kms at {where}: reachable")

    # -- KMS calls ---------------------------------------------------------------------------

    def _where(self) -> str:
        meta = getattr(self._client, "meta", None)
        region = getattr(meta, "region_name", None) or "?"
        endpoint = urlsplit(str(getattr(meta, "endpoint_url", "") or ""))
        # Only scheme, host and port: never userinfo or a query string from the URL.
        host = endpoint.hostname or ""
        port = f":{endpoint.port}" if endpoint.port else ""
        return f"{endpoint.scheme}://{host}{port} ({region})" if host else str(region)

    def _describe(self, key: str, what: str, *, missing_ok: bool) -> dict[str, Any] | None:
        try:
            response = self._call(
                "DescribeKey",
                what,
                self._client.describe_key,
                KeyId=key,
                raw_codes=frozenset({"NotFoundException"}) if missing_ok else frozenset(),
            )
        except ClientError:
            return None
        metadata: dict[str, Any] = response["KeyMetadata"]
        return metadata

    def _get_public_key(self, key: str, what: str) -> bytes:
        response = self._call("GetPublicKey", what, self._client.get_public_key, KeyId=key)
        return bytes(response["PublicKey"])

    def _require_enabled(self, version: VersionHandle, what: str) -> None:
        key = self._key(version)
        now = time.monotonic()
        with self._lock:
            if self._enabled_until.get(key, 0.0) > now:
                return
        metadata = self._describe(key, what, missing_ok=False)
        assert metadata is not None
        state = metadata.get("KeyState")
        if state != "Enabled":
            raise ProviderOperationError(f"aws-kms {what}: key is {state}, not Enabled")
        if self._key_state_ttl > 0:
            with self._lock:
                self._enabled_until[key] = now + self._key_state_ttl

    def _forget_state(self, version: VersionHandle) -> None:
        with self._lock:
            self._enabled_until.pop(self._key(version), None)

    def _call(
        self,
        operation: str,
        what: str,
        call: Callable[..., Any],
        *,
        raw_codes: frozenset[str] = frozenset(),
        **arguments: Any,
    ) -> dict[str, Any]:
        """Run one KMS call, turning SDK errors into ProviderErrors.

        ClientErrors whose code is in `raw_codes` are re-raised as they are, for the caller to
        give them an operation-specific meaning (a bad MAC, an already deleted key).
        """
        try:
            response: dict[str, Any] = call(**arguments)
        except ClientError as e:
            if _code(e) in raw_codes:
                raise
            raise self._mapped(operation, what, e) from e
        except (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError) as e:
            raise ProviderConfigurationError(
                f"aws-kms {operation} ({what}): no usable AWS credentials ({type(e).__name__})"
            ) from e
        except (ConnectionError, HTTPClientError) as e:
            # Refused or dropped connections and timeouts: the endpoint may come back.
            raise ProviderUnavailableError(
                f"aws-kms {operation} ({what}): endpoint unreachable ({type(e).__name__})"
            ) from e
        except BotoCoreError as e:
            # ParamValidationError and the like: a request KMS would never accept.
            raise ProviderOperationError(
                f"aws-kms {operation} ({what}): request refused by the SDK ({type(e).__name__})"
            ) from e
        return response

    def _mapped(self, operation: str, what: str, e: ClientError) -> ProviderError:
        # Only the error code goes into the message: AWS messages may echo request values.
        code = _code(e)
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = f"aws-kms {operation} ({what}) failed: {code}"
        if code in _UNAVAILABLE_CODES or (status >= 500 and code not in _CONFIGURATION_CODES):
            return ProviderUnavailableError(message)
        if code in _CONFIGURATION_CODES:
            return ProviderConfigurationError(message)
        return ProviderOperationError(message)


def _what(version: VersionHandle) -> str:
    return f"key {version.key_id} v{version.number}"


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", "") or "Unknown")


def _message(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Message", "") or "")


def _context(aad: bytes) -> dict[str, Any]:
    """The EncryptionContext argument that binds `aad` (none for empty aad).

    Base64 because the context is a map of strings and aad is arbitrary bytes.
    """
    if not aad:
        return {}
    return {"EncryptionContext": {AAD_CONTEXT_KEY: base64.b64encode(aad).decode("ascii")}}


def _signing_input(spec: _KMSSpec, message: bytes) -> dict[str, Any]:
    """Message and MessageType for Sign/Verify: RAW up to KMS's 4 KiB limit, else a digest.

    Both produce the same signature over `message` for ECDSA_SHA_256 and RSASSA_PSS_SHA_256, so
    the size of the message never changes which signatures verify.
    """
    if len(message) <= MAX_RAW_MESSAGE_BYTES or spec.digest is None:
        return {"Message": message, "MessageType": "RAW"}
    return {"Message": spec.digest(message), "MessageType": "DIGEST"}


def _check_message(message: bytes, *, mac: bool) -> None:
    # KMS refuses empty messages as malformed requests: say so as the bad request it is.
    if not message:
        raise AlgorithmError("aws-kms cannot sign or verify an empty message")
    # A MAC cannot be computed over a digest without changing its value: refuse up front.
    if mac and len(message) > MAX_RAW_MESSAGE_BYTES:
        raise AlgorithmError(
            f"aws-kms computes MACs over at most {MAX_RAW_MESSAGE_BYTES} bytes; got {len(message)}"
        )
