"""Login screen or live desktop? A classifier over one screenshot.

Owns: `classify_desktop()`, which tells a display-manager greeter or lock dialog ("login-screen")
from a logged-in session ("desktop"), a uniform screen ("blank") or a picture it cannot read
("unknown"), from features of the image plus the desktop name and geometry, and returns its
evidence. It decides whether "no authentication" means "full control of a user's session".

Must not: do I/O, decode RFB, or match product or host names: the decision rests on layout,
which holds across greeters, themes and geometries:
  * the screen is segmented into 16x16 cells; cells whose exact content matches the frequent
    cells on the screen border are background (a solid colour or a tiled root pattern);
  * the remaining cells form connected components, i.e. windows, panels and dialogs; tiny ones
    (a pointer drawn into the framebuffer) are ignored;
  * a greeter shows ONE panel, centred horizontally, away from the edges, with no title bar;
  * a desktop shows windows placed anywhere, with title bars (a full-width band at the top of
    a window in a colour of its own), several windows, or panels along a screen edge;
  * a window with no title bar away from the centre (an xterm in the corner of a bare X
    server) is a program running without a window manager: a session, not a greeter.
The desktop name only adds evidence (words like "login"/"greeter"), never decides alone.
`DesktopKind.seen` says in plain words what the screen shows; `KIND_WORDS` holds the label and
meaning every report shows for each kind.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

CELL: Final = 16
MIN_COMPONENT_PX: Final = 48  # smaller bounding boxes are pointers, icons, noise
CENTRE_TOLERANCE: Final = 0.03  # |panel centre - screen centre| / width for "centred"
_NAME_HINTS: Final = re.compile(r"\b(login|logon|greeter|lock(ed)?|sign[ -]?in)\b", re.I)


@dataclass(frozen=True)
class Component:
    """A connected region of non-background cells, in pixels."""

    x0: int
    y0: int
    x1: int  # exclusive
    y1: int
    cells: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def to_dict(self) -> dict[str, int]:
        return {"x": self.x0, "y": self.y0, "width": self.width, "height": self.height}


@dataclass(frozen=True)
class DesktopKind:
    """The verdict: kind is "login-screen" | "desktop" | "blank" | "unknown"; `seen` is what
    the screen shows, in words a person understands."""

    kind: str
    confidence: float = 0.0
    evidence: tuple[str, ...] = ()
    features: dict[str, Any] = field(default_factory=dict)
    seen: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "confidence": round(self.confidence, 2),
            "seen": self.seen,
            "evidence": list(self.evidence),
            "features": dict(self.features),
        }


# Per kind: the label, the severity colour it is shown with, and what it means for whoever
# connects. The HTML report and the web pages show these; `seen` says what was on the screen.
KIND_WORDS: Final[dict[str, tuple[str, str, str]]] = {
    "desktop": ("Live desktop", "critical",
                "Whoever connects sees and controls a running session: its programs, files and "
                "whatever the user can do."),
    "login-screen": ("Login screen", "medium",
                     "A system password is still needed, but the screen and the greeter are "
                     "exposed."),
    "blank": ("Empty screen", "low",
              "An idle X server, or a display that is off or blanked: nothing to read now, but "
              "a program started on it later is open to whoever connects."),
    "unknown": ("Not recognised", "info",
                "Neither a login prompt nor a usual desktop layout: look at the screenshot."),
}


# --------------------------------------------------------------------------------------------
# Image helpers over packed RGB (3 bytes per pixel, row-major)


class _Image:
    def __init__(self, rgb: bytes, width: int, height: int) -> None:
        self.rgb = rgb
        self.width = width
        self.height = height
        self.cols = (width + CELL - 1) // CELL
        self.rows = (height + CELL - 1) // CELL

    def cell_signature(self, cx: int, cy: int) -> bytes:
        w = self.width
        x0, y0 = cx * CELL, cy * CELL
        x1, y1 = min(x0 + CELL, w), min(y0 + CELL, self.height)
        raw = b"".join(self.rgb[(y * w + x0) * 3 : (y * w + x1) * 3] for y in range(y0, y1))
        # A uniform cell is keyed by its colour alone, so the clipped cells of the last row and
        # column match the full ones.
        return raw[:3] if raw == raw[:3] * (len(raw) // 3) else raw

    def colours(self, x0: int, y0: int, x1: int, y1: int, step: int = 2) -> Counter[bytes]:
        """Colour histogram of a rectangle, sampling every `step`-th pixel and row."""
        counts: Counter[bytes] = Counter()
        w = self.width
        for y in range(max(y0, 0), min(y1, self.height), step):
            row = self.rgb[(y * w + x0) * 3 : (y * w + x1) * 3]
            counts.update(row[i : i + 3] for i in range(0, len(row) - 2, 3 * step))
        return counts


def _dominant(counts: Counter[bytes]) -> tuple[bytes | None, float]:
    total = sum(counts.values())
    if not total:
        return None, 0.0
    colour, n = counts.most_common(1)[0]
    return colour, n / total


def _background_mask(img: _Image) -> tuple[list[list[bool]], float, bytes | None]:
    """Per cell: True when foreground; the share of border cells the background explains; the
    background's most common pixel colour."""
    sigs = [[img.cell_signature(cx, cy) for cx in range(img.cols)] for cy in range(img.rows)]
    border = [sigs[0][c] for c in range(img.cols)] + [sigs[-1][c] for c in range(img.cols)]
    border += [sigs[r][0] for r in range(img.rows)] + [sigs[r][-1] for r in range(img.rows)]
    counts = Counter(border)
    # The background is the most common border cell: one signature for a solid colour, and
    # also one for a tiled root pattern whose period divides the cell size. Taking only the
    # mode keeps a panel that reaches the edges (a greeter wider than the screen) foreground.
    mode, covered = counts.most_common(1)[0]
    background = {mode}
    mask = [[sig not in background for sig in row] for row in sigs]
    colour = Counter(mode[i : i + 3] for i in range(0, len(mode) - 2, 3)).most_common(1)[0][0]
    return mask, covered / max(len(border), 1), colour


def _components(mask: list[list[bool]], img: _Image) -> list[Component]:
    rows, cols = len(mask), len(mask[0]) if mask else 0
    seen = [[False] * cols for _ in range(rows)]
    found: list[Component] = []
    for r in range(rows):
        for c in range(cols):
            if not mask[r][c] or seen[r][c]:
                continue
            stack = [(r, c)]
            seen[r][c] = True
            r0 = r1 = r
            c0 = c1 = c
            n = 0
            while stack:
                y, x = stack.pop()
                n += 1
                r0, r1, c0, c1 = min(r0, y), max(r1, y), min(c0, x), max(c1, x)
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= ny < rows and 0 <= nx < cols and mask[ny][nx] and not seen[ny][nx]:
                        seen[ny][nx] = True
                        stack.append((ny, nx))
            found.append(
                Component(
                    c0 * CELL,
                    r0 * CELL,
                    min((c1 + 1) * CELL, img.width),
                    min((r1 + 1) * CELL, img.height),
                    n,
                )
            )
    return found


def _title_bar(img: _Image, comp: Component, background: bytes | None) -> bool:
    """A band of >= 8 rows at the top of a window, each row in one colour the body lacks.

    Window managers draw title bars as flat or vertically graded rows across the whole frame;
    a greeter's panel starts with a thin bevel (a few rows) and then its body colour.
    """
    if comp.height < 80 or comp.width < 80:
        return False
    x0, x1 = comp.x0 + CELL, comp.x1 - CELL  # cells overshoot the real edge; stay inside
    body = img.colours(x0, comp.y0 + comp.height // 3, x1, comp.y1 - CELL, step=3)
    body_colour, _ = _dominant(body)
    body_total = sum(body.values()) or 1
    run = best = 0
    for y in range(comp.y0, min(comp.y0 + 3 * CELL, comp.y1)):
        colour, share = _dominant(img.colours(x0, y, x1, y + 1, step=2))
        foreign = (
            colour is not None
            and share >= 0.5
            and colour != body_colour
            and colour != background
            and body[colour] / body_total < 0.05
        )
        run = run + 1 if foreign else 0
        best = max(best, run)
    return best >= 8


def _docked(comp: Component, width: int, height: int) -> bool:
    """A thin bar along one screen edge: a taskbar, dock or menu bar."""
    horizontal = comp.width >= 0.5 * width and comp.height <= 0.12 * height
    vertical = comp.height >= 0.5 * height and comp.width <= 0.12 * width
    at_top_or_bottom = comp.y0 == 0 or comp.y1 >= height
    at_side = comp.x0 == 0 or comp.x1 >= width
    return (horizontal and at_top_or_bottom) or (vertical and at_side)


def classify_desktop(
    rgb: bytes, width: int, height: int, desktop_name: str | None = None
) -> DesktopKind:
    """Classify a screenshot given as packed RGB (3 bytes per pixel)."""
    if width < CELL * 4 or height < CELL * 4 or len(rgb) < width * height * 3:
        return DesktopKind("unknown", 0.0, ("screenshot too small or incomplete",),
                           seen="a picture too small or incomplete to read")
    img = _Image(rgb, width, height)
    evidence: list[str] = [f"geometry {width}x{height}"]
    name_hint = bool(desktop_name and _NAME_HINTS.search(desktop_name))
    if name_hint:
        evidence.append(f"desktop name {desktop_name!r} mentions a login")
    layout = _segment(img)
    features: dict[str, Any] = {
        "background_share_of_border": round(layout.border_share, 3),
        "foreground_share": round(layout.foreground_share, 3),
        "components": [c.to_dict() for c in layout.components[:8]],
    }
    if layout.border_share < 0.5:
        # No recognisable background (a photo wallpaper, video): layout cannot be read.
        evidence.append("no uniform or tiled background on the screen border")
        kind = "login-screen" if name_hint else "unknown"
        return DesktopKind(kind, 0.3 if name_hint else 0.0, tuple(evidence), features,
                           seen="a picture or moving image fills the screen (no plain "
                                "background to read a layout from)")
    if not layout.components:
        evidence.append("uniform screen: no window, panel or dialog")
        return DesktopKind("blank", 0.6, tuple(evidence), features,
                           seen="nothing but its background: no window, panel or login "
                                "prompt")
    arrangement = _arrange(img, layout)
    features.update(
        {
            "main_centre_offset": round(arrangement.offset, 3),
            "main_area_share": round(arrangement.main.width * arrangement.main.height
                                     / (width * height), 3),
            "title_bars": len(arrangement.titled),
            "docked_bars": len(arrangement.docked),
        }
    )
    weighing = _weigh(arrangement, name_hint)
    evidence.extend(weighing.evidence)
    features["score"] = round(weighing.score, 2)
    return _verdict(weighing.score, tuple(evidence), features, arrangement)


@dataclass(frozen=True)
class _Layout:
    """The screen segmented: how much of its border the background explains, the background's
    colour, the share of foreground cells, and the components large enough to count, biggest
    first."""

    border_share: float
    background: bytes | None
    foreground_share: float
    components: tuple[Component, ...]


def _segment(img: _Image) -> _Layout:
    mask, border_share, background = _background_mask(img)
    fg_cells = sum(sum(row) for row in mask)
    comps = [
        c
        for c in _components(mask, img)
        if c.width >= MIN_COMPONENT_PX and c.height >= MIN_COMPONENT_PX
    ]
    comps.sort(key=lambda c: c.cells, reverse=True)
    return _Layout(border_share, background, fg_cells / (img.rows * img.cols), tuple(comps))


@dataclass(frozen=True)
class _Arrangement:
    """Where the components sit: the biggest (`main`) and its offset from the horizontal
    centre as a share of the width, the bars docked along an edge, the other components
    (windows) and those of them with a title bar."""

    components: tuple[Component, ...]
    offset: float
    docked: tuple[Component, ...]
    windows: tuple[Component, ...]
    titled: tuple[Component, ...]

    @property
    def main(self) -> Component:
        return self.components[0]

    @property
    def bare(self) -> bool:
        """An undecorated window away from the centre, with nothing docked."""
        return not self.titled and not self.docked and self.offset > CENTRE_TOLERANCE


def _arrange(img: _Image, layout: _Layout) -> _Arrangement:
    comps = layout.components
    main = comps[0]
    offset = abs((main.x0 + main.x1) / 2 - img.width / 2) / img.width
    docked = tuple(c for c in comps if _docked(c, img.width, img.height))
    windows = tuple(c for c in comps if c not in docked)
    titled = tuple(c for c in windows if _title_bar(img, c, layout.background))
    return _Arrangement(comps, offset, docked, windows, titled)


@dataclass(frozen=True)
class _Weighing:
    """Points for a login screen and for a desktop, and the evidence for each point given."""

    login: float
    desk: float
    evidence: tuple[str, ...]

    @property
    def score(self) -> float:
        """Above 0.5: a login screen; below -0.5: a desktop; between: unknown."""
        return self.login - self.desk


def _weigh(arrangement: _Arrangement, name_hint: bool) -> _Weighing:
    """Weigh the layout's signs: a centred single panel without a title bar for a login
    screen; off-centre, several, titled, docked or bare windows for a desktop."""
    a = arrangement
    login = 0.0
    desk = 0.0
    evidence: list[str] = []
    if a.offset <= CENTRE_TOLERANCE:
        login += 2.0
        evidence.append(f"main panel centred horizontally (offset {a.offset:.1%} of the width)")
    else:
        desk += 1.5
        evidence.append(f"main window off-centre (offset {a.offset:.1%} of the width)")
    if len(a.components) == 1:
        login += 1.0
        evidence.append("a single panel on the background")
    else:
        desk += 1.0 + 0.25 * min(len(a.components) - 2, 4)
        evidence.append(f"{len(a.components)} separate windows or panels")
    if a.titled:
        desk += 4.0  # window-manager decoration: greeters have none; decisive on its own
        evidence.append(f"{len(a.titled)} window(s) with a title bar")
    elif a.bare:
        # An undecorated window away from the centre: a program on an X server with no
        # window manager (xterm starts in the top-left corner). Greeters centre their panel.
        desk += 2.0
        corner = a.main.x0 == 0 or a.main.y0 == 0
        evidence.append("no title bar on a window away from the centre" + (
            ", at the screen's edge" if corner else "") + ": no window manager")
    else:
        login += 1.0
        evidence.append("no title bar")
    if a.docked:
        desk += 1.0
        evidence.append(f"{len(a.docked)} bar(s) docked along a screen edge")
    if name_hint:
        login += 1.0
    return _Weighing(login, desk, tuple(evidence))


def _verdict(score: float, evidence: tuple[str, ...], features: dict[str, Any],
             arrangement: _Arrangement) -> DesktopKind:
    a = arrangement
    if score > 0.5:
        return DesktopKind("login-screen", min(1.0, score / 4), evidence, features,
                           seen="a single panel centred on the screen, without a title bar: "
                                "a login prompt or lock screen")
    if score < -0.5:
        return DesktopKind("desktop", min(1.0, -score / 4), evidence, features,
                           seen=_desktop_words(len(a.windows), len(a.titled), len(a.docked),
                                               a.bare))
    return DesktopKind("unknown", 0.0, evidence, features,
                       seen=f"{_count(len(a.components), 'window or panel', 'windows or panels')} "
                            "that fit neither a login prompt nor a usual desktop")


def _count(n: int, one: str, many: str) -> str:
    return f"one {one}" if n == 1 else f"{n} {many}"


def _desktop_words(windows: int, titled: int, docked: int, bare: bool) -> str:
    if bare and windows <= 1:
        return ("a program's window with no window manager around it (no title bar, away from "
                "the centre), e.g. a terminal on a bare X server: whoever connects can use it")
    parts = [_count(windows, "window", "windows") if windows else "no window"]
    if titled:
        parts.append(f"{titled} with a title bar" if windows > 1 else "with a title bar")
    text = " ".join(parts[:1]) + (f", {parts[1]}" if len(parts) > 1 else "")
    if docked:
        text += f" and {_count(docked, 'bar', 'bars')} along a screen edge (a taskbar or panel)"
    return text + ": a logged-in desktop"
