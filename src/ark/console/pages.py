"""The console's HTML, rendered on the server: no JavaScript, every value escaped.

Renderers return text; the handler sends it. Kept plain on purpose: a later issue gives the console
its real pages, and a login page should work in any browser, including a text one.
"""

from __future__ import annotations

from html import escape

from ark.auth.users import User

# Sites behind Nginx under the configured domain D (docs/security.md); the console itself is D.
SITES = (
    ("chat", "Chat (Open WebUI)"),
    ("llm", "API (OpenAI-compatible)"),
    ("art", "Images (ComfyUI)"),
    ("grafana", "Dashboards (Grafana)"),
    ("n8n", "Workflows (n8n)"),
    ("prometheus", "Metrics (Prometheus)"),
    ("chromadb", "Vector store (ChromaDB)"),
)

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


def home(user: User, *, csrf: str, domain: str) -> str:
    """Who is signed in, links to the sites, and the sign-out button."""
    if domain:
        items = "".join(
            f'<li><a href="https://{escape(name)}.{escape(domain)}/">{escape(label)}</a></li>\n'
            for name, label in SITES
        )
        sites = f"<ul>\n{items}</ul>\n"
    else:
        sites = "<p class=muted>No domain is configured ([edge] domain): the sites are not published.</p>\n"
    return _page(
        "ARK",
        "<h1>ARK</h1>\n"
        f"<p>Signed in as <strong>{escape(user.display_name)}</strong> "
        f"({escape(user.name)}, {escape(user.role)}).</p>\n"
        f"{sites}"
        '<form method=post action="/auth/logout">'
        f'<input type=hidden name=csrf value="{escape(csrf)}"><button type=submit>Sign out</button></form>',
    )


def message(title: str, text: str, *, link: str = "/auth/login", link_text: str = "Sign in") -> str:
    """A page that says one thing (an error, "signed out") and where to go next."""
    return _page(
        f"{title} - ARK",
        f'<h1>{escape(title)}</h1>\n<p>{escape(text)}</p>\n<p><a href="{escape(link)}">{escape(link_text)}</a></p>',
    )
