"""The console's HTML, rendered on the server: no JavaScript, every value escaped.

Renderers return text; the handler sends it. Kept plain on purpose: a later issue gives the console
its real pages, and a login page should work in any browser, including a text one.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from ark.auth.users import User
from ark.edge.sites import LINKED

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem;color:#222}"
    "label{display:block;margin:.8rem 0 .2rem}input{width:100%;padding:.4rem;box-sizing:border-box}"
    "button{margin-top:1rem;padding:.5rem 1.2rem}.error{color:#a00;font-weight:600}.muted{color:#666}"
)


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def login(*, csrf: str, rd: str, username: str = "", error: str = "") -> str:
    """The sign-in form. ``error`` is shown above it; ``username`` is kept, the password never is."""
    message = f"<p class=error role=alert>{escape(error)}</p>\n" if error else ""
    return _page(
        "Sign in - ARK",
        "<h1>Sign in to ARK</h1>\n"
        f"{message}"
        '<form method=post action="/auth/login">\n'
        f'<input type=hidden name=csrf value="{escape(csrf)}">\n'
        f'<input type=hidden name=rd value="{escape(rd)}">\n'
        "<label for=username>User name</label>"
        f'<input id=username name=username autocomplete=username required value="{escape(username)}">\n'
        "<label for=password>Password</label>"
        "<input id=password name=password type=password autocomplete=current-password required>\n"
        "<label for=totp>Code from your authenticator app <span class=muted>(if you set one up)</span></label>"
        "<input id=totp name=totp inputmode=numeric autocomplete=one-time-code maxlength=10>\n"
        "<button type=submit>Sign in</button>\n</form>",
    )


_OVERVIEW = """<section id=overview aria-live=polite>
<h2>Now</h2>
<div id=health class=row></div>
<h3>GPU memory <span id=gpu-device class=muted></span></h3>
<div id=gpu-bar class=bar></div><div id=gpu-legend class=legend></div>
<div class=row>
<div class=tile><span class=muted>temperature</span><b id=gpu-temperature>-</b></div>
<div class=tile><span class=muted>power</span><b id=gpu-power>-</b></div>
<div class=tile><span class=muted>GPU busy</span><b id=gpu-busy>-</b></div>
<div class=tile><span class=muted>in flight</span><b id=inflight>-</b></div>
<div class=tile><span class=muted>spend today</span><b id=spend>-</b></div>
<div class=tile><span class=muted>requests</span><b id=requests-total>-</b></div>
</div>
{charts}<p class=muted>The last hour, from ARK's own samples; updated every few seconds. <span id=updated></span></p>
</section>
<script src="/static/overview.js" defer></script>
"""

_CHART = (
    "<h3>{title}</h3><div id=chart-{id}-label class=muted>no data yet</div>"
    '<svg id=chart-{id} class=chart viewBox="0 0 600 120" preserveAspectRatio=none role=img></svg>\n'
)
_CHARTS = "".join(
    _CHART.format(title=title, id=chart)
    for title, chart in (
        ("Requests per second", "requests"),
        ("Tokens per second", "tokens"),
        ("Latency, 95th percentile", "p95"),
    )
)

_OVERVIEW_STYLE = (
    "<style>body{max-width:52rem}.row{display:flex;flex-wrap:wrap;gap:.6rem;margin:.6rem 0}"
    ".tile{border:1px solid #ddd;border-radius:6px;padding:.4rem .7rem;min-width:7rem}"
    ".tile b{display:block;font-size:1.3rem}.bar{display:flex;height:1.6rem;border-radius:4px;overflow:hidden;"
    "background:#eee}.bar span{display:block;height:100%}.legend span{margin-right:1rem;font-size:.9rem}"
    ".chart{width:100%;height:7.5rem;background:#fafafa;border:1px solid #eee}"
    ".ok{color:#070}.bad{color:#a00}.dim{color:#888}</style>"
)


def home(
    user: User, *, csrf: str, domain: str, overview: bool = False, sites: Sequence[tuple[str, str]] = LINKED
) -> str:
    """Who is signed in, links to ``sites`` (subdomain, title: those the user may open), the sign-out
    button, and (``overview``) the live overview."""
    if domain:
        items = "".join(
            f'<li><a href="https://{escape(name)}.{escape(domain)}/">{escape(label)}</a></li>\n'
            for name, label in sites  # the sites behind Nginx, docs/security.md
        )
        links = f"<ul>\n{items}</ul>\n"
    else:
        links = "<p class=muted>No domain is configured ([edge] domain): the sites are not published.</p>\n"
    return _page(
        "ARK",
        "<h1>ARK</h1>\n"
        f"<p>Signed in as <strong>{escape(user.display_name)}</strong> "
        f"({escape(user.name)}, {escape(user.role)}).</p>\n"
        f"{links}"
        '<form method=post action="/auth/logout">'
        f'<input type=hidden name=csrf value="{escape(csrf)}"><button type=submit>Sign out</button></form>'
        + (_OVERVIEW_STYLE + _OVERVIEW.replace("{charts}", _CHARTS) if overview else ""),
    )


def message(title: str, text: str, *, link: str = "/auth/login", link_text: str = "Sign in") -> str:
    """A page that says one thing (an error, "signed out") and where to go next."""
    return _page(
        f"{title} - ARK",
        f'<h1>{escape(title)}</h1>\n<p>{escape(text)}</p>\n<p><a href="{escape(link)}">{escape(link_text)}</a></p>',
    )
