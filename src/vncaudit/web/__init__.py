"""The web service (`vncaudit serve`): an online VNC port checker with a JSON API.

Owns: the FastAPI app (`create_app`), its settings, the target policy that keeps it from
becoming someone else's attack tool, in-process scan workers, pages and API. Must not be
imported by the library layers (only `cli/` and `web/` import FastAPI; docs/design.md §3).
"""

from vncaudit.web.app import create_app
from vncaudit.web.settings import Settings

__all__ = ["Settings", "create_app"]
