"""A module that imports a package that is not installed."""

import amp_explorer_no_such_package  # noqa: F401
