"""The console's HTML, rendered on the server, every value escaped.

Renderers return text; the handler sends it. The sign-in page and messages run no script (a login page
should work in any browser, including a text one). The signed-in pages are a shell (who is signed in,
the navigation their role may use, the session's CSRF value in a meta tag) and ARK's own scripts from
``/static/`` (ES modules, no framework, nothing from elsewhere), which draw each page from
``/console/api``.
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


# The signed-in pages: path, title, the role they need ("admin"), and their script in /static/
PAGES = (
    ("/", "Overview", "", ""),
    ("/playground", "Playground", "", "playground.js"),
    ("/keys", "My keys", "", "keys.js"),
    ("/admin/models", "Models", "admin", "admin-models.js"),
    ("/admin/users", "Users", "admin", "admin-users.js"),
    ("/admin/keys", "Keys and teams", "admin", "admin-keys.js"),
    ("/admin/usage", "Usage", "admin", "admin-usage.js"),
    ("/admin/services", "Services", "admin", "admin-services.js"),
)


def may_open(user: User, path: str) -> bool:
    """Whether ``user``'s role opens the page at ``path`` (checked on the server; the API checks again)."""
    return any(p == path and (not role or user.role == role) for p, _, role, _ in PAGES)


def shell(user: User, *, csrf: str, path: str, body: str, script: str = "", api_base: str = "") -> str:
    """A signed-in page: the bar (ARK, the pages ``user`` may open, who they are, sign out), then ``body``,
    and ``script`` (a module in /static/). The CSRF value is in ``<meta name=ark-csrf>`` for the scripts, and
    where clients reach the API (``api_base``, for the code a page shows) in ``<meta name=ark-api>``."""
    links = "".join(
        f'<a href="{p}"{" aria-current=page" if p == path else ""}>{escape(title)}</a>'
        for p, title, role, _ in PAGES
        if not role or user.role == role
    )
    title = next((t for p, t, _, _ in PAGES if p == path), "ARK")
    bar = (
        f'<header class=bar><b class=brand>ARK</b><nav aria-label="Console pages">{links}</nav>'
        f'<span class=who title="{escape(user.email)}">{escape(user.display_name)} '
        f"<span class=muted>({escape(user.role)})</span></span>"
        '<form method=post class=inline action="/auth/logout">'
        f'<input type=hidden name=csrf value="{escape(csrf)}"><button type=submit class=quiet>Sign out</button></form>'
        "</header>\n"
    )
    scripts = f'<script type=module src="/static/{escape(script)}"></script>\n' if script else ""
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f'<meta name=ark-csrf content="{escape(csrf)}">'
        f'<meta name=ark-user content="{escape(user.name)}" data-role="{escape(user.role)}">'
        f'<meta name=ark-api content="{escape(api_base)}">'
        f"<title>{escape(title)} - ARK</title>"
        '<link rel=stylesheet href="/static/console.css">'
        f"</head>\n<body>\n{bar}<main id=page>\n<h1>{escape(title)}</h1>\n{body}\n</main>\n"
        "<noscript><p class=error>These pages need JavaScript (ARK's own, from this server).</p></noscript>\n"
        f"{scripts}</body></html>\n"
    )


def app_page(user: User, *, csrf: str, path: str, api_base: str = "") -> str:
    """One of the :data:`PAGES` but the overview: the shell and its script, which draws it."""
    script = next(s for p, _, _, s in PAGES if p == path)
    body = "<div id=app aria-live=polite></div>"
    return shell(user, csrf=csrf, path=path, body=body, script=script, api_base=api_base)


def home(
    user: User, *, csrf: str, domain: str, overview: bool = False, sites: Sequence[tuple[str, str]] = LINKED
) -> str:
    """Who is signed in, links to ``sites`` (subdomain, title: those the user may open), and
    (``overview``) the live overview."""
    if domain:
        items = "".join(
            f'<li><a href="https://{escape(name)}.{escape(domain)}/">{escape(label)}</a></li>\n'
            for name, label in sites  # the sites behind Nginx, docs/security.md
        )
        links = f"<ul class=sites>\n{items}</ul>\n"
    else:
        links = "<p class=muted>No domain is configured ([edge] domain): the sites are not published.</p>\n"
    body = (
        f"<p>Signed in as <strong>{escape(user.display_name)}</strong> "
        f"({escape(user.name)}, {escape(user.role)}).</p>\n{links}"
        + (_OVERVIEW.replace("{charts}", _CHARTS) if overview else "")
    )
    return shell(user, csrf=csrf, path="/", body=body)


def message(title: str, text: str, *, link: str = "/auth/login", link_text: str = "Sign in") -> str:
    """A page that says one thing (an error, "signed out") and where to go next."""
    return _page(
        f"{title} - ARK",
        f'<h1>{escape(title)}</h1>\n<p>{escape(text)}</p>\n<p><a href="{escape(link)}">{escape(link_text)}</a></p>',
    )
