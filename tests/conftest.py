pytest_plugins = [
    "tests.fixtures.database",
    "tests.fixtures.softhsm",
    "tests.fixtures.temporal",
]
