"""``python -m benchmarks [--quick] [--only W1,W3] [--markdown PATH]``."""

import sys

from benchmarks._harness import main

if __name__ == "__main__":
    sys.exit(main())
