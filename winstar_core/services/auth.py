"""Who is asking, on the cloud's console and REST API: users' passwords, API tokens, one-time
sign-in links, and the slow-down of repeated failed sign-ins.

- A password is kept only as ``scrypt$N$R$P$SALT$HASH`` (hex; the parameters travel with it, so
  they can grow without a migration). Checking one always costs one scrypt: an unknown email, a
  user without a password and a wrong password hash against a stand-in and get the same answer.
- An API token is 256 random bits shown once; the cloud keeps its SHA-256 (a token is not a
  password: it cannot be guessed, so a fast hash that can be looked up is right), revocable.
- A one-time sign-in link (``winstar demo --console``) is a token of the same kind, deleted when
  used, expired after :data:`LINK_LIFETIME_MS`.
- Failed sign-ins are counted per email (:class:`SignInThrottle`, a hash of the email, whether a
  user has it or not, so the throttle says nothing about who exists). After
  :data:`FREE_FAILURES` within :data:`FAILURE_WINDOW_MS`, each further attempt must wait twice as
  long as the previous one (at most :data:`MAX_WAIT_S`) and is refused with the wait before the
  password is even looked at. Every console process shares the count (it is in the database).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from winstar_core.entity_types import text_problem
from winstar_core.errors import NotFound, WinstarError
from winstar_core.services.common import get_config, set_config
from winstar_core.services.ids import parse_uuid
from winstar_core.store.models import ApiToken, SignInLink, SignInThrottle, User, now_ms
from winstar_core.store.outbox import _insert_missing

#: scrypt's cost for passwords: 32 MiB and about 0.1 s a check (an edge's secret, which is random,
#: uses 2**14; a password chosen by a person deserves more)
PASSWORD_SCRYPT = {"n": 2**15, "r": 8, "p": 1}
MIN_PASSWORD = 8
#: longer passwords are refused before hashing: scrypt of a megabyte is a cheap denial of service
MAX_PASSWORD = 1024
#: a token as issued: a prefix that makes a leaked one recognisable, then 43 URL-safe characters
TOKEN_PREFIX = "wst_"
MAX_TOKEN = 200
FREE_FAILURES = 5
FAILURE_WINDOW_MS = 15 * 60 * 1000
MAX_WAIT_S = 60
LINK_LIFETIME_MS = 60 * 60 * 1000
#: one new throttle row in this many deletes the rows whose window is over (emails sprayed at the
#: sign-in form leave one row each: each cost its sender a password check)
PRUNE_EVERY = 100
#: how stale ``api_token.last_used`` may get before a request writes it again (reads stay reads)
LAST_USED_EVERY_MS = 5 * 60 * 1000
SECRET_KEY = "console_secret_key"

#: hashed when there is no stored password, so that every refusal costs the same work
_STAND_IN = "scrypt${n}${r}${p}${salt}${hash}".format(**PASSWORD_SCRYPT, salt="00" * 16, hash="00" * 64)


class TooManyFailures(WinstarError):
    """Sign-ins for this email are slowed down: try again in ``wait`` seconds."""

    def __init__(self, wait: int) -> None:
        super().__init__(f"too many failed sign-ins for this email: try again in {wait} s")
        self.wait = wait


# -- passwords --------------------------------------------------------------------------------------
def hash_password(password: str, salt: bytes | None = None) -> str:
    """``password`` as the cloud keeps it (``scrypt$N$R$P$SALT$HASH``)."""
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = _scrypt(password, salt, **PASSWORD_SCRYPT)
    n, r, p = PASSWORD_SCRYPT["n"], PASSWORD_SCRYPT["r"], PASSWORD_SCRYPT["p"]
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p, dklen=64, maxmem=256 * 2**20
    )


def check_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored``; one scrypt and a constant-time comparison whether
    or not there is a stored hash (None, or a malformed one, matches nothing)."""
    usable = password if isinstance(password, str) and len(password) <= MAX_PASSWORD else ""
    try:
        scheme, n, r, p, salt, digest = (stored or _STAND_IN).split("$")
        params = (int(n), int(r), int(p))
        salt_b, digest_b = bytes.fromhex(salt), bytes.fromhex(digest)
        if scheme != "scrypt":
            raise ValueError(scheme)
    except ValueError:
        stored = None
        scheme, n, r, p, salt, digest = _STAND_IN.split("$")
        params, salt_b, digest_b = (int(n), int(r), int(p)), bytes.fromhex(salt), bytes.fromhex(digest)
    match = hmac.compare_digest(_scrypt(usable, salt_b, *params), digest_b)
    return match and stored is not None and usable == password


def check_new_password(password: str) -> str:
    """``password`` if it may be set; a one-line :class:`WinstarError` saying why not."""
    if len(password) < MIN_PASSWORD:
        raise WinstarError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise WinstarError(f"a password may have at most {MAX_PASSWORD} characters")
    if "\x00" in password:
        raise WinstarError("a password may not contain a NUL character")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise WinstarError("a password must be valid Unicode text") from None
    return password


def find_user(session: Session, ref: str) -> User:
    """The cloud user with email (or id) ``ref``; :class:`NotFound` if none."""
    uid = parse_uuid(ref)
    user = session.scalars(
        sa.select(User).where(User.id == uid if uid else User.email == ref.strip())
    ).first()
    if user is None:
        raise NotFound(f"no user {ref!r}")
    return user


def set_password(session: Session, user: User, password: str) -> None:
    """Give ``user`` the password (checked by :func:`check_new_password`); their browser sessions
    signed in with the old one end (the session cookie names the password it was made with)."""
    user.password = hash_password(check_new_password(password))
    user.updated_time = now_ms()
    session.flush()


def password_mark(password_hash: str | None) -> str:
    """A short fingerprint of a user's password hash: a session cookie carries it, so that a new
    password ends the sessions of the old one."""
    return hashlib.sha256((password_hash or "").encode()).hexdigest()[:16]


def end_sessions(session: Session, user_id: uuid.UUID) -> None:
    """Sign out every browser session of ``user_id`` (Sign out): a session cookie names the
    generation it was made in (``app_user.session_generation``), so a copy of one kept somewhere
    opens nothing from now on, in every console process."""
    session.execute(
        sa.update(User)
        .where(User.id == user_id)
        .values(session_generation=User.session_generation + 1)
        .execution_options(synchronize_session=False)
    )


# -- the throttle ----------------------------------------------------------------------------------
def _throttle_key(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode("utf-8", "surrogatepass")).hexdigest()


def _wait_for(row: SignInThrottle | None, now: int) -> int:
    """Seconds the next attempt must still wait (0: it may go on)."""
    if row is None or now - row.last_failure > FAILURE_WINDOW_MS or row.failures < FREE_FAILURES:
        return 0
    delay_ms = min(2 ** (row.failures - FREE_FAILURES), MAX_WAIT_S) * 1000
    left = row.last_failure + delay_ms - now
    return max(0, -(-left // 1000))


def sign_in(session: Session, email: str, password: str) -> User:
    """The user whose email and password these are. A wrong password, an unknown email and a user
    without a password all raise the same :class:`WinstarError` after the same work; while
    failures for the email are slowed down, :class:`TooManyFailures` before any check."""
    email = email.strip() if isinstance(email, str) else ""
    key = _throttle_key(email)
    lock = session.get_bind().dialect.name == "postgresql"
    row = session.get(SignInThrottle, key, with_for_update=lock)
    if row is None:
        # made (and locked) before the password is looked at: parallel attempts for one email queue
        # on it and each is counted, instead of all finding no row and one of them counted
        if secrets.randbelow(PRUNE_EVERY) == 0:  # now and then, the counts past their window go
            session.execute(
                sa.delete(SignInThrottle).where(SignInThrottle.last_failure < now_ms() - FAILURE_WINDOW_MS)
            )
        _insert_missing(session, SignInThrottle, key=key, failures=0, last_failure=0)
        row = session.get(SignInThrottle, key, with_for_update=lock, populate_existing=True)
    now = now_ms()  # once the lock is held: after the attempts queued before this one
    wait = _wait_for(row, now)
    if wait:
        raise TooManyFailures(wait)
    # a text the database cannot even compare (NUL, a lone surrogate) names nobody: the same answer
    usable = bool(email) and text_problem(email) is None
    user = session.scalars(sa.select(User).where(User.email == email)).first() if usable else None
    if check_password(user.password if user is not None else None, password) and user is not None:
        if row is not None:
            session.delete(row)
        session.flush()
        return user
    if row is None or now - row.last_failure > FAILURE_WINDOW_MS:
        if row is None:
            row = SignInThrottle(key=key, failures=0, last_failure=now)
            session.add(row)
        row.failures = 0
    row.failures += 1
    row.last_failure = now
    session.flush()
    raise WinstarError("wrong email or password")


# -- tokens ----------------------------------------------------------------------------------------
def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def new_token() -> str:
    """A fresh token (sign-in links and API tokens alike)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class IssuedToken:
    id: uuid.UUID
    name: str
    token: str


def create_token(session: Session, user: User, name: str | None = None) -> IssuedToken:
    """A new API token for ``user``; the token itself is returned this once."""
    from winstar_core.services.names import clean_name

    name = clean_name(name, "a token") if name else f"token {now_ms()}"
    token = new_token()
    row = ApiToken(user_id=user.id, name=name, token_hash=_token_hash(token), created_time=now_ms())
    session.add(row)
    session.flush()
    return IssuedToken(row.id, row.name, token)


def revoke_token(session: Session, ref: str, user: User | None = None) -> ApiToken:
    """Revoke the token with id ``ref`` (of ``user`` if given); revoking twice is harmless."""
    uid = parse_uuid(ref)
    row = session.get(ApiToken, uid) if uid else None
    if row is None or (user is not None and row.user_id != user.id):
        raise NotFound(f"no token {ref!r}")
    if row.revoked_time is None:
        row.revoked_time = now_ms()
        session.flush()
    return row


def user_tokens(session: Session, user: User) -> list[ApiToken]:
    """``user``'s tokens, oldest first (revoked ones too)."""
    return list(
        session.scalars(
            sa.select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.created_time)
        )
    )


def token_user(session: Session, token: str) -> User | None:
    """The user of a live token, None for anything else (malformed, unknown, revoked)."""
    if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN:
        return None
    row = session.scalars(sa.select(ApiToken).where(ApiToken.token_hash == _token_hash(token))).first()
    if row is None or row.revoked_time is not None:
        return None
    now = now_ms()
    if row.last_used is None or now - row.last_used > LAST_USED_EVERY_MS:
        session.execute(sa.update(ApiToken).where(ApiToken.id == row.id).values(last_used=now))
    return session.get(User, row.user_id)


# -- one-time sign-in links ------------------------------------------------------------------------
def create_sign_in_link(session: Session, user: User, lifetime_ms: int = LINK_LIFETIME_MS) -> str:
    """A token that signs ``user`` in once, within ``lifetime_ms``."""
    token = new_token()
    session.add(
        SignInLink(token_hash=_token_hash(token), user_id=user.id, expires_time=now_ms() + lifetime_ms)
    )
    session.flush()
    return token


def use_sign_in_link(session: Session, token: str) -> User | None:
    """The user a live link names, the link spent; None if it is unknown, used or expired."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN:
        return None
    result = session.execute(
        sa.delete(SignInLink)
        .where(SignInLink.token_hash == _token_hash(token))
        .returning(SignInLink.user_id, SignInLink.expires_time)
    ).first()
    session.execute(sa.delete(SignInLink).where(SignInLink.expires_time < now_ms()))
    if result is None or result.expires_time < now_ms():
        return None
    return session.get(User, result.user_id)


# -- the console's signing key ---------------------------------------------------------------------
def console_secret(session: Session) -> str:
    """The key that signs the console's session cookies, the same for every console process of
    the cloud (kept in ``node_config``, made by the first)."""
    value = get_config(session, SECRET_KEY)
    if not value:
        value = secrets.token_urlsafe(48)
        set_config(session, SECRET_KEY, value)
    return str(value)
