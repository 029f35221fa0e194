"""`python -m server`: serve the model repository with gunicorn, flags mirroring the env vars."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import config
from .layout import find_model_files, find_versions

GUNICORN_CONF = Path(__file__).with_name("gunicorn_conf.py")
# glibc's allocator as the workers need it (read at process start, so set before gunicorn runs):
# a worker's threads share two heaps instead of one each (up to 8 per CPU), and blocks from 1 MiB
# (a decoded image, a parsed body) are mapped apart and go back to the system when freed, instead
# of raising the threshold and staying in the heap. Measured in docs/memory.md.
MALLOC_SETTINGS = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(2**20), "MALLOC_TRIM_THRESHOLD_": str(4 * 2**20)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="Serve <repository>/<name>/<version>/model.onnx over HTTP with gunicorn. "
        "Every flag can also be set by the environment variable of the same name.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    try:
        current = config.from_environment()
    except config.ConfigError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    for setting in config.SETTINGS:
        own = "--" + setting.name.lower().replace("_", "-")
        flags = [flag for flag in (own, KSERVE_FLAGS.get(setting.name)) if flag]
        parser.add_argument(
            *flags, dest=setting.name, type=_flag_parser(setting.parse), default=current[setting.name],
            help=f"{setting.help} [env {setting.name}]",
        )
    parser.add_argument(
        "--check", action="store_true", help="only check that the repository holds a model, then exit"
    )
    return parser.parse_args(argv)


def _flag_parser(parse):
    """`parse` whose ValueError message argparse shows as it is (it hides plain ValueErrors)."""
    def checked(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    checked.__name__ = parse.__name__
    return checked


# The flags KServe's custom runtimes take (a ServingRuntime's `args`, its model server's convention),
# accepted beside this server's own: the storage initializer puts the repository in /mnt/models.
KSERVE_FLAGS = {"MODEL_REPOSITORY": "--model_dir", "PORT": "--http_port", "GRPC_PORT": "--grpc_port"}


def check_repository(root: str) -> bool:
    """Print one clear line and return False when `root` holds no model file."""
    if find_model_files(Path(root)):
        return True
    if find_versions(Path(root), Path(root), warn=lambda message: None):
        print(
            f"error: {root}/ holds one model's version folders, not a repository of models: serve the folder above it, "
            f"or put them in {root}/<name>/ (with KServe, storageUri names the repository, the folder holding <name>/)",
            file=sys.stderr,
        )
        return False
    print(
        f"error: no model in {root}/ (expected {root}/<name>/<version>/model.onnx); "
        "create one with 'make train && make export VERSION=1', or point MODEL_REPOSITORY at a repository",
        file=sys.stderr,
    )
    return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not check_repository(args.MODEL_REPOSITORY):
        return 1
    if args.check:
        return 0
    env = dict(os.environ)
    env.update({name: str(getattr(args, name)) for name in config.BY_NAME})
    for name, value in MALLOC_SETTINGS.items():
        env.setdefault(name, value)
    gunicorn = [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF), "server:create_app()"]
    os.execve(sys.executable, gunicorn, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
