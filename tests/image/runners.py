"""Two ways to start the production image for the smoke test, with one interface.

`PodmanContainer` runs it for real with `podman run`, published on a loopback port. Some machines
(this project's CI among them) refuse what podman asks of the kernel by default: crun cannot work
with their hybrid cgroups, and raising rlimits is not permitted. So it runs with runc and rlimits
no higher than the caller's own, which any machine allows.

`ChrootedImage` is the fallback where no container can start at all: it does by hand what a
runtime would, with the image's own entrypoint, environment, working directory and user, through
chroot in a mounted container file system with /proc and /dev.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

from harness.procs import free_port

NPROC_LIMIT = 4096  # a container's processes and threads: plenty for the server's workers and their threads


class ImageTestFailure(Exception):
    """What the image got wrong, in one message."""


def log(message: str) -> None:
    print(f"image-test: {message}", file=sys.stderr, flush=True)


def podman(*args: str) -> str:
    """Run podman and return its stdout; raise with its stderr on failure."""
    done = subprocess.run(["podman", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise ImageTestFailure(f"podman {' '.join(args)} failed: {done.stderr.strip()[-800:]}")
    return done.stdout.strip()


def inspect(kind: str, name: str) -> dict:
    return json.loads(podman(kind, "inspect", name))[0]


def rlimit_flags() -> list[str]:
    nofile_soft, nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nproc = min([NPROC_LIMIT, *(n for n in resource.getrlimit(resource.RLIMIT_NPROC) if n != resource.RLIM_INFINITY)])
    return ["--ulimit", f"nofile={nofile_soft}:{nofile_hard}", "--ulimit", f"nproc={nproc}:{nproc}"]


def exposed_port(config: dict) -> str:
    ports = list(config.get("ExposedPorts") or {})
    if not ports:
        raise ImageTestFailure("the image EXPOSEs no port")
    return ports[0].split("/")[0]


class PodmanContainer:
    """The image started by `podman run`, its exposed port published on 127.0.0.1."""

    how = "podman run"

    def __init__(self, image: str, info: dict):
        config = info["Config"]
        self.url = f"http://127.0.0.1:{free_port()}"
        publish = f"127.0.0.1:{self.url.rsplit(':', 1)[1]}:{exposed_port(config)}"
        self.id = podman("run", "--detach", "--runtime", "runc", *rlimit_flags(), "--publish", publish, image)
        try:
            self.rootfs = Path(podman("mount", self.id))
            self.master_pid = inspect("container", self.id)["State"]["Pid"]  # PID 1 inside: the server's main process
        except ImageTestFailure:
            self.remove()
            raise

    def alive(self) -> bool:
        return inspect("container", self.id)["State"]["Running"]

    def healthcheck(self) -> None:
        podman("healthcheck", "run", self.id)

    def logs(self) -> str:
        done = subprocess.run(["podman", "logs", self.id], capture_output=True, text=True)
        return done.stdout + done.stderr

    def stop(self, timeout: int = 40) -> int:
        """`podman stop`: SIGTERM, then SIGKILL after `timeout` s; the container's exit code."""
        podman("stop", "--time", str(timeout), self.id)
        return inspect("container", self.id)["State"]["ExitCode"]

    def remove(self) -> None:
        subprocess.run(["podman", "umount", self.id], capture_output=True)
        subprocess.run(["podman", "rm", "--force", self.id], capture_output=True)


class ChrootedImage:
    """The image's entrypoint started through chroot in a mounted container file system."""

    how = "chroot"

    def __init__(self, image: str, info: dict):
        self.config = info["Config"]
        self.healthcheck_test = (info.get("Healthcheck") or self.config.get("Healthcheck") or {}).get("Test") or []
        self.id = podman("create", image)
        self.rootfs = Path(podman("mount", self.id))
        self.mounts: list[Path] = []
        for source, target, how in (("proc", self.rootfs / "proc", ["-t", "proc"]), ("/dev", self.rootfs / "dev", ["--bind"])):
            subprocess.run(["mount", *how, source, str(target)], check=True)
            self.mounts.append(target)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = dict(item.split("=", 1) for item in self.config.get("Env") or [])
        # No network namespace here: loopback only, and ports of its own (a taken port stops the start).
        self.env.update(HOST="127.0.0.1", PORT=str(port), GRPC_PORT=str(free_port()))
        argv = (self.config.get("Entrypoint") or []) + (self.config.get("Cmd") or [])
        self.log_path = Path("/tmp") / f"image-test-{os.getpid()}.log"
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(self.command(argv), env=self.env, stdout=log_file,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.master_pid = self.process.pid  # chroot, env and python -m server all exec: the server's main process

    def command(self, argv: list[str]) -> list[str]:
        user = self.config.get("User") or "0:0"
        workdir = self.config.get("WorkingDir") or "/"
        return ["/usr/sbin/chroot", f"--userspec={user}", str(self.rootfs), "/usr/bin/env", "-C", workdir, *argv]

    def alive(self) -> bool:
        return self.process.poll() is None

    def healthcheck(self) -> None:
        if self.healthcheck_test[:1] != ["CMD"]:
            raise ImageTestFailure(f"expected an exec-form HEALTHCHECK, found {self.healthcheck_test}")
        done = subprocess.run(self.command(self.healthcheck_test[1:]), env=self.env, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise ImageTestFailure(f"the image's HEALTHCHECK failed: {done.stderr.strip()[-500:]}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: int = 40) -> int:
        """SIGTERM, as `docker stop` sends; SIGKILL after `timeout` s."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()

    def remove(self) -> None:
        if self.alive():
            self.stop()
        for target in reversed(self.mounts):
            subprocess.run(["umount", str(target)], check=False)
        subprocess.run(["podman", "umount", self.id], capture_output=True)
        subprocess.run(["podman", "rm", "--force", self.id], capture_output=True)


def start_image(image: str, info: dict, runner: str) -> PodmanContainer | ChrootedImage:
    """Start the image with `runner` (podman, chroot, or auto: podman, else chroot)."""
    if runner in ("podman", "auto"):
        try:
            return PodmanContainer(image, info)
        except ImageTestFailure as failure:
            if runner == "podman":
                raise
            log(f"no container could start here ({failure}); starting the image through chroot instead")
            with contextlib.suppress(ImageTestFailure):
                leftovers = podman("ps", "--all", "--quiet", "--filter", f"ancestor={image}", "--filter", "status=created")
                for container_id in leftovers.split():
                    subprocess.run(["podman", "rm", "--force", container_id], capture_output=True)
    return ChrootedImage(image, info)
