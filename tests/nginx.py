"""The repo's nginx site (deploy/nginx/mnist-serve.conf) run for real on loopback ports, for tests.

Its upstream's two servers point at the ports given, its TLS certificate is a self-signed one, and
the rest of the site is as committed.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import requests

from harness.procs import free_port, signal_group
from tests.conftest import ROOT, wait_until

SITE = ROOT / "deploy/nginx/mnist-serve.conf"


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, standing in for certbot's."""
    cert, key = folder / "fullchain.pem", folder / "privkey.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def substitute(text: str, old: str, new: str, count: int) -> str:
    assert text.count(old) == count, f"expected {count} x {old!r} in {SITE.name}"
    return text.replace(old, new)


def nginx_config(folder: Path, upstream_port: int, http_port: int, https_port: int, cert: Path, key: Path,
                 second_port: int | None = None, backup: bool = True) -> Path:
    """The repo's site on loopback ports with a test certificate, inside a minimal nginx.conf.

    The upstream's first server is `upstream_port`, its second `second_port` (a port nothing listens on
    when None), as the site's backup or, with `backup=False`, as its equal.
    """
    site = SITE.read_text()
    site = substitute(site, "server 127.0.0.1:8000 ", f"server 127.0.0.1:{upstream_port} ", 1)
    second = second_port or free_port()
    site = substitute(site, "server 127.0.0.1:8002 ", f"server 127.0.0.1:{second} ", 1)
    if not backup:
        site = substitute(site, " backup;", ";", 1)
    site = substitute(site, "listen 80;", f"listen 127.0.0.1:{http_port};", 1)
    site = substitute(site, "listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;", 1)
    site = re.sub(r"\n\s*listen \[::\]:\d+[^;]*;", "", site)  # IPv6 may be off in test sandboxes
    site = substitute(site, "/etc/letsencrypt/live/example.org/fullchain.pem", str(cert), 1)
    site = substitute(site, "/etc/letsencrypt/live/example.org/privkey.pem", str(key), 1)
    site = substitute(site, "/var/www/html", str(folder), 1)
    (folder / "site.conf").write_text(site)
    temp = "\n".join(f"    {kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main = folder / "nginx.conf"
    main.write_text(
        f"daemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} info;\n"
        + ("user root;\n" if os.geteuid() == 0 else "")
        + "events { worker_connections 64; }\n"
        f"http {{\n    access_log {folder / 'access.log'};\n{temp}\n    include {folder / 'site.conf'};\n}}\n"
    )
    return main


@contextmanager
def running_nginx(conf: Path, folder: Path, https: str, cert: Path) -> Iterator[subprocess.Popen]:
    """nginx with `conf` until the block ends (then a graceful stop, and SIGKILL to what remains)."""
    with open(folder / "nginx.stderr", "wb") as stderr:
        # Its own process group: nginx's master and workers end together, whatever happens.
        process = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(folder)], stderr=stderr, start_new_session=True)

    def answers() -> bool:
        try:
            requests.get(https + "/v2/health/live", verify=str(cert), timeout=2)
            return True
        except requests.ConnectionError:
            return process.poll() is not None  # it exited: stop waiting

    try:
        if not wait_until(answers, timeout=15) or process.poll() is not None:
            raise RuntimeError(f"nginx did not start: {(folder / 'nginx.stderr').read_text()}")
        yield process
    finally:
        signal_group(process.pid, signal.SIGQUIT)  # graceful shutdown
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        signal_group(process.pid, signal.SIGKILL)  # workers still draining, or a master that hung
        process.wait()
