pytest_plugins = [
    "tests.fixtures.azure_keyvault",
    "tests.fixtures.database",
    "tests.fixtures.moto_kms",
    "tests.fixtures.openbao",
    "tests.fixtures.redis_server",
    "tests.fixtures.softhsm",
    "tests.fixtures.temporal",
]
