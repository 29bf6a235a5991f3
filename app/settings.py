"""What the client remembers between runs, in the user's config folder.

Everything loaded is checked: a value of the wrong type or out of its range
is replaced by the default, so a hand-edited or damaged file cannot stop the
app or put its window somewhere absurd.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import platformdirs

from server.protocol import DEFAULT_PORT

logger = logging.getLogger("app.settings")

APP_NAME = "lan-chat"
MIN_FONT_SIZE = 8
MAX_FONT_SIZE = 28
# Images up to this many MB are downloaded as they arrive and shown inline;
# bigger ones (and every other file) wait for a click. 0 turns it off.
MAX_AUTO_DOWNLOAD_MB = 1000
# Tk's "WIDTHxHEIGHT+X+Y" (a negative position is "+-X"); a few digits each.
GEOMETRY = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})\+(-?[0-9]{1,5})\+(-?[0-9]{1,5})")


@dataclass(frozen=True, slots=True)
class Settings:
    """The last connection, the theme, the font size, the window's geometry
    (Tk's "WIDTHxHEIGHT+X+Y", or empty for the default), whether mentions
    and private messages in the background alert at all, and how big an image
    may be to be downloaded by itself and shown inline (MB; 0: none)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    name: str = ""
    dark: bool = False
    font_size: int = 11
    geometry: str = ""
    notifications: bool = True
    auto_download_mb: int = 10

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
    if parse_geometry(values.get("geometry", "")) is None:
        values.pop("geometry", None)
    if not 0 <= values.get("auto_download_mb", 0) <= MAX_AUTO_DOWNLOAD_MB:
        values.pop("auto_download_mb")
    settings = Settings(**values)
    return settings.with_font_size(settings.font_size)


def parse_geometry(text: str) -> tuple[int, int, int, int] | None:
    """Width, height, x and y of a geometry like "920x640+10+20"; None if it is not one."""
    found = GEOMETRY.fullmatch(text)
    if found is None:
        return None
    width, height, x, y = map(int, found.groups())
    return width, height, x, y


def fit_geometry(
    text: str,
    screen: tuple[int, int],
    smallest: tuple[int, int] = (1, 1),
    chrome: tuple[int, int] = (0, 0),
) -> str | None:
    """``text`` moved and shrunk so that the window, with ``chrome`` pixels more
    around it (menu bar, title bar, borders), lies wholly on a screen of
    ``screen`` pixels (width, height), at least ``smallest``; None if it is no
    geometry. A window saved on a monitor since unplugged, or at a bigger
    resolution, comes back where it can be seen and grabbed."""
    parsed = parse_geometry(text)
    if parsed is None:
        return None
    width, height, x, y = parsed
    room_width = max(1, screen[0] - chrome[0])
    room_height = max(1, screen[1] - chrome[1])
    width = max(min(width, room_width), min(smallest[0], room_width))
    height = max(min(height, room_height), min(smallest[1], room_height))
    x = max(0, min(x, room_width - width))
    y = max(0, min(y, room_height - height))
    return f"{width}x{height}+{x}+{y}"


def write_json(path: Path, data: object, *, prefix: str) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically: a temporary file
    beside it (``mkstemp`` makes it 0600 before a byte is written), flushed
    to the disk, then renamed over it. Raises ``OSError``."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=prefix, dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=1)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
