"""The HashiCorp Vault / OpenBao transit provider: key material never leaves the server.

One transit key per keyrotor key, named `keyrotor-<key_id>`; Vault's native key versions are
keyrotor's version numbers, so every operation pins `key_version` and refuses data made by another
version before Vault sees it. Retiring a version raises the key's minimum decryption/encryption
version, which in Vault also retires every older version: keyrotor retires versions oldest first,
so that matches its lifecycle.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import hvac  # type: ignore[import-untyped]
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hvac import exceptions as hvac_errors

from core.algorithms import (
    Algorithm,
    AlgorithmError,
    AlgorithmKind,
    DecryptionError,
    InvalidSignatureError,
    Operation,
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
    held,
    holds,
    rsa_aes_key_wrap,
)

KEY_NAME_PREFIX = "keyrotor-"
DEFAULT_MOUNT = "transit"
# (connect, read) seconds: an attempt must end inside the commit's 15 s timeout
DEFAULT_TIMEOUT_SECONDS = (3.0, 8.0)

# Vault caps transit HMAC keys at 512 bytes; keyrotor's HMAC accepts up to 1024.
_MAX_HMAC_KEY_BYTES = 512
# Vault's RSA encryption takes no associated data, so the provider binds it itself: the OAEP
# plaintext starts with SHA-256(aad). OAEP is non-malleable, so a ciphertext opens only with it.
_AAD_DIGEST_BYTES = 32
_OAEP_SHA256_OVERHEAD = 2 * 32 + 2

_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
_REF = re.compile(r"^(?P<mount>.+)/keys/(?P<name>[^/]+)/v(?P<number>[0-9]+)$")
_VERSION_PREFIX = re.compile(r"^vault:v(?P<number>[0-9]+):")

_T = TypeVar("_T")


@dataclass(frozen=True)
class _TransitSpec:
    """How one keyrotor algorithm is held in transit."""

    key_type: str
    # hash_algorithm for sign/verify and HMAC; None where the key type fixes it (Ed25519).
    hash_algorithm: str | None = None
    # Extra sign/verify parameters, chosen to match core.algorithms (RSA-PSS salt 32, DER ECDSA)
    # so a signature stripped of its "vault:vN:" prefix verifies against the public key.
    sign_params: tuple[tuple[str, str], ...] = ()


_SPECS: dict[str, _TransitSpec] = {
    "AES-256-GCM": _TransitSpec("aes256-gcm96"),
    "ChaCha20-Poly1305": _TransitSpec("chacha20-poly1305"),
    "HMAC-SHA256": _TransitSpec("hmac", "sha2-256"),
    "HMAC-SHA512": _TransitSpec("hmac", "sha2-512"),
    "Ed25519": _TransitSpec("ed25519"),
    "ECDSA-P256": _TransitSpec("ecdsa-p256", "sha2-256", (("marshaling_algorithm", "asn1"),)),
    "RSA-2048": _TransitSpec(
        "rsa-2048", "sha2-256", (("signature_algorithm", "pss"), ("salt_length", "32"))
    ),
    "RSA-4096": _TransitSpec(
        "rsa-4096", "sha2-256", (("signature_algorithm", "pss"), ("salt_length", "32"))
    ),
}


def transit_key_name(key_id: str) -> str:
    """The transit key that holds every version of keyrotor key `key_id`."""
    if not _KEY_ID.fullmatch(key_id):
        raise ProviderOperationError("key id is not usable as a Vault transit key name")
    return f"{KEY_NAME_PREFIX}{key_id}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _vault_text(data: bytes, error: type[Exception]) -> str:
    """Vault ciphertexts and signatures are ASCII strings; anything else cannot be one."""
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise error("not a Vault transit value") from None


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _vault_reason(e: Exception) -> str:
    # Vault's own error strings name the failure, never the token or the request body; the
    # exception text from hvac also carries the URL, which we leave out.
    errors = getattr(e, "errors", None)
    if isinstance(errors, list) and errors:
        return "; ".join(" ".join(str(x).split()) for x in errors)[:300]
    return type(e).__name__


def _translate(e: Exception, what: str) -> ProviderError:
    """Map an hvac / requests failure onto the ProviderError tree."""
    if isinstance(e, requests.exceptions.RequestException):
        return ProviderUnavailableError(f"Vault unreachable during {what}: {type(e).__name__}")
    if isinstance(
        e,
        hvac_errors.VaultDown
        | hvac_errors.VaultNotInitialized
        | hvac_errors.InternalServerError
        | hvac_errors.BadGateway
        | hvac_errors.RateLimitExceeded,
    ):
        return ProviderUnavailableError(f"Vault unavailable during {what}: {_vault_reason(e)}")
    if isinstance(e, hvac_errors.Forbidden | hvac_errors.Unauthorized):
        return ProviderConfigurationError(
            f"Vault refused the token during {what}: {_vault_reason(e)}"
        )
    return ProviderOperationError(f"Vault refused {what}: {_vault_reason(e)}")


_CALL_ERRORS = (hvac_errors.VaultError, requests.exceptions.RequestException)


class VaultTransitProvider:
    """Keys in a Vault (or OpenBao) transit secrets engine, used through hvac.

    The token needs create/update/read on `<mount>/keys/keyrotor-*` and its `config`, `rotate`
    and `trim` subpaths, update on `<mount>/{encrypt,decrypt,sign,verify,hmac}/keyrotor-*`, and
    list on `<mount>/keys` (health).
    """

    name: str = "vault"
    disables_older: bool = True

    def __init__(
        self,
        url: str,
        token: str,
        mount: str = DEFAULT_MOUNT,
        client: hvac.Client | None = None,
        *,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._url = url
        self._mount = mount.strip("/")
        self._client: Any = client or hvac.Client(url=url, token=token, timeout=timeout)

    def __repr__(self) -> str:
        # Never the token.
        return f"<VaultTransitProvider {_safe_url(self._url)} mount={self._mount!r}>"

    # -- plumbing -------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except _CALL_ERRORS as e:
            raise _translate(e, what) from e

    def _path(self, mount: str, *parts: str) -> str:
        return "/v1/" + "/".join((mount, *parts))

    def _post(self, what: str, mount: str, *parts: str, body: Mapping[str, Any]) -> Any:
        return self._call(
            what, lambda: self._client.adapter.post(self._path(mount, *parts), json=body)
        )

    def _read_key(self, mount: str, name: str) -> dict[str, Any] | None:
        """The transit key's data, or None if there is no such key."""
        try:
            response = self._client.adapter.get(self._path(mount, "keys", name))
        except hvac_errors.InvalidPath:
            return None
        except _CALL_ERRORS as e:
            raise _translate(e, "key read") from e
        data: dict[str, Any] = response["data"]
        return data

    def _spec(self, algorithm: str) -> tuple[Algorithm, _TransitSpec]:
        algo = held(self.name, _SPECS, algorithm)
        return algo, _SPECS[algo.name]

    def _locate(self, version: VersionHandle) -> tuple[str, str]:
        """(mount, key name) of a version: from its stored ref, so a key stays usable where it
        was made even if this provider's mount setting changes later."""
        if not version.provider_key_ref:
            return self._mount, transit_key_name(version.key_id)
        m = _REF.fullmatch(version.provider_key_ref)
        if m is None or int(m["number"]) != version.number:
            raise ProviderOperationError(
                f"key {version.key_id} v{version.number} has no Vault transit reference"
            )
        return m["mount"], m["name"]

    def _ref(self, name: str, number: int) -> str:
        return f"{self._mount}/keys/{name}/v{number}"

    def _retired_reason(self, mount: str, name: str, number: int, *, using: bool) -> str | None:
        """Why Vault refuses this version (disabled, destroyed, missing), or None if it does not.

        `using` adds the encryption minimum, which only encrypt/sign/HMAC respect.
        """
        data = self._read_key(mount, name)
        if data is None:
            return "the transit key does not exist"
        if number > int(data.get("latest_version", 0)):
            return "the version does not exist"
        if number < int(data.get("min_available_version", 0)):
            return "the version was destroyed"
        minimum = int(data.get("min_decryption_version", 1))
        if using:
            minimum = max(minimum, int(data.get("min_encryption_version", 0)))
        if number < minimum:
            return "the version is disabled"
        return None

    def _fail_operation(
        self,
        e: Exception,
        what: str,
        version: VersionHandle,
        mount: str,
        name: str,
        *,
        using: bool,
        otherwise: Callable[[], Exception] | None = None,
    ) -> NoReturn:
        """Classify a refused version operation.

        Vault answers a retired version with 400 (and signing with 500), the same codes it uses
        for bad input or an outage: asking for the key's state tells them apart.
        """
        if isinstance(e, hvac_errors.InvalidRequest | hvac_errors.InternalServerError):
            reason = self._retired_reason(mount, name, version.number, using=using)
            if reason is not None:
                raise ProviderOperationError(
                    f"Vault refused {what} with key {version.key_id} v{version.number}: {reason}"
                ) from e
            if otherwise is not None and isinstance(e, hvac_errors.InvalidRequest):
                raise otherwise() from e
        raise _translate(e, what) from e

    def _use(
        self,
        what: str,
        version: VersionHandle,
        parts: tuple[str, ...],
        body: Mapping[str, Any],
        *,
        using: bool,
        otherwise: Callable[[], Exception] | None = None,
    ) -> dict[str, Any]:
        mount, name = self._locate(version)
        try:
            response = self._client.adapter.post(self._path(mount, *parts, name), json=body)
        except _CALL_ERRORS as e:
            self._fail_operation(e, what, version, mount, name, using=using, otherwise=otherwise)
        data: dict[str, Any] = response["data"]
        return data

    # -- KeyProvider ----------------------------------------------------------------------------

    def supports(self, algorithm: str) -> bool:
        return holds(_SPECS, algorithm)

    def create_version(
        self, key_id: str, number: int, algorithm: str, key_bits: int | None = None
    ) -> VersionMaterial:
        algo, spec = self._spec(algorithm)
        bits = algo.default_key_bits if key_bits is None else key_bits
        algo.validate_key_bits(bits)  # AlgorithmError: a bad request, not a provider fault
        if number < 1:
            raise ProviderOperationError("Vault transit versions start at 1")
        name = transit_key_name(key_id)
        create: dict[str, Any] = {"type": spec.key_type}
        if spec.key_type == "hmac":
            if bits // 8 > _MAX_HMAC_KEY_BYTES:
                raise UnsupportedAlgorithmError(
                    f"Vault transit HMAC keys are at most {_MAX_HMAC_KEY_BYTES * 8} bits"
                )
            create["key_size"] = bits // 8

        data = self._read_key(self._mount, name)
        if data is None:
            # Creating an existing key is a no-op in transit, so a racing retry is harmless.
            self._post("key creation", self._mount, "keys", name, body=create)
            data = self._read_key(self._mount, name)
            if data is None:
                raise ProviderOperationError(f"Vault did not create the key for {key_id}")
        if data.get("type") != spec.key_type:
            raise ProviderOperationError(
                f"Vault transit key for {key_id} is {data.get('type')}, not {spec.key_type}"
            )
        # Rotate up to `number` and never past it: a retried activity finds its version made.
        while int(data["latest_version"]) < number:
            self._post("key rotation", self._mount, "keys", name, "rotate", body={})
            fresh = self._read_key(self._mount, name)
            if fresh is None:
                raise ProviderOperationError(f"Vault transit key for {key_id} vanished")
            data = fresh
        if number < int(data.get("min_decryption_version", 1)):
            raise ProviderOperationError(
                f"key {key_id} v{number} is already disabled at Vault; it cannot be made again"
            )
        public_key = None
        if algo.kind == AlgorithmKind.SIGNATURE:
            public_key = self._public_key_from(data, number)
            if public_key is None:
                raise ProviderOperationError(f"Vault holds no public key for {key_id} v{number}")
        return VersionMaterial(
            provider_key_ref=self._ref(name, number), wrapped_material=None, public_key=public_key
        )

    def import_version(
        self, key_id: str, number: int, algorithm: str, material: bytes
    ) -> VersionMaterial:
        """Version 1 of a new transit key made of material brought in (BYOK): wrapped for
        transit's import (an ephemeral AES-256 key under Vault's RSA wrapping key with
        OAEP-SHA256, the material under it with AES key wrap with padding), so it reaches Vault
        only encrypted to Vault. Later versions are generated by transit's own rotation.
        `material`: the raw key (symmetric, HMAC) or PKCS#8 DER (asymmetric)."""
        _, spec = self._spec(algorithm)
        if number != 1:
            raise ProviderOperationError("only the first version of a key can be imported")
        name = transit_key_name(key_id)
        if self._read_key(self._mount, name) is not None:
            raise ProviderOperationError(f"Vault holds a transit key for {key_id} already")
        path = self._path(self._mount, "wrapping_key")
        response = self._call("wrapping key read", lambda: self._client.adapter.get(path))
        wrapping = serialization.load_pem_public_key(response["data"]["public_key"].encode())
        if not isinstance(wrapping, rsa.RSAPublicKey):
            raise ProviderOperationError("Vault's transit wrapping key is not an RSA key")
        body: dict[str, Any] = {
            "ciphertext": _b64(rsa_aes_key_wrap(wrapping, material)),
            "type": spec.key_type,
            "hash_function": "SHA256",
            "allow_rotation": True,
        }
        self._post("key import", self._mount, "keys", name, "import", body=body)
        data = self._read_key(self._mount, name)
        if data is None:
            raise ProviderOperationError(f"Vault did not import the key for {key_id}")
        public_key = self._public_key_from(data, 1)
        return VersionMaterial(
            provider_key_ref=self._ref(name, 1), wrapped_material=None, public_key=public_key
        )

    def _public_key_from(self, data: Mapping[str, Any], number: int) -> bytes | None:
        entry = (data.get("keys") or {}).get(str(number))
        if not isinstance(entry, dict) or not entry.get("public_key"):
            return None
        text: str = entry["public_key"]
        if data.get("type") == "ed25519":
            # Vault gives the raw 32-byte Ed25519 key in base64, not a PEM.
            key = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(text))
            return key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        return serialization.load_pem_public_key(text.encode("ascii")).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def encrypt(self, version: VersionHandle, plaintext: bytes, aad: bytes) -> bytes:
        algo, spec = self._spec(version.algorithm)
        if Operation.ENCRYPT not in algo.operations:
            algo.encrypt(b"", plaintext, aad)  # raises UnsupportedOperationError
        body: dict[str, Any] = {"key_version": version.number}
        if spec.key_type.startswith("rsa-"):
            limit = algo.default_key_bits // 8 - _OAEP_SHA256_OVERHEAD - _AAD_DIGEST_BYTES
            if len(plaintext) > limit:
                raise AlgorithmError(
                    f"{algo.name} through Vault can encrypt at most {limit} bytes; "
                    f"got {len(plaintext)}"
                )
            body["plaintext"] = _b64(hashlib.sha256(aad).digest() + plaintext)
        else:
            body["plaintext"] = _b64(plaintext)
            if aad:
                body["associated_data"] = _b64(aad)
        data = self._use("encryption", version, ("encrypt",), body, using=True)
        ciphertext: str = data["ciphertext"]
        return ciphertext.encode("ascii")

    def decrypt(self, version: VersionHandle, data: bytes, aad: bytes) -> bytes:
        algo, spec = self._spec(version.algorithm)
        if Operation.DECRYPT not in algo.operations:
            algo.decrypt(b"", data, aad)  # raises UnsupportedOperationError
        ciphertext = _vault_text(data, DecryptionError)
        self._check_version(ciphertext, version, DecryptionError("decryption failed"))
        body: dict[str, Any] = {"ciphertext": ciphertext}
        rsa = spec.key_type.startswith("rsa-")
        if aad and not rsa:
            body["associated_data"] = _b64(aad)
        result = self._use(
            "decryption",
            version,
            ("decrypt",),
            body,
            using=False,
            # A 400 on a live version means the ciphertext did not authenticate.
            otherwise=lambda: DecryptionError("decryption failed"),
        )
        plaintext = base64.b64decode(result.get("plaintext") or "")
        if rsa:
            digest, plaintext = plaintext[:_AAD_DIGEST_BYTES], plaintext[_AAD_DIGEST_BYTES:]
            if not hmac.compare_digest(digest, hashlib.sha256(aad).digest()):
                raise DecryptionError("decryption failed")
        return plaintext

    def _check_version(self, value: str, version: VersionHandle, error: Exception) -> None:
        # Vault would happily use whichever version the value names: pin it to this one.
        m = _VERSION_PREFIX.match(value)
        if m is None or int(m["number"]) != version.number:
            raise error

    def sign(self, version: VersionHandle, message: bytes) -> bytes:
        algo, spec = self._spec(version.algorithm)
        if Operation.SIGN not in algo.operations:
            algo.sign(b"", message)  # raises UnsupportedOperationError
        if algo.kind == AlgorithmKind.MAC:
            data = self._use(
                "HMAC",
                version,
                ("hmac",),
                {
                    "input": _b64(message),
                    "key_version": version.number,
                    "algorithm": spec.hash_algorithm,
                },
                using=True,
            )
            tag: str = data["hmac"]
            return tag.encode("ascii")
        body: dict[str, Any] = {"input": _b64(message), "key_version": version.number}
        if spec.hash_algorithm is not None:
            body["hash_algorithm"] = spec.hash_algorithm
        body.update(spec.sign_params)
        data = self._use("signing", version, ("sign",), body, using=True)
        signature: str = data["signature"]
        return signature.encode("ascii")

    def verify(self, version: VersionHandle, message: bytes, signature: bytes) -> None:
        algo, spec = self._spec(version.algorithm)
        if Operation.VERIFY not in algo.operations:
            algo.verify(b"", message, signature)  # raises UnsupportedOperationError
        bad = InvalidSignatureError(f"{algo.name} signature does not verify")
        text = _vault_text(signature, InvalidSignatureError)
        self._check_version(text, version, bad)
        body: dict[str, Any] = {"input": _b64(message)}
        if spec.hash_algorithm is not None:
            body["hash_algorithm"] = spec.hash_algorithm
        if algo.kind == AlgorithmKind.MAC:
            body["hmac"] = text
        else:
            body["signature"] = text
            body.update(spec.sign_params)
        result = self._use(
            "verification", version, ("verify",), body, using=False, otherwise=lambda: bad
        )
        if result.get("valid") is not True:
            raise bad

    def public_key(self, version: VersionHandle) -> bytes | None:
        algo, _ = self._spec(version.algorithm)
        if algo.kind != AlgorithmKind.SIGNATURE:
            return None
        mount, name = self._locate(version)
        data = self._read_key(mount, name)
        held = None if data is None else self._public_key_from(data, version.number)
        # Vault stops listing a disabled version's key; public keys are not secret, so the copy
        # stored at creation still serves verifiers of old signatures.
        return held if held is not None else version.public_key

    def disable_version(self, version: VersionHandle) -> None:
        mount, name = self._locate(version)
        data = self._read_key(mount, name)
        if data is None:
            raise ProviderOperationError(
                f"Vault has no transit key for {version.key_id}; cannot disable v{version.number}"
            )
        minimum = version.number + 1
        if int(data["latest_version"]) < minimum:
            # Vault cannot set the minimum past the latest version, so retiring the newest
            # version needs a successor; create_version(number + 1) adopts it later.
            self._post("key rotation", mount, "keys", name, "rotate", body={})
        min_decryption = max(minimum, int(data.get("min_decryption_version", 1)))
        min_encryption = max(min_decryption, int(data.get("min_encryption_version", 0)))
        if (
            int(data.get("min_decryption_version", 1)) == min_decryption
            and int(data.get("min_encryption_version", 0)) == min_encryption
        ):
            return  # already disabled: nothing to write
        self._post(
            "version disabling",
            mount,
            "keys",
            name,
            "config",
            body={
                "min_decryption_version": min_decryption,
                "min_encryption_version": min_encryption,
            },
        )

    def destroy_version(self, version: VersionHandle) -> None:
        self.disable_version(version)
        mount, name = self._locate(version)
        data = self._read_key(mount, name)
        if data is None:
            raise ProviderOperationError(f"Vault transit key for {version.key_id} vanished")
        if int(data.get("min_available_version", 0)) > version.number:
            return  # already trimmed
        self._post(
            "version destruction",
            mount,
            "keys",
            name,
            "trim",
            body={"min_available_version": version.number + 1},
        )

    def health(self) -> ProviderHealth:
        where = f"Vault at {_safe_url(self._url)}, transit mount '{self._mount}'"
        try:
            status = self._client.sys.read_health_status(method="GET")
        except _CALL_ERRORS as e:
            return ProviderHealth(ok=False, detail=f"{where}: {_translate(e, 'health check')}")
        if not isinstance(status, dict):
            # hvac hands back the raw response for the non-200 health codes (sealed, standby).
            try:
                status = status.json()
            except ValueError:
                return ProviderHealth(ok=False, detail=f"{where}: unreadable health answer")
        if not status.get("initialized", False) or status.get("sealed", True):
            return ProviderHealth(ok=False, detail=f"{where}: server sealed or not initialized")
        try:
            self._client.adapter.request("list", self._path(self._mount, "keys"))
        except hvac_errors.InvalidPath as e:
            # An empty mount answers 404 with no error text; a missing one names the route.
            if getattr(e, "errors", None):
                return ProviderHealth(ok=False, detail=f"{where}: no such mount")
        except _CALL_ERRORS as e:
            return ProviderHealth(ok=False, detail=f"{where}: {_translate(e, 'health check')}")
        version = status.get("version", "unknown")
        return ProviderHealth(ok=True, detail=f"{where}: server {version}, unsealed, mount usable")
