pytest_plugins = ["winstar_core.testing"]

from console_world import console_world, pe_console_world  # noqa: E402,F401 - the console tests' worlds
from e2e_world import pe_world, world  # noqa: E402,F401 - fixtures of the end-to-end tests
