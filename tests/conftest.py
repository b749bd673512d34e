pytest_plugins = ["winstar_core.testing"]

from e2e_world import pe_world, world  # noqa: E402,F401 - fixtures of the end-to-end tests
