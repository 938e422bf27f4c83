"""Built-in ACME (edgegw-only): certificates obtained and renewed by HTTP-01 or DNS-01, the
Caddy way.

For each name of a listener's ``edgegw.acme`` settings (under DNS-01, ``*.NAME`` with
``NAME``: one certificate for both), the certificate in the certificate directory is looked
at every ``renew_interval``. One that is missing, or past two thirds of its life, is ordered
from the ACME server (the ``acme`` library, certbot's own). The HTTP-01 answer goes into the
webroot, which the port-80 listener serves; the DNS-01 one into the zone (``dns01``). The new
chain and key are written into the directory as one ``NAME.pem`` (``wildcard.NAME.pem``),
renamed into place, so the directory watch serves it like any renewal. Until then the old
certificate keeps serving.

A failure is logged and tried again later, backing off from a minute to the renew interval.
A certificate this client did not write (``NAME.crt`` + ``NAME.key``, certbot's folders) is
never replaced: when it is due, the log says so. Under ``--concurrency N`` one worker renews
and every worker serves what it writes.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .. import log
from ..config import model as m
from ..stats import Counter, Gauge, StatSet, Store
from .cert_dir import on_disk

if TYPE_CHECKING:
    from .dns01 import Challenges

_log = log.get("secret")

FIRST_RETRY = 60.0
ACCOUNT_DIR = ".acme"
"""Inside the certificate directory (a dot folder, which the directory watch skips)."""


ACME_CHALLENGE = b"/.well-known/acme-challenge/"
_TOKEN = re.compile(rb"[A-Za-z0-9_-]{1,255}")


def challenge_answer(webroot: str, path: bytes) -> bytes | None:
    """The key authorization an ACME client (certbot --webroot, acme.sh --webroot, edgegw's
    own) left for this HTTP-01 token in ``webroot``; None when there is none. Only a plain
    token is looked up: no other file of the directory can be reached."""
    if not path.startswith(ACME_CHALLENGE):
        return None
    token = path[len(ACME_CHALLENGE):].split(b"?", 1)[0]
    if not _TOKEN.fullmatch(token):
        return None
    try:
        with open(os.path.join(webroot, ".well-known", "acme-challenge", token.decode()),
                  "rb") as f:
            return f.read(4096)
    except OSError:
        return None


class AcmeStats(StatSet):
    """``edgegw.acme.*``: ``days_left``, the fewest days any certificate it keeps has left
    (what an alert watches: renewals that keep failing bring it down)."""

    issued: Counter
    failed: Counter
    checks: Counter
    days_left: Gauge


@dataclass
class NameState:
    """What the client knows of one certificate (its names), for /certs, /status and the
    log."""

    names: list[str]
    not_after: float = 0.0
    renew_at: float = 0.0
    ours: bool = False
    next_try: float = 0.0
    failures: int = 0
    last_error: str = ""
    failed_at: float = 0.0
    serial: int = 0
    """The certificate on disk now (its ARI answer is kept while it stays)."""
    ari_at: float = 0.0
    """When the CA's renewal info says to renew it (0: no answer, two thirds of its life)."""
    ari_next: float = 0.0
    """When to ask the CA again."""

    def doc(self) -> dict[str, Any]:
        def stamp(t: float) -> str:
            return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(
                timespec="seconds") if t else ""

        return {"name": self.name, "names": self.names, "expires": stamp(self.not_after),
                "renews_at": stamp(self.renew_at),
                "renewal_from": "ari" if self.ari_at else "lifetime",
                "managed": self.ours, "failures": self.failures,
                "last_error": self.last_error, "last_error_at": stamp(self.failed_at),
                "next_attempt": stamp(self.next_try)}

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def file(self) -> str:
        """The file name it is written as (``*`` is no name for a file)."""
        return self.name.replace("*.", "wildcard.", 1)


def certificates_of(names: list[str], dns: bool) -> list[list[str]]:
    """The certificates ``names`` are ordered in: one each, but under DNS-01 ``*.NAME`` and
    ``NAME`` go together (one order, one TXT name, one file)."""
    if not dns:
        return [[n] for n in names if not n.startswith("*.")]
    wild = {n[2:] for n in names if n.startswith("*.")}
    return [[n, n[2:]] if n.startswith("*.") and n[2:] in names else [n]
            for n in names if n not in wild or f"*.{n}" not in names]


def _current(directory: str, wanted: list[str]) -> tuple[x509.Certificate, str, str] | None:
    """The certificate on disk that names all of ``wanted`` and lives longest."""
    best = None
    for chain, key, leaf, names in on_disk(directory):
        if {w.lower() for w in wanted} <= {n.lower() for n in names} and (
                best is None or leaf.not_valid_after_utc > best[0].not_valid_after_utc):
            best = (leaf, chain, key)
    return best


class AcmeClient:
    """One listener's ACME settings at work: a task that looks, orders and writes."""

    def __init__(self, cfg: m.Acme, store: Store) -> None:
        self.cfg = cfg
        self.stats = AcmeStats(store, "edgegw.acme.")
        self.states = {group[0]: NameState(group)
                       for group in certificates_of(cfg.names, cfg.dns is not None)}
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            self.stats.checks.value += 1
            for st in self.states.values():
                self._look(st)
                if st.ours and st.not_after and time.time() >= st.ari_next:
                    await self._ask_ari(st)
                if self._due(st) and time.time() >= st.next_try:
                    await self._renew(st)
            kept = [st.not_after for st in self.states.values() if st.not_after]
            self.stats.days_left.value = int((min(kept) - time.time()) // 86400) if kept else 0
            await asyncio.sleep(self._sleep())

    async def _ask_ari(self, st: NameState) -> None:
        """Asks the CA when to renew (RFC 9773), if it says; its answer holds until
        ``Retry-After``."""
        found = _current(self.cfg.certificates, st.names)
        if found is None:
            return
        with open(found[1], "rb") as f:
            pem = f.read()
        try:
            at, again = await asyncio.to_thread(self._renewal_time, pem)
        except Exception as e:  # noqa: BLE001 (no answer: two thirds of its life, as without)
            st.ari_next = time.time() + FIRST_RETRY
            _log.info("acme: no renewal info for %s this time: %s", st.name, e)
            return
        st.ari_next = again
        if at is not None:
            st.ari_at = min(at, st.not_after)
            st.renew_at = st.ari_at

    def _sleep(self) -> float:
        now = time.time()
        soonest = now + self.cfg.renew_interval
        for st in self.states.values():
            if st.failures and st.next_try < soonest:
                soonest = st.next_try
        return max(1.0, soonest - now)

    def _look(self, st: NameState) -> None:
        found = _current(self.cfg.certificates, st.names)
        if found is None:
            st.not_after = st.renew_at = 0.0
            st.ours = True
            return
        cert, chain, key = found
        if cert.serial_number != st.serial:  # (a new one: ask the CA about it anew)
            st.serial, st.ari_at, st.ari_next = cert.serial_number, 0.0, 0.0
        start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
        st.not_after = end
        st.renew_at = st.ari_at or start + (end - start) * 2 / 3
        st.ours = chain == key and self._wrote(st.file, chain)

    def _record(self, file: str) -> str:
        return os.path.join(self.cfg.certificates, ACCOUNT_DIR, f"{file}.sha256")

    def _wrote(self, file: str, path: str) -> bool:
        """Whether ``path`` is the file this client last wrote as ``file`` (its digest is
        kept beside the account key): only those are ever replaced."""
        try:
            with open(path, "rb") as f, open(self._record(file)) as r:
                return hashlib.sha256(f.read()).hexdigest() == r.read().strip()
        except OSError:
            return False

    def _due(self, st: NameState) -> bool:
        if st.not_after and time.time() < st.renew_at:
            return False
        if not st.ours:
            if not st.last_error:
                st.last_error = "due for renewal, but not written by edgegw's ACME client"
                _log.warning("acme: the certificate for %s in %s is due for renewal, but it was "
                             "not written by edgegw: renew it yourself, or remove it and edgegw "
                             "will obtain one", st.name, self.cfg.certificates)
            return False
        return True

    async def _renew(self, st: NameState) -> None:
        _log.info("acme: ordering a certificate for %s from %s", ", ".join(st.names),
                  self.cfg.directory)
        found = _current(self.cfg.certificates, st.names) if st.ours else None
        try:
            pem = await asyncio.to_thread(self._order, st.names, found[1] if found else None)
            self._write(st.file, pem)
        except Exception as e:  # noqa: BLE001 (any failure of the exchange is one outcome)
            st.failures += 1
            st.last_error = f"{type(e).__name__}: {e}"[:500]
            st.failed_at = time.time()
            delay = min(FIRST_RETRY * 2 ** (st.failures - 1), self.cfg.renew_interval)
            st.next_try = time.time() + delay
            self.stats.failed.value += 1
            kept = " (the current certificate keeps serving)" if st.not_after else ""
            _log.error("acme: no certificate for %s this time%s: %s; trying again in %.0f s",
                       st.name, kept, st.last_error, delay)
            return
        st.failures, st.last_error, st.next_try, st.failed_at = 0, "", 0.0, 0.0
        self.stats.issued.value += 1
        self._look(st)
        _log.info("acme: new certificate for %s written to %s (renews after %s)", st.name,
                  self.cfg.certificates, st.doc()["renews_at"])

    # --- the exchange (in a thread: the acme library is synchronous) -------------------------

    def _account(self) -> Any:
        # Imported here: the acme library (and requests under it) costs every start that has
        # no ACME settings a noticeable time.
        import josepy as jose
        from acme import client, errors, messages

        from .acme_orders import registration

        if self._client is not None:
            return self._client
        key_path = os.path.join(self.cfg.certificates, ACCOUNT_DIR, "account.key")
        if os.path.exists(key_path):
            with open(key_path, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), None)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            os.makedirs(os.path.dirname(key_path), mode=0o700, exist_ok=True)
            _write_atomic(key_path, key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        jwk = jose.JWKEC(key=key)
        net = client.ClientNetwork(jwk, alg=jose.ES256, user_agent="edgegw")
        if self.cfg.ca:
            net.verify_ssl = self.cfg.ca  # type: ignore[assignment]  # requests takes a path
        directory = client.ClientV2.get_directory(self.cfg.directory, net)
        acme = client.ClientV2(directory, net)
        eab = None
        if self.cfg.eab is not None:
            with open(self.cfg.eab.hmac_key_file) as f:
                eab = (self.cfg.eab.kid, f.read().strip())
        try:
            net.account = acme.new_account(registration(acme, jwk, self.cfg.email, eab))
        except errors.ConflictError as e:  # this key has an account already
            net.account = messages.RegistrationResource(uri=e.location,
                                                        body=messages.Registration())
        self._client = acme
        return acme

    def _renewal_time(self, pem: bytes) -> tuple[float | None, float]:
        """The CA's renewal info for a certificate: when to renew (None: the CA has no ARI)
        and when to ask again."""
        at, again = self._account().renewal_time(pem)
        return (at.timestamp() if at is not None else None), again.timestamp()

    def _order(self, names: list[str], replacing: str | None = None) -> bytes:
        """A certificate for ``names``: its chain and key, PEM. ``replacing``: the file of
        the certificate it renews (named to the CA, which may then renew it early)."""
        from acme import crypto_util, messages

        from .acme_orders import ari_id, new_order

        acme = self._account()
        replaces = None
        if replacing is not None:
            with open(replacing, "rb") as f:
                replaces = ari_id(x509.load_pem_x509_certificate(f.read()))
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        order = new_order(acme, crypto_util.make_csr(key_pem, names), self.cfg.profile,
                          replaces)
        pending = [a for a in order.authorizations  # (a valid one: reused, nothing to prove)
                   if a.body.status != messages.STATUS_VALID]
        if self.cfg.dns is not None:
            from .dns01 import Challenges  # (dnspython: only when DNS-01 is used)

            with Challenges(self.cfg.dns, os.path.join(self.cfg.certificates,
                                                       ACCOUNT_DIR)) as records:
                answers = [self._dns01(acme, authz, records) for authz in pending]
                records.wait()
                done = self._finish(acme, order, answers)
            return done.fullchain_pem.encode() + key_pem
        written: list[str] = []
        try:
            answers = [self._http01(acme, authz, written) for authz in pending]
            done = self._finish(acme, order, answers)
        finally:
            for path in written:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        return done.fullchain_pem.encode() + key_pem

    @staticmethod
    def _challenge(authz: Any, kind: type, what: str) -> Any:
        chall = next((c for c in authz.body.challenges if isinstance(c.chall, kind)), None)
        if chall is None:
            raise RuntimeError(f"the ACME server offers no {what} challenge for "
                               f"{authz.body.identifier.value}")
        return chall

    def _http01(self, acme: Any, authz: Any, written: list[str]) -> tuple[Any, Any]:
        """Writes the HTTP-01 answer where the port-80 listener serves it."""
        from acme import challenges

        chall = self._challenge(authz, challenges.HTTP01, "HTTP-01")
        response, validation = chall.response_and_validation(acme.net.key)
        path = os.path.join(self.cfg.webroot, ".well-known", "acme-challenge",
                            chall.chall.encode("token"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_atomic(path, validation.encode(), mode=0o644)
        written.append(path)
        return chall, response

    def _dns01(self, acme: Any, authz: Any, records: Challenges) -> tuple[Any, Any]:
        """Presents the DNS-01 TXT record of one authorization (the wildcard's too: its
        identifier is the name under the ``*``)."""
        from acme import challenges

        chall = self._challenge(authz, challenges.DNS01, "DNS-01")
        response, validation = chall.response_and_validation(acme.net.key)
        records.add(authz.body.identifier.value, validation)
        return chall, response

    @staticmethod
    def _finish(acme: Any, order: Any, answers: list[tuple[Any, Any]]) -> Any:
        """Tells the CA to look, and waits for the certificate."""
        for chall, response in answers:
            acme.answer_challenge(chall, response)
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=90)
        return acme.poll_and_finalize(order, deadline=deadline)

    def _write(self, file: str, pem: bytes) -> None:
        path = os.path.join(self.cfg.certificates, f"{file}.pem")
        if os.path.exists(path) and not self._wrote(file, path):
            raise RuntimeError(f"{path} appeared meanwhile and was not written by edgegw; "
                               "it is left as it is")
        os.makedirs(os.path.dirname(self._record(file)), mode=0o700, exist_ok=True)
        _write_atomic(self._record(file), hashlib.sha256(pem).hexdigest().encode())
        _write_atomic(path, pem)

    def status(self) -> list[dict[str, Any]]:
        return [st.doc() for st in self.states.values()]


def _write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Written beside, then renamed over: a reader sees the old file or the new, whole."""
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def clients_for(listeners: list[m.Listener], store: Store) -> list[AcmeClient]:
    return [AcmeClient(lst.acme, store) for lst in listeners if lst.acme is not None]
