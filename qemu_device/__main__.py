"""python -m qemu_device ..."""
import sys

from .cli import main

sys.exit(main())
