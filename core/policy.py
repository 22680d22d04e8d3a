"""Key-type policies from config/keyrotor.toml, and the ISO 8601 durations they are written in.

`load_policies` reads and checks the whole file at once and reports every problem as a
`PolicyError` naming the file, the dotted field and the reason, so that an operator's typo fails
at start-up with a message that points at the line to fix instead of surfacing months later as a
key that never rotates.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from types import MappingProxyType
from typing import Any

from core.algorithms import Algorithm, AlgorithmError, AlgorithmKind, resolve
from core.lifecycle import LifecyclePolicy

NAME_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,31}")

_SECOND = timedelta(seconds=1)
_DAYS_PER_YEAR = 365
_DAYS_PER_MONTH = 30

# Digits are spelled [0-9]: \d would also accept other scripts' digits.
_DURATION = re.compile(
    r"P(?:(?P<years>[0-9]+)Y)?(?:(?P<months>[0-9]+)M)?(?:(?P<weeks>[0-9]+)W)?"
    r"(?:(?P<days>[0-9]+)D)?"
    r"(?:T(?=[0-9])(?:(?P<hours>[0-9]+)H)?(?:(?P<minutes>[0-9]+)M)?"
    r"(?:(?P<seconds>[0-9]+)(?:\.(?P<fraction>[0-9]{1,6}))?S)?)?"
)


class PolicyError(ValueError):
    """A policy file is unreadable or invalid: which file, which field, and why."""

    def __init__(self, file: str, field: str, reason: str) -> None:
        super().__init__(f"{file}: {field}: {reason}")
        self.file = file
        self.field = field
        self.reason = reason


def _duration_problem(text: str) -> str:
    """Why `text` (which did not match) is not a duration, as precisely as we can tell."""
    if not text:
        return "it is empty"
    if text.startswith("-") or re.search(r"-[0-9]", text):
        return "negative durations are not allowed"
    if text != text.strip():
        return "it has surrounding whitespace"
    if text[0] in "pP" and text != text.upper():
        return "designators must be upper case (P, Y, M, W, D, T, H, M, S)"
    if not text.startswith("P"):
        return "it must start with 'P' (e.g. P30D, PT2H)"
    if text == "P":
        return "it has no components after 'P'"
    if text.endswith("T"):
        return "'T' must be followed by hours, minutes or seconds"
    if "T" not in text and "H" in text:
        return "hours need a 'T' before them (e.g. PT2H)"
    if "T" not in text and "S" in text:
        return "seconds need a 'T' before them (e.g. PT30S)"
    if re.search(r"[.,][0-9]{7,}S$", text):
        return "fractions of a second stop at microseconds (6 digits)"
    if "," in text or re.search(r"[.][0-9]*[^0-9S]", text):
        return "only seconds may have a fraction, written with '.' (e.g. PT0.5S)"
    return "expected PnYnMnWnDTnHnMnS with the components in that order, each at most once"


def parse_duration(text: str) -> timedelta:
    """Parse an ISO 8601 duration such as P30D, PT2H, P1DT12H, P2W or PT0.5S.

    Key lifetimes must not depend on the calendar, so a year (Y) counts as exactly 365 days and a
    month (M before T) as exactly 30 days; M after T is minutes. Only seconds may carry a
    fraction (at most 6 digits, written with '.'). Designators must be upper case and every
    component is optional, but at least one must be present. Negative durations are rejected.

    Raises ValueError naming the text and the reason.
    """
    match = _DURATION.fullmatch(text)
    if match is None or text == "P":
        reason = _duration_problem(text)
        raise ValueError(f"invalid ISO 8601 duration {text!r}: {reason}")
    fraction = match.group("fraction")
    microseconds = int(Decimal("0." + fraction) * 1_000_000) if fraction else 0
    try:
        parts = {
            k: int(v) for k, v in match.groupdict().items() if v is not None and k != "fraction"
        }
        return timedelta(
            days=parts.get("years", 0) * _DAYS_PER_YEAR
            + parts.get("months", 0) * _DAYS_PER_MONTH
            + parts.get("weeks", 0) * 7
            + parts.get("days", 0),
            hours=parts.get("hours", 0),
            minutes=parts.get("minutes", 0),
            seconds=parts.get("seconds", 0),
            microseconds=microseconds,
        )
    except (OverflowError, ValueError):
        # timedelta stops near 2.7 million years; int() refuses absurdly long digit strings.
        raise ValueError(f"invalid ISO 8601 duration {text!r}: it is too long") from None


def format_duration(d: timedelta) -> str:
    """The canonical ISO 8601 form of `d`: days, hours, minutes, seconds, zeros left out.

    Days are never folded into weeks, months or years (P14D, not P2W), so the text reads the
    same as the value. Zero is PT0S. Negative durations raise ValueError.
    """
    if d < timedelta(0):
        raise ValueError(f"negative duration {d} has no ISO 8601 form here")
    days = d.days
    hours, rest = divmod(d.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    date = f"{days}D" if days else ""
    time = ""
    if hours:
        time += f"{hours}H"
    if minutes:
        time += f"{minutes}M"
    if seconds or d.microseconds:
        fraction = f".{d.microseconds:06d}".rstrip("0") if d.microseconds else ""
        time += f"{seconds}{fraction}S"
    if not date and not time:
        return "PT0S"
    return f"P{date}" + (f"T{time}" if time else "")


def _whole_seconds(d: timedelta) -> int:
    if d % _SECOND:
        raise ValueError(f"{format_duration(d)} is not a whole number of seconds")
    return d // _SECOND


@dataclass(frozen=True)
class WarningStages:
    """Staged warnings: how long before a rotation and before an expiry each stage is raised,
    longest first (`rotation` empty: the warning threshold alone)."""

    rotation: tuple[timedelta, ...] = ()
    expiry: tuple[timedelta, ...] = ()

    def rotation_seconds(self) -> tuple[int, ...]:
        return tuple(_whole_seconds(d) for d in self.rotation)

    def expiry_seconds(self) -> tuple[int, ...]:
        return tuple(_whole_seconds(d) for d in self.expiry)


@dataclass(frozen=True)
class KeyTypePolicy:
    """The policy of one key type: its algorithm and key size, and when its versions change."""

    name: str
    algorithm: str
    key_bits: int
    rotation_interval: timedelta
    warning_threshold: timedelta
    max_lifetime: timedelta
    grace_period: timedelta
    warnings: WarningStages = field(default_factory=WarningStages)
    # usage-aware retirement (zero: off); see LifecyclePolicy
    usage_window: timedelta = timedelta(0)
    retire_unused: bool = False

    def lifecycle(self) -> LifecyclePolicy:
        """The timing part, in whole seconds, as the lifecycle functions and workflows take it."""
        return LifecyclePolicy(
            rotation_interval=_whole_seconds(self.rotation_interval),
            warning_threshold=_whole_seconds(self.warning_threshold),
            max_lifetime=_whole_seconds(self.max_lifetime),
            grace_period=_whole_seconds(self.grace_period),
            rotation_warnings=self.warnings.rotation_seconds(),
            expiry_warnings=self.warnings.expiry_seconds(),
            usage_window=_whole_seconds(self.usage_window),
            retire_unused=self.retire_unused,
        )


@dataclass(frozen=True)
class CredentialPolicy:
    """When the versions (secrets) of API credentials change.

    Scheduled rotation is opt-in per credential: without it a secret lives until the
    credential expires, at most `max_lifetime`; with it, it rotates every `rotation_interval`.
    """

    rotation_interval: timedelta
    warning_threshold: timedelta
    max_lifetime: timedelta
    grace_period: timedelta
    warnings: WarningStages = field(default_factory=WarningStages)

    def lifecycle(self, *, scheduled: bool) -> LifecyclePolicy:
        return LifecyclePolicy(
            rotation_interval=_whole_seconds(self.rotation_interval),
            warning_threshold=_whole_seconds(self.warning_threshold),
            max_lifetime=_whole_seconds(self.max_lifetime),
            grace_period=_whole_seconds(self.grace_period),
            scheduled=scheduled,
            rotation_warnings=self.warnings.rotation_seconds(),
            expiry_warnings=self.warnings.expiry_seconds(),
        )


@dataclass(frozen=True)
class HandleTypePolicy:
    """A handle type (001_019c7eb82d54c46f.txt): short-lived bearer values that the holder
    exchanges for the next one; `max_lifetime` bounds the whole chain of exchanges."""

    name: str
    algorithm: str  # SHA-256, SHA-384 or SHA-512: the hash of the stored keyed hash
    handle_length: int  # random bytes in each handle value
    rotation_interval: timedelta
    warning_threshold: timedelta
    max_lifetime: timedelta
    max_usage: int  # validations per handle value

    def lifecycle(self, security: SecurityPolicies) -> LifecyclePolicy:
        """Handles never rotate on a schedule (the holder exchanges them); a rotated-away value
        stays valid for the reuse interval (in-flight requests), then presenting it is a reuse;
        a family suspended longer than the suspension timeout is revoked."""
        return LifecyclePolicy(
            rotation_interval=_whole_seconds(self.rotation_interval),
            warning_threshold=_whole_seconds(self.warning_threshold),
            max_lifetime=_whole_seconds(self.max_lifetime),
            grace_period=_whole_seconds(security.reuse_interval),
            scheduled=False,
            suspension_timeout=_whole_seconds(security.suspension_timeout),
        )


@dataclass(frozen=True)
class SecurityPolicies:
    """The security policies of handles (`securityPolicies` in the reference document)."""

    prevent_reuse: bool
    enforce_rotation: bool
    track_usage: bool
    anomaly_detection: bool
    rate_limit_per_handle: int  # validations per minute per handle value
    max_concurrent_handles: int  # live handles per user and type
    reuse_interval: timedelta
    context_mismatch: str  # "reject" or "flag"
    anomaly_threshold: int  # anomalies of one handle family before it is suspended
    suspension_timeout: timedelta  # a suspended family not resumed by then is revoked


# Classical public-key algorithms a large quantum computer would break, and the transitional
# hybrids; symmetric, MAC and post-quantum algorithms stay as they are.
_QUANTUM_VULNERABLE = frozenset(
    {"Ed25519", "ECDSA-P256", "ECDSA-secp256k1", "RSA-2048", "RSA-4096"}
)
HYBRID_SIGNATURE = "Ed25519+ML-DSA-65"
HYBRID_ENCRYPTION = "X25519+ML-KEM-768"


@dataclass(frozen=True)
class PQCPolicy:
    """`pqcPolicy` of the reference document: the algorithm a rotation gives a key's next
    version, so that keys move off quantum-vulnerable algorithms one rotation at a time.

    Before `migration_deadline` with `hybrid_mode`, a classical signing key's next version is
    the hybrid Ed25519+ML-DSA-65; from the deadline on, classical and hybrid keys move to the
    first of the preferred algorithms of their kind that their provider holds. A version in
    grace keeps its own algorithm, so what it signed still verifies.
    """

    enabled: bool
    migration_deadline: datetime
    hybrid_mode: bool
    signing: tuple[str, ...]  # canonical names, preferred first
    encryption: tuple[str, ...]

    def next_algorithm(self, current: str, at: datetime, supported: Callable[[str], bool]) -> str:
        """The algorithm of the version a rotation at `at` makes after a `current` one."""
        algorithm = resolve(current)
        hybrid = algorithm.name in (HYBRID_SIGNATURE, HYBRID_ENCRYPTION)
        if not self.enabled or not (algorithm.name in _QUANTUM_VULNERABLE or hybrid):
            return algorithm.name
        signing = algorithm.kind == AlgorithmKind.SIGNATURE
        if self.hybrid_mode and at < self.migration_deadline:
            candidates: tuple[str, ...] = (HYBRID_SIGNATURE if signing else HYBRID_ENCRYPTION,)
        else:
            candidates = self.signing if signing else self.encryption
        for name in candidates:
            candidate = resolve(name)
            if candidate.kind == algorithm.kind and supported(candidate.name):
                return candidate.name
        return algorithm.name  # nothing better that this provider holds: stay


NO_MIGRATION = PQCPolicy(False, datetime.max.replace(tzinfo=UTC), False, (), ())


@dataclass(frozen=True)
class EnvironmentPolicy:
    """Where the keys of one environment live. `prod` refuses the local provider unless its
    table says `allow_local = true`: production keys belong in a KMS or HSM."""

    name: str
    provider: str  # for a key whose request names none
    allow_local: bool
    # audit records of its objects older than this are summarised (core.audit.apply_retention)
    audit_retention: timedelta = timedelta(days=365)


@dataclass(frozen=True)
class CleanupPolicy:
    """What the daily cleanup (`CleanupWorkflow`) removes, and how long after it ended."""

    # key material of a version that ended (retired, expired, compromised): destroyed
    destroy_after: timedelta = timedelta(days=30)
    # API credentials and handle families revoked or expired: archived (hashes deleted, a
    # summary kept); versions of live ones that ended: their hashes deleted
    archive_after: timedelta = timedelta(days=90)
    # lifecycle events (`GET /events`, webhooks) older than this: deleted
    event_retention: timedelta = timedelta(days=90)


DEFAULT_CLEANUP = CleanupPolicy()


@dataclass(frozen=True)
class Policies:
    """Every policy of one configuration file, checked and read-only."""

    key_types: Mapping[str, KeyTypePolicy]
    credentials: CredentialPolicy
    handle_types: Mapping[str, HandleTypePolicy]
    security: SecurityPolicies
    pqc: PQCPolicy
    environments: tuple[str, ...]
    environment_policies: Mapping[str, EnvironmentPolicy]
    default_environment: str
    default_provider: str
    source: str
    # the audit retention of records that belong to no environment (admin keys, webhooks)
    audit_retention: timedelta = timedelta(days=365)
    cleanup: CleanupPolicy = DEFAULT_CLEANUP

    def provider_for(self, environment: str, requested: str | None) -> str:
        """The provider of a new key in `environment`: the one requested, else the
        environment's; PolicyError if the environment does not allow it."""
        policy = self.environment_policies[environment]
        provider = requested or policy.provider
        if provider == "local" and not policy.allow_local:
            raise PolicyError(
                self.source,
                f"environments.{environment}",
                f"keys in {environment} may not use the local provider (set allow_local = true"
                " to allow it)",
            )
        return provider

    def handle_type(self, name: str) -> HandleTypePolicy:
        """The policy of handle type `name`; PolicyError if the file defines no such type."""
        try:
            return self.handle_types[name]
        except KeyError:
            known = ", ".join(sorted(self.handle_types)) or "none"
            raise PolicyError(
                self.source, "handle_types", f"unknown handle type {name!r}; known: {known}"
            ) from None

    def key_type(self, name: str) -> KeyTypePolicy:
        """The policy of key type `name`; PolicyError if the file defines no such type."""
        try:
            return self.key_types[name]
        except KeyError:
            known = ", ".join(sorted(self.key_types)) or "none"
            raise PolicyError(
                self.source, "key_types", f"unknown key type {name!r}; known: {known}"
            ) from None


_DEFAULTS_FIELDS = ("environments", "environment", "provider")
_KEY_TYPE_FIELDS = (
    "algorithm",
    "key_bits",
    "rotation_interval",
    "warning_threshold",
    "max_lifetime",
    "grace_period",
)
_CREDENTIAL_FIELDS = _KEY_TYPE_FIELDS[2:]
_WARNING_FIELDS = ("rotation_warnings", "expiry_warnings")
_USAGE_FIELDS = ("usage_window", "retire_unused")
_HANDLE_TYPE_FIELDS = (
    "algorithm",
    "handle_length",
    "rotation_interval",
    "warning_threshold",
    "max_lifetime",
    "max_usage",
)
_SECURITY_FIELDS = (
    "prevent_reuse",
    "enforce_rotation",
    "track_usage",
    "anomaly_detection",
    "rate_limit_per_handle",
    "max_concurrent_handles",
    "reuse_interval",
    "context_mismatch",
    "anomaly_threshold",
    "suspension_timeout",
)
_TOP_LEVEL_FIELDS = ("defaults", "key_types", "credentials", "handle_types", "security_policies")
_ENVIRONMENT_FIELDS = ("provider", "allow_local", "audit_retention")
_CLEANUP_FIELDS = ("destroy_after", "archive_after", "event_retention")
_PQC_FIELDS = (
    "enabled",
    "migration_deadline",
    "hybrid_mode",
    "preferred_signing",
    "preferred_encryption",
)
# the hash of a handle's keyed hash, by the names the policy file may use
HANDLE_HASHES = {
    "SHA-256": "SHA-256",
    "SHA256": "SHA-256",
    "SHA-384": "SHA-384",
    "SHA384": "SHA-384",
    "SHA-512": "SHA-512",
    "SHA512": "SHA-512",
}


class _Reader:
    """Checks one parsed file, raising PolicyError with the file name on the first problem."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, reason: str) -> PolicyError:
        return PolicyError(self.source, field, reason)

    def table(
        self, value: object, field: str, allowed: tuple[str, ...], optional: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, f"must be a table, got {_type_name(value)}")
        for key in value:
            if key not in allowed + optional:
                expected = ", ".join(allowed + optional)
                raise self.fail(_join(field, key), f"unknown field; expected one of {expected}")
        for key in allowed:
            if key not in value:
                raise self.fail(_join(field, key), "missing")
        return value

    def environment(
        self, name: str, value: object, default_provider: str, default_retention: timedelta
    ) -> EnvironmentPolicy:
        field = f"environments.{name}"
        table = self.table(value, field, (), _ENVIRONMENT_FIELDS)
        retention = default_retention
        if "audit_retention" in table:
            retention = self.positive(table["audit_retention"], f"{field}.audit_retention")
        provider = default_provider
        if "provider" in table:
            provider = self.name(table["provider"], f"{field}.provider")
        allow_local = name != "prod"
        if "allow_local" in table:
            allow_local = self.boolean(table["allow_local"], f"{field}.allow_local")
        return EnvironmentPolicy(name, provider, allow_local, retention)

    def positive(self, value: object, field: str) -> timedelta:
        d = self.duration(value, field)
        if d <= timedelta(0):
            raise self.fail(field, "must be longer than zero")
        return d

    def string(self, value: object, field: str) -> str:
        if not isinstance(value, str):
            raise self.fail(field, f"must be a string, got {_type_name(value)}")
        if not value.strip():
            raise self.fail(field, "must not be empty")
        return value

    def name(self, value: object, field: str) -> str:
        text = self.string(value, field)
        if NAME_PATTERN.fullmatch(text) is None:
            raise self.fail(
                field,
                f"{text!r} is not a valid name: lower-case letter, then up to 31 lower-case "
                "letters, digits or '-'",
            )
        return text

    def duration(self, value: object, field: str) -> timedelta:
        if not isinstance(value, str):
            raise self.fail(
                field,
                f'must be an ISO 8601 duration string such as "P30D", got {_type_name(value)}',
            )
        try:
            d = parse_duration(value)
        except ValueError as e:
            raise self.fail(field, str(e)) from None
        if d % _SECOND:
            raise self.fail(field, f"{value!r} is not a whole number of seconds")
        return d

    def timing(
        self, table: dict[str, Any], field: str
    ) -> tuple[timedelta, timedelta, timedelta, timedelta]:
        """rotation_interval, warning_threshold, max_lifetime and grace_period (zero when the
        table has none), consistent."""
        rotation = self.duration(table["rotation_interval"], f"{field}.rotation_interval")
        warning = self.duration(table["warning_threshold"], f"{field}.warning_threshold")
        lifetime = self.duration(table["max_lifetime"], f"{field}.max_lifetime")
        grace = (
            self.duration(table["grace_period"], f"{field}.grace_period")
            if "grace_period" in table
            else timedelta(0)
        )
        if rotation <= timedelta(0):
            raise self.fail(f"{field}.rotation_interval", "must be longer than zero")
        if warning >= rotation:
            raise self.fail(
                f"{field}.warning_threshold",
                f"{format_duration(warning)} must be shorter than rotation_interval "
                f"{format_duration(rotation)}",
            )
        if rotation > lifetime:
            raise self.fail(
                f"{field}.max_lifetime",
                f"{format_duration(lifetime)} must be at least rotation_interval "
                f"{format_duration(rotation)}",
            )
        if grace > lifetime:
            raise self.fail(
                f"{field}.grace_period",
                f"{format_duration(grace)} must be at most max_lifetime "
                f"{format_duration(lifetime)}",
            )
        return rotation, warning, lifetime, grace

    def warning_stages(
        self, table: dict[str, Any], field: str, threshold: timedelta
    ) -> WarningStages:
        """`rotation_warnings` and `expiry_warnings`: lists of durations, longest first; the
        first rotation warning is the warning threshold."""
        found: dict[str, tuple[timedelta, ...]] = {}
        for name in _WARNING_FIELDS:
            where = f"{field}.{name}"
            value = table.get(name, [])
            if not isinstance(value, list):
                raise self.fail(where, f"must be a list of durations, got {_type_name(value)}")
            stages = tuple(self.duration(v, f"{where}[{i}]") for i, v in enumerate(value))
            if any(d <= timedelta(0) for d in stages):
                raise self.fail(where, "every stage must be longer than zero")
            if any(a <= b for a, b in pairwise(stages)):
                raise self.fail(where, "stages must be listed longest first, each once")
            found[name] = stages
        rotation = found["rotation_warnings"]
        if rotation and rotation[0] != threshold:
            raise self.fail(
                f"{field}.rotation_warnings",
                f"must start with warning_threshold {format_duration(threshold)}, "
                f"got {format_duration(rotation[0])}",
            )
        return WarningStages(rotation, found["expiry_warnings"])

    def credentials(self, value: object) -> CredentialPolicy:
        table = self.table(value, "credentials", _CREDENTIAL_FIELDS, _WARNING_FIELDS)
        rotation, warning, lifetime, grace = self.timing(table, "credentials")
        stages = self.warning_stages(table, "credentials", warning)
        policy = CredentialPolicy(rotation, warning, lifetime, grace, stages)
        policy.lifecycle(scheduled=True)
        return policy

    def integer(self, value: object, field: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"must be an integer, got {_type_name(value)}")
        if not low <= value <= high:
            raise self.fail(field, f"must be between {low} and {high}, got {value}")
        return value

    def boolean(self, value: object, field: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(field, f"must be true or false, got {_type_name(value)}")
        return value

    def handle_type(self, name: object, value: object) -> HandleTypePolicy:
        field = f"handle_types.{name}"
        type_name = self.name(name, field)
        table = self.table(value, field, _HANDLE_TYPE_FIELDS)
        algorithm = self.string(table["algorithm"], f"{field}.algorithm")
        canonical = HANDLE_HASHES.get(algorithm.upper().replace("_", "-"))
        if canonical is None:
            raise self.fail(
                f"{field}.algorithm", f"{algorithm!r} is not one of SHA-256, SHA-384, SHA-512"
            )
        length = self.integer(table["handle_length"], f"{field}.handle_length", 32, 128)
        rotation, warning, lifetime, _ = self.timing(table, field)
        max_usage = self.integer(table["max_usage"], f"{field}.max_usage", 1, 2**31 - 1)
        return HandleTypePolicy(
            type_name, canonical, length, rotation, warning, lifetime, max_usage
        )

    def security(self, value: object) -> SecurityPolicies:
        field = "security_policies"
        t = self.table(value, field, _SECURITY_FIELDS)
        mismatch = self.string(t["context_mismatch"], f"{field}.context_mismatch")
        if mismatch not in ("reject", "flag"):
            raise self.fail(
                f"{field}.context_mismatch", f'must be "reject" or "flag", not {mismatch!r}'
            )
        return SecurityPolicies(
            prevent_reuse=self.boolean(t["prevent_reuse"], f"{field}.prevent_reuse"),
            enforce_rotation=self.boolean(t["enforce_rotation"], f"{field}.enforce_rotation"),
            track_usage=self.boolean(t["track_usage"], f"{field}.track_usage"),
            anomaly_detection=self.boolean(t["anomaly_detection"], f"{field}.anomaly_detection"),
            rate_limit_per_handle=self.integer(
                t["rate_limit_per_handle"], f"{field}.rate_limit_per_handle", 1, 1_000_000
            ),
            max_concurrent_handles=self.integer(
                t["max_concurrent_handles"], f"{field}.max_concurrent_handles", 1, 10_000_000
            ),
            reuse_interval=self.duration(t["reuse_interval"], f"{field}.reuse_interval"),
            context_mismatch=mismatch,
            anomaly_threshold=self.integer(
                t["anomaly_threshold"], f"{field}.anomaly_threshold", 1, 1_000_000
            ),
            suspension_timeout=self.duration(
                t["suspension_timeout"], f"{field}.suspension_timeout"
            ),
        )

    def algorithm(self, value: object, field: str) -> Algorithm:
        try:
            return resolve(self.string(value, field))
        except AlgorithmError as e:
            raise self.fail(field, str(e)) from None

    def pqc(self, value: object) -> PQCPolicy:
        field = "pqc_policy"
        if value is None:  # no table: no migration
            return NO_MIGRATION
        t = self.table(value, field, _PQC_FIELDS)
        deadline = t["migration_deadline"]
        if not isinstance(deadline, datetime) or deadline.tzinfo is None:
            raise self.fail(
                f"{field}.migration_deadline",
                "must be a date and time with its offset, e.g. 2030-12-31T23:59:59Z",
            )
        lists: dict[str, tuple[str, ...]] = {}
        for name, kinds in (
            ("preferred_signing", (AlgorithmKind.SIGNATURE,)),
            ("preferred_encryption", (AlgorithmKind.KEY_ENCAPSULATION, AlgorithmKind.SYMMETRIC)),
        ):
            raw = t[name]
            if not isinstance(raw, list) or not raw:
                raise self.fail(f"{field}.{name}", "must be a non-empty list of algorithm names")
            names = []
            for i, item in enumerate(raw):
                algorithm = self.algorithm(item, f"{field}.{name}[{i}]")
                if algorithm.kind not in kinds:
                    raise self.fail(
                        f"{field}.{name}[{i}]", f"{algorithm.name} is a {algorithm.kind} algorithm"
                    )
                names.append(algorithm.name)
            lists[name] = tuple(names)
        return PQCPolicy(
            enabled=self.boolean(t["enabled"], f"{field}.enabled"),
            migration_deadline=deadline,
            hybrid_mode=self.boolean(t["hybrid_mode"], f"{field}.hybrid_mode"),
            signing=lists["preferred_signing"],
            encryption=lists["preferred_encryption"],
        )

    def key_type(self, name: object, value: object) -> KeyTypePolicy:
        field = f"key_types.{name}"
        type_name = self.name(name, field)
        table = self.table(value, field, _KEY_TYPE_FIELDS, _WARNING_FIELDS + _USAGE_FIELDS)
        algorithm = self.algorithm(table["algorithm"], f"{field}.algorithm")
        bits = table["key_bits"]
        if isinstance(bits, bool) or not isinstance(bits, int):
            raise self.fail(f"{field}.key_bits", f"must be an integer, got {_type_name(bits)}")
        try:
            algorithm.validate_key_bits(bits)
        except AlgorithmError as e:
            raise self.fail(f"{field}.key_bits", str(e)) from None
        rotation, warning, lifetime, grace = self.timing(table, field)
        policy = KeyTypePolicy(
            name=type_name,
            algorithm=algorithm.name,
            key_bits=bits,
            rotation_interval=rotation,
            warning_threshold=warning,
            max_lifetime=lifetime,
            grace_period=grace,
            warnings=self.warning_stages(table, field, warning),
            usage_window=(
                self.positive(table["usage_window"], f"{field}.usage_window")
                if "usage_window" in table
                else timedelta(0)
            ),
            retire_unused=(
                self.boolean(table["retire_unused"], f"{field}.retire_unused")
                if "retire_unused" in table
                else False
            ),
        )
        if policy.retire_unused and not policy.usage_window:
            raise self.fail(f"{field}.retire_unused", "needs a usage_window")
        policy.lifecycle()  # the same rules, checked again where the workflows will check them
        return policy

    def policies(self, data: dict[str, Any]) -> Policies:
        self.table(data, "", _TOP_LEVEL_FIELDS, ("environments", "pqc_policy", "cleanup"))
        defaults = self.table(data["defaults"], "defaults", _DEFAULTS_FIELDS, ("audit_retention",))
        retention = timedelta(days=365)
        if "audit_retention" in defaults:
            retention = self.positive(defaults["audit_retention"], "defaults.audit_retention")
        raw_environments = defaults["environments"]
        if not isinstance(raw_environments, list):
            raise self.fail(
                "defaults.environments",
                f"must be a list of names, got {_type_name(raw_environments)}",
            )
        if not raw_environments:
            raise self.fail("defaults.environments", "must name at least one environment")
        environments: list[str] = []
        for i, item in enumerate(raw_environments):
            env = self.name(item, f"defaults.environments[{i}]")
            if env in environments:
                raise self.fail(f"defaults.environments[{i}]", f"{env!r} is listed twice")
            environments.append(env)
        environment = self.string(defaults["environment"], "defaults.environment")
        if environment not in environments:
            raise self.fail(
                "defaults.environment",
                f"{environment!r} is not one of environments ({', '.join(environments)})",
            )
        provider = self.string(defaults["provider"], "defaults.provider")
        raw_env_tables = data.get("environments", {})
        if not isinstance(raw_env_tables, dict):
            raise self.fail("environments", f"must be a table, got {_type_name(raw_env_tables)}")
        for env in raw_env_tables:
            if env not in environments:
                raise self.fail(
                    f"environments.{env}",
                    f"{env!r} is not one of defaults.environments ({', '.join(environments)})",
                )
        environment_policies = {
            env: self.environment(env, raw_env_tables.get(env, {}), provider, retention)
            for env in environments
        }
        raw_types = data["key_types"]
        if not isinstance(raw_types, dict):
            raise self.fail("key_types", f"must be a table, got {_type_name(raw_types)}")
        if not raw_types:
            raise self.fail("key_types", "must define at least one key type")
        key_types = {name: self.key_type(name, value) for name, value in raw_types.items()}
        raw_handles = data["handle_types"]
        if not isinstance(raw_handles, dict) or not raw_handles:
            raise self.fail("handle_types", "must be a table defining at least one handle type")
        handle_types = {name: self.handle_type(name, v) for name, v in raw_handles.items()}
        return Policies(
            key_types=MappingProxyType(key_types),
            credentials=self.credentials(data["credentials"]),
            handle_types=MappingProxyType(handle_types),
            security=self.security(data["security_policies"]),
            pqc=self.pqc(data.get("pqc_policy")),
            environments=tuple(environments),
            environment_policies=MappingProxyType(environment_policies),
            default_environment=environment,
            default_provider=provider,
            source=self.source,
            audit_retention=retention,
            cleanup=self.cleanup(data.get("cleanup")),
        )

    def cleanup(self, value: object) -> CleanupPolicy:
        if value is None:
            return DEFAULT_CLEANUP
        t = self.table(value, "cleanup", (), _CLEANUP_FIELDS)
        durations = {k: self.positive(v, f"cleanup.{k}") for k, v in t.items()}
        return replace(DEFAULT_CLEANUP, **durations)


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    list: "a list",
    dict: "a table",
}


def _type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def load_policies(path: Path) -> Policies:
    """Read and check the policy file at `path`; raise PolicyError on the first problem."""
    return parse_policies(read_policy_text(path), str(path))


def read_policy_text(path: Path) -> str:
    """The policy file's text; PolicyError if it cannot be read as UTF-8."""
    try:
        return path.read_bytes().decode()
    except UnicodeDecodeError as e:
        raise PolicyError(
            str(path), "<toml>", f"not UTF-8 text: {e.reason} at byte {e.start}"
        ) from None
    except OSError as e:
        raise PolicyError(str(path), "<file>", e.strerror or str(e)) from None


def parse_policies(text: str, source: str) -> Policies:
    """Check policy TOML `text`; PolicyError naming `source`, the field and the reason."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(source, "<toml>", str(e)) from None
    return _Reader(source).policies(data)


def default_policy_path() -> Path:
    """The repository's config/keyrotor.toml, the policies shipped with keyrotor."""
    return Path(__file__).resolve().parents[1] / "config" / "keyrotor.toml"
