"""The Lua scripts of revoker, package data read with ``revoker.store._base.load_script``."""

__all__: list[str] = []
