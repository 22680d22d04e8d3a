"""The README's provider x algorithm table says what the code does."""

from __future__ import annotations

from pathlib import Path

from core.algorithms import canonical_names, resolve
from core.envelope import MasterKeyring
from core.providers.aws_kms import AWSKMSProvider
from core.providers.azure_keyvault import AzureKeyVaultProvider
from core.providers.base import KeyProvider
from core.providers.local import LocalProvider
from core.providers.pkcs11 import PKCS11Provider
from core.providers.vault_transit import VaultTransitProvider
from tests.fixtures.azure_keyvault import StaticTokenCredential
from tests.providers import (
    test_aws_kms_contract,
    test_azure_keyvault_contract,
    test_pkcs11_contract,
)

README = Path(__file__).resolve().parents[2] / "README.md"
HEADER = "| algorithm | aliases | local | vault | aws-kms | pkcs11 | azure-keyvault |"


def providers() -> dict[str, tuple[KeyProvider, frozenset[str]]]:
    """Each provider (unconnected: `supports` needs no server) and its sign-only algorithms."""
    return {
        "local": (LocalProvider(MasterKeyring([bytes(32)])), frozenset()),
        "vault": (VaultTransitProvider("http://127.0.0.1:9", "unused"), frozenset()),
        "aws-kms": (
            AWSKMSProvider(endpoint_url="http://127.0.0.1:9", region_name="us-east-1"),
            test_aws_kms_contract.TestAWSKMSContract.SIGN_ONLY,
        ),
        "pkcs11": (
            PKCS11Provider("/nonexistent.so", "unused", "unused"),
            test_pkcs11_contract.TestPKCS11Contract.SIGN_ONLY,
        ),
        "azure-keyvault": (
            AzureKeyVaultProvider(
                "https://unused.vault.azure.net", StaticTokenCredential("unused")
            ),
            test_azure_keyvault_contract.TestAzureKeyVaultContract.SIGN_ONLY,
        ),
    }


def table() -> list[list[str]]:
    lines = README.read_text().splitlines()
    start = lines.index(HEADER) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_every_algorithm_has_one_row() -> None:
    names = [row[0] for row in table()]
    assert sorted(names) == sorted(canonical_names())
    assert len(set(names)) == len(names)


def test_aliases_resolve_to_their_row() -> None:
    for name, aliases, *_ in table():
        for alias in filter(None, (a.strip() for a in aliases.split(","))):
            assert resolve(alias).name == name, alias


def test_support_cells_match_the_providers() -> None:
    columns = HEADER.strip("|").split("|")[2:]
    known = providers()
    for name, _, *cells in table():
        for column, cell in zip(columns, cells, strict=True):
            provider, sign_only = known[column.strip()]
            expected = (
                "no" if not provider.supports(name) else "sign only" if name in sign_only else "yes"
            )
            assert cell == expected, (name, column.strip())
