"""What the client remembers between runs, in the user's config folder."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import platformdirs

from server.protocol import DEFAULT_PORT

logger = logging.getLogger("app.settings")

APP_NAME = "lan-chat"
MIN_FONT_SIZE = 8
MAX_FONT_SIZE = 28


@dataclass(frozen=True, slots=True)
class Settings:
    """The last connection, the theme and the font size."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    name: str = ""
    dark: bool = False
    font_size: int = 11

    def with_font_size(self, size: int) -> Settings:
        return replace(self, font_size=max(MIN_FONT_SIZE, min(MAX_FONT_SIZE, size)))


def config_path() -> Path:
    """Where the settings live (overridable with LAN_CHAT_CONFIG_DIR, for tests)."""
    folder = os.environ.get("LAN_CHAT_CONFIG_DIR") or platformdirs.user_config_dir(APP_NAME)
    return Path(folder) / "settings.json"


def load(path: Path | None = None) -> Settings:
    """The saved settings; defaults for anything missing, unreadable or of the wrong type."""
    path = path or config_path()
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Settings()
    except (OSError, ValueError) as exc:
        logger.warning("Ignoring unreadable settings in %s: %s", path, exc)
        return Settings()
    defaults = Settings()
    values: dict[str, Any] = {}
    for field in fields(Settings):
        value = saved.get(field.name) if isinstance(saved, dict) else None
        default = getattr(defaults, field.name)
        if type(value) is type(default):
            values[field.name] = value
    settings = Settings(**values)
    return settings.with_font_size(settings.font_size)


def save(settings: Settings, path: Path | None = None) -> None:
    """Write the settings; a failure is logged, never raised (it must not stop a quit)."""
    path = path or config_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(settings), indent=2), encoding="utf-8")
        temporary.replace(path)  # never leave a half-written file behind
    except OSError as exc:
        logger.warning("Cannot save settings to %s: %s", path, exc)
        try:
            path.with_suffix(".tmp").unlink(missing_ok=True)
        except OSError:
            pass  # the folder itself is unusable: there is no file to remove
