"""``python -m images build|clean|path``: the image recipe's own command line."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from .build import ensure_image, manifest
from .cache import cache_dir, clean
from .errors import ImageError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m images")
    parser.add_argument("action", choices=["build", "clean", "path"])
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    try:
        if args.action == "build":
            with console.status("building the image") as status:
                def on_step(step: str, line: str) -> None:
                    status.update(f"[bold]{step}[/]: {line[:100]}")
                image = ensure_image(on_step)
            info = manifest(image)
            console.print(f"image {info['key']} ready at {image.rootfs} "
                          f"(built in {info['build_seconds']} s, {info['size_bytes'] / 2**20:.0f} MiB)")
        elif args.action == "clean":
            for path in clean():
                console.print(f"removed {path}")
        else:
            print(cache_dir())
    except ImageError as err:
        console.print(f"[red]error:[/] {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
