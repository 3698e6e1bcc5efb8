"""Run one documentation page as tests/test_docs.py does, in this (8-device) process.

Usage: run_page.py PAGE. Used for the pages in test_docs.SUBPROCESS_PAGES.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from _pages import run_page

page = pathlib.Path(sys.argv[1]).resolve()
run_page(page)
print(f"{page.name} ran")
