"""The plain route's files in deploy/: the systemd unit and the nginx site, checked by their own tools
and used for real in front of a live server; and shipping a model version with a HUP."""
from __future__ import annotations

import json
import re
import shlex
import socket
import ssl
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from server import config, lifecycle
from tests.conftest import MNIST_SAMPLE, ROOT, free_port
from tests.image.smoke import digit_bodies, png_bytes, ship_new_version
from tests.nginx import SITE, nginx_config, running_nginx, self_signed_certificate

UNIT = ROOT / "deploy/systemd/mnist-serve.service"
INSTALL_DIR = "/srv/mnist-serve"  # where the unit expects the checkout
# Variables the unit sets that are not server settings, and why they are there.
NON_SERVER_VARIABLES = {"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PATH"}
CONTAINERFILE = ROOT / "Containerfile"


def unit_directives(text: str) -> list[tuple[str, str]]:
    """(key, value) for every directive of a unit file, in order (keys repeat)."""
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split("=", 1)) for line in lines if "=" in line and not line.startswith(("#", ";"))]


def unit_environment(text: str) -> dict[str, str]:
    env = {}
    for key, value in unit_directives(text):
        if key == "Environment":
            env.update(item.split("=", 1) for item in shlex.split(value))
    return env


def png_digit(index: int = 0) -> bytes:
    with np.load(MNIST_SAMPLE) as data:
        return png_bytes(data["images"][index])


def systemd_verify(unit_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", str(unit_path)], capture_output=True, text=True, timeout=60)


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # Pointed at this checkout, so that verify can check that the ExecStart binary exists.
    text = UNIT.read_text().replace(INSTALL_DIR, str(ROOT))
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    verified = systemd_verify(unit)
    complaints = [line for line in (verified.stdout + verified.stderr).splitlines() if UNIT.name in line]
    assert verified.returncode == 0 and not complaints, verified.stdout + verified.stderr

    # The same check catches a broken unit here: it is not a no-op on this machine.
    broken = tmp_path / "broken" / UNIT.name
    broken.parent.mkdir()
    broken.write_text(text.replace(str(ROOT / ".venv-serve"), str(tmp_path / "missing")))
    assert systemd_verify(broken).returncode != 0


def test_unit_runs_the_server_with_server_settings() -> None:
    text = UNIT.read_text()
    directives = dict(unit_directives(text))
    env = unit_environment(text)
    unknown = set(env) - set(config.BY_NAME) - NON_SERVER_VARIABLES
    assert not unknown, f"the unit sets variables the server does not read: {unknown}"
    assert env["HOST"] == "127.0.0.1", "behind nginx, the server listens on loopback only"
    assert env["MODEL_REPOSITORY"].startswith(INSTALL_DIR + "/")
    assert directives["WorkingDirectory"] == INSTALL_DIR
    assert directives["ExecStart"] == f"{INSTALL_DIR}/.venv-serve/bin/python -m server"
    assert directives["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert directives["User"] != "root"
    upstream = re.search(r"upstream mnist_serve \{\s*server ([\d.]+):(\d+)[ ;]", SITE.read_text())
    assert upstream and upstream.groups() == (env["HOST"], env["PORT"]), "nginx must proxy to the unit's port"


def containerfile_environment() -> dict[str, str]:
    """The variables of the Containerfile's ENV instruction (continued over several lines)."""
    text = CONTAINERFILE.read_text().replace("\\\n", " ")
    env_line = next(line for line in text.splitlines() if line.startswith("ENV "))
    return dict(item.split("=", 1) for item in shlex.split(env_line[4:]))


def test_image_environment_is_make_serves_but_for_host() -> None:
    env = containerfile_environment()
    unknown = set(env) - set(config.BY_NAME) - NON_SERVER_VARIABLES
    assert not unknown, f"the image sets variables the server does not read: {unknown}"
    defaults = {name: str(config.BY_NAME[name].default) for name in env if name in config.BY_NAME}
    differing = {name for name in defaults if env[name] != defaults[name]}
    # HOST: 127.0.0.1 inside a container is unreachable through a published port.
    # MODEL_REPOSITORY: absolute, where the image keeps the models.
    assert differing == {"HOST", "MODEL_REPOSITORY"}, differing
    assert env["HOST"] == "0.0.0.0" and env["MODEL_REPOSITORY"] == "/srv/mnist/models"
    # Both transports' ports: HTTP, and the v2 gRPC service.
    assert re.search(r"^EXPOSE " + env["PORT"] + " " + env["GRPC_PORT"] + "$", CONTAINERFILE.read_text(), re.M)


def test_nginx_limits_agree_with_the_server() -> None:
    site = SITE.read_text()
    body_mib = int(re.search(r"client_max_body_size (\d+)m;", site).group(1))
    assert body_mib * 1024 * 1024 == config.BY_NAME["MAX_CONTENT_LENGTH"].default
    read_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", site).group(1))
    assert read_timeout > lifecycle.GRACEFUL_SECONDS, "nginx must wait longer than a stopping worker has to answer"


@pytest.fixture
def tls_certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, standing in for certbot's."""
    return self_signed_certificate(tmp_path)


def test_nginx_accepts_the_site(tmp_path: Path, tls_certificate) -> None:
    conf = nginx_config(tmp_path, 8000, free_port(), free_port(), *tls_certificate)
    checked = subprocess.run(["nginx", "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0 and "test is successful" in checked.stderr, checked.stderr


@pytest.fixture
def nginx_in_front(tmp_path: Path, tls_certificate, live_server_factory, random_repository: Path):
    """nginx with the repo's site, TLS on a loopback port, proxying to a live server.

    The server gets one worker of one thread: a request it held for a slow client would stop it.
    """
    live_server = live_server_factory(random_repository, WORKERS=1, THREADS=1)
    http_port, https_port = free_port(), free_port()
    conf = nginx_config(tmp_path, live_server.port, http_port, https_port, *tls_certificate)
    base = f"https://127.0.0.1:{https_port}"
    try:
        with running_nginx(conf, tmp_path, base, tls_certificate[0]):
            yield {"https": base, "http": f"http://127.0.0.1:{http_port}", "cert": str(tls_certificate[0]), "server": live_server}
    except RuntimeError as err:
        pytest.fail(str(err))


def test_nginx_proxies_tls_to_the_server(nginx_in_front) -> None:
    https, cert = nginx_in_front["https"], nginx_in_front["cert"]
    ready = requests.get(https + "/v2/health/ready", verify=cert, timeout=10)
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    assert ready.headers["Strict-Transport-Security"].startswith("max-age=")
    # nginx's $request_id (32 hex digits) reached the server, which answered with it: one id in both logs.
    request_id = ready.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id), request_id
    assert request_id in nginx_in_front["server"].log()

    predicted = requests.post(https + "/predict", files={"image": ("digit.png", png_digit(), "image/png")}, verify=cert, timeout=30)
    assert predicted.status_code == 200, predicted.text
    assert len(predicted.json()["predictions"]) == 1


def test_a_slow_client_is_held_by_nginx_not_by_the_server(nginx_in_front) -> None:
    """A body trickled a byte a second waits in nginx (then times out); the server's one thread stays free."""
    host, port = nginx_in_front["https"].removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=nginx_in_front["cert"])
    with socket.create_connection((host, int(port))) as raw, context.wrap_socket(raw, server_hostname=host) as slow:
        slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100\r\n\r\n")
        for _ in range(4):
            slow.sendall(b"x")
            answer = requests.get(nginx_in_front["https"] + "/v2/health/live", verify=nginx_in_front["cert"], timeout=10)
            # Answered while the slow request is still unanswered: it did not queue behind it.
            assert answer.status_code == 200 and unanswered(slow)
            time.sleep(1)
    assert "POST /predict" not in nginx_in_front["server"].log(), "the unfinished body must not reach the server"


def unanswered(connection: ssl.SSLSocket) -> bool:
    """True while `connection` has received nothing, not even its end, from the other side."""
    connection.setblocking(False)
    try:
        connection.recv(1)
        return False
    except (ssl.SSLWantReadError, BlockingIOError):
        return True
    finally:
        connection.setblocking(True)


def test_nginx_refuses_oversized_bodies_before_the_server(nginx_in_front) -> None:
    too_big = b"\0" * (config.BY_NAME["MAX_CONTENT_LENGTH"].default + 1024 * 1024)
    answer = requests.post(nginx_in_front["https"] + "/predict", data=too_big, headers={"Content-Type": "image/png"},
                           verify=nginx_in_front["cert"], timeout=30)
    assert answer.status_code == 413
    assert "POST /predict" not in nginx_in_front["server"].log(), "the body should never have reached the server"


def test_plain_http_redirects_to_https(nginx_in_front) -> None:
    answer = requests.get(nginx_in_front["http"] + "/v2/health/ready?x=1", allow_redirects=False, timeout=10)
    assert answer.status_code == 301
    assert answer.headers["Location"].startswith("https://") and answer.headers["Location"].endswith("/v2/health/ready?x=1")


def test_new_model_version_ships_with_hup_and_no_failed_request(random_repository: Path, live_server_factory) -> None:
    """docs/deploy.md's way: rename <name>/<version+1>/ into place, `systemctl reload` (SIGHUP)."""
    server = live_server_factory(random_repository, WORKERS=2, THREADS=2)
    # The pid is the main process's: `python -m server` itself. ship_new_version raises on any failure.
    shipped = ship_new_version(random_repository, random_repository.parent, server.url, server.process.pid,
                               digit_bodies(MNIST_SAMPLE))
    assert (shipped["from_version"], shipped["to_version"], shipped["failures"]) == ("1", "2", 0)
    assert "HUP signal received" in server.log()
    assert "Killing old worker" not in server.log(), "old workers must drain and exit by themselves"


def test_image_test_writes_its_figures_outside_the_tracked_tree_unless_asked(tmp_path: Path) -> None:
    from tests.image import smoke

    plain, asked = smoke.parse_args(["localhost/x:latest"]), smoke.parse_args(["localhost/x:latest", "--update-docs"])
    ignored = subprocess.run(["git", "check-ignore", str(plain.json), str(plain.doc)], cwd=ROOT, capture_output=True,
                             text=True, timeout=30)
    assert ignored.stdout.split() == [str(plain.json), str(plain.doc)], ignored
    assert (asked.json, asked.doc) == (ROOT / "docs" / "image-size.json", ROOT / "docs" / "deploy.md")
    # The committed figures rendered the way a run renders them: into a new file, and between a document's markers.
    report = json.loads((ROOT / "docs" / "image-size.json").read_text())
    section = tmp_path / "section.md"
    smoke.write_reports(report, tmp_path / "size.json", section)
    assert section.read_text().startswith(smoke.SIZE_BEGIN) and json.loads((tmp_path / "size.json").read_text()) == report
    document = tmp_path / "deploy.md"
    document.write_text(f"before\n{smoke.SIZE_BEGIN}\nold\n{smoke.SIZE_END}\nafter\n")
    smoke.write_reports(report, tmp_path / "size.json", document)
    assert document.read_text() == f"before\n{smoke.size_section(report)}\nafter\n"
    assert smoke.size_section(report) in (ROOT / "docs" / "deploy.md").read_text()  # docs/ is what its JSON renders
