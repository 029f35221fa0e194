"""`python -m server`: serve the model repository with Granian (server/lifecycle.py), flags mirroring the env vars."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import config
from .runtime.layout import find_model_files, find_versions

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="Serve <repository>/<name>/<version>/model.onnx over HTTP (and gRPC) with Granian. "
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
    args = parser.parse_args(argv)
    if 0 < args.WORKER_LIFETIME < 60:
        parser.error(f"WORKER_LIFETIME: received {args.WORKER_LIFETIME}; expected 0 (never) or from 60 seconds")
    return args


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
    settings = {name: getattr(args, name) for name in config.BY_NAME}
    # Flags go to the environment: the workers read their settings there, and so does this
    # command when it runs again with the allocator's settings.
    os.environ.update({name: str(value) for name, value in settings.items()})
    from . import lifecycle

    lifecycle.exec_with_allocator_settings(["-m", "server"])
    return lifecycle.serve(settings)


if __name__ == "__main__":
    sys.exit(main())
