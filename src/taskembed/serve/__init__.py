"""The HTTP embedding server (extra [serve]): `taskembed serve --model DIR`."""

from .app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]
