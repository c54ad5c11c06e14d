"""Random fragments of web pages: word lists, sites, URLs, hashes, dates, page chrome.

Owns: the vocabulary the generated noise draws from and the boilerplate templates (navigation
menus, breadcrumbs, cookie banners, login and newsletter prompts, share buttons, comment
boxes, footers, ads), each a function of a seeded ``random.Random``. Used by :mod:`noise`.
"""

from __future__ import annotations

import random
from collections.abc import Callable

_SITE_A = [
    "Math", "Calc", "Quantum", "Daily", "Open", "Smart", "Prime", "Vector", "Study", "Tech",
    "Info", "Learn", "Global", "Net", "Data", "Cloud", "Pixel", "Bright", "Blue", "Metro",
]  # fmt: skip
_SITE_B = [
    "Hub", "Zone", "Portal", "Central", "World", "Base", "Point", "Online", "Forum", "Wiki",
    "Press", "Spot", "Lab", "Nest", "Corner", "Space", "Digest", "Guide", "Depot", "Works",
]  # fmt: skip
_SECTIONS = [
    "Home", "About", "Blog", "News", "Products", "Pricing", "Docs", "Tutorials", "Forum",
    "Contact", "Careers", "Shop", "Events", "Courses", "Resources", "Support", "FAQ", "Topics",
    "Community", "Downloads", "Newsletter", "Archive", "Partners", "Press", "Videos",
]  # fmt: skip
_TOPICS = [
    "Algebra", "Calculus", "Geometry", "Statistics", "Programming", "Physics", "Finance",
    "Travel", "Health", "Sports", "Recipes", "Gadgets", "Gaming", "Music", "Movies", "Science",
    "Education", "Careers", "Marketing", "Design", "Photography", "Fitness", "Gardening",
]  # fmt: skip
_WORDS = [
    "report", "image", "summary", "index", "data", "export", "backup", "log", "photo", "doc",
    "invoice", "draft", "final", "notes", "slides", "archive", "release", "build", "asset",
]  # fmt: skip
_TLDS = ["example.com", "example.org", "example.net", "example", "test"]


def _site(rng: random.Random) -> str:
    return rng.choice(_SITE_A) + rng.choice(_SITE_B)


def _host(rng: random.Random) -> str:
    sub = rng.choice(["www", "cdn", "static", "m", "api", "img", "blog", "shop", "news"])
    return f"{sub}.{rng.choice(_SITE_A).lower()}{rng.choice(_SITE_B).lower()}.{rng.choice(_TLDS)}"


def _slug(rng: random.Random, n: int) -> str:
    words = [w.lower() for w in rng.sample(_TOPICS + _SECTIONS + _WORDS, n)]
    return "-".join(words)


def _url(rng: random.Random) -> str:
    path = "/".join(_slug(rng, rng.randint(1, 3)) for _ in range(rng.randint(1, 3)))
    url = f"https://{_host(rng)}/{path}"
    if rng.random() < 0.5:
        url += f".{rng.choice(['html', 'php', 'aspx', 'htm'])}"
    if rng.random() < 0.6:
        params = [
            f"utm_source={rng.choice(['newsletter', 'twitter', 'feed', 'partner'])}",
            f"id={rng.randint(1, 999999)}",
            f"ref={rng.getrandbits(32):08x}",
            f"page={rng.randint(1, 40)}",
            f"sessionid={rng.getrandbits(64):016x}",
        ]
        url += "?" + "&".join(rng.sample(params, rng.randint(1, 3)))
    return url


def _hex(rng: random.Random, n: int) -> str:
    return f"{rng.getrandbits(4 * n):0{n}x}"


def _date(rng: random.Random) -> str:
    return f"{rng.randint(2003, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


# Boilerplate templates: (where, template). "head" goes before the text, "tail" after it.
def _bp_nav(rng: random.Random) -> str:
    items = rng.sample(_SECTIONS, rng.randint(4, 9))
    sep = rng.choice([" | ", " · ", "  ", " / ", "\n"])
    menu = sep.join(items)
    pre = rng.choice(["", "Skip to main content\n", "Menu\n", "☰ Menu\n", "Toggle navigation\n"])
    post = rng.choice(["", "\nSearch...", "\nSign in | Register", "\nEN | DE | FR | ES"])
    return f"{pre}{_site(rng)}\n{menu}{post}"


def _bp_breadcrumb(rng: random.Random) -> str:
    sep = rng.choice([" › ", " > ", " / ", " » "])
    crumbs = ["Home"] + rng.sample(_TOPICS + _SECTIONS, rng.randint(1, 4))
    return sep.join(crumbs)


def _bp_cookie(rng: random.Random) -> str:
    first = rng.choice(
        [
            "We use cookies to improve your experience on our website.",
            "This website uses cookies to ensure you get the best experience.",
            "We and our partners use cookies to personalise content and ads, to provide social "
            "media features and to analyse our traffic.",
            "Our site uses cookies and similar technologies to remember your preferences.",
            "We value your privacy. We use cookies to enhance your browsing experience, serve "
            "personalised ads or content, and analyse our traffic.",
        ]
    )
    second = rng.choice(
        [
            "By continuing to browse the site you agree to our use of cookies.",
            'By clicking "Accept All", you consent to our use of cookies.',
            "You can change your settings at any time.",
            "Read our Cookie Policy to learn more.",
            "",
        ]
    )
    buttons = rng.choice(
        [
            "[Accept all] [Reject all] [Customise]",
            "Accept | Decline | Cookie settings",
            "OK, got it",
            "[Accept cookies]  [Manage preferences]",
            "Allow all cookies / Use necessary cookies only",
        ]
    )
    return " ".join(p for p in (first, second) if p) + "\n" + buttons


def _bp_login(rng: random.Random) -> str:
    return rng.choice(
        [
            "Sign in to continue reading. Don't have an account? Register for free.",
            "You have reached your limit of {n} free articles this month. Subscribe now for "
            "unlimited access.",
            "Log in\nUsername or email\nPassword\n[ ] Remember me\nForgot your password?",
            "Please log in or register to reply to this topic.",
            "Members only content. Join {site} today and get {n}% off your first year!",
            "Already a subscriber? Log in. New here? Create an account in {n} seconds.",
        ]
    ).format(n=rng.randint(2, 60), site=_site(rng))


def _bp_newsletter(rng: random.Random) -> str:
    return rng.choice(
        [
            "Subscribe to our newsletter\nEnter your email address [Subscribe]\nNo spam, "
            "unsubscribe at any time.",
            "Get the latest {t} updates straight to your inbox! Email: ________ [Sign up]",
            "Join {n},000+ readers. Sign up for the {site} weekly digest.",
        ]
    ).format(t=rng.choice(_TOPICS).lower(), n=rng.randint(2, 500), site=_site(rng))


def _bp_share(rng: random.Random) -> str:
    nets = rng.sample(
        ["Facebook", "Twitter", "LinkedIn", "Reddit", "Email", "WhatsApp", "Pinterest", "Print"],
        rng.randint(3, 6),
    )
    head = rng.choice(["Share this page:", "Share this:", "Share", "Spread the word", "Share on"])
    extra = rng.choice(
        [
            "",
            "\nWas this page helpful? Yes / No",
            f"\n{rng.randint(0, 999)} likes · {rng.randint(0, 300)} comments",
            "\nLike this:\nLike Loading...",
        ]
    )
    return f"{head} " + " ".join(nets) + extra


def _bp_comments(rng: random.Random) -> str:
    return rng.choice(
        [
            "Leave a Reply\nYour email address will not be published. Required fields are "
            "marked *\nComment *\nName *\nEmail *\nWebsite\n[Post Comment]",
            "{n} comments\nSort by: Newest | Oldest | Most liked\nAdd a comment...",
            "Comments are closed.",
            "Related posts:\n"
            + "\n".join(
                f"- {_slug(rng, 3).replace('-', ' ').title()}" for _ in range(rng.randint(2, 5))
            ),
        ]
    ).format(n=rng.randint(0, 250))


def _bp_footer(rng: random.Random) -> str:
    year = rng.randint(2005, 2024)
    site = _site(rng)
    reg = rng.randint(1, 10**7)
    links = " | ".join(
        rng.sample(
            ["Privacy Policy", "Terms of Use", "Sitemap", "Contact Us", "Accessibility",
             "Cookie Policy", "Imprint", "Advertise", "Careers", "RSS"],
            rng.randint(2, 6),
        )
    )  # fmt: skip
    line = rng.choice(
        [
            f"© {year} {site}. All rights reserved.",
            f"Copyright © {year - rng.randint(0, 10)}-{year} {site} Inc. All Rights Reserved.",
            f"(c) {year} {site} Ltd. Registered in England and Wales No. {reg:08d}.",
            f"Copyright {year} {site}, LLC",
        ]
    )
    powered = rng.choice(
        ["", "\nPowered by WordPress", "\nTheme by Themeify", "\nPowered by Discourse", ""]
    )
    return f"{line}\n{links}{powered}"


def _bp_ad(rng: random.Random) -> str:
    return rng.choice(
        [
            "Advertisement",
            "ADVERTISEMENT\nContinue reading below",
            "Sponsored\n{t} deals you won't believe: up to {n}% off today only! [Shop now]",
            "Recommended for you\nPromoted content by {site}",
        ]
    ).format(t=rng.choice(_TOPICS), n=rng.randint(10, 90), site=_site(rng))


_BOILERPLATE: list[tuple[str, Callable[[random.Random], str]]] = [
    ("head", _bp_nav),
    ("head", _bp_breadcrumb),
    ("head", _bp_cookie),
    ("head", _bp_login),
    ("any", _bp_newsletter),
    ("tail", _bp_share),
    ("tail", _bp_comments),
    ("tail", _bp_footer),
    ("any", _bp_ad),
]
