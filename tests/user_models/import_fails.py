"""A module whose import raises: the user's code is broken before any model exists."""

raise RuntimeError("this module is broken on purpose")
