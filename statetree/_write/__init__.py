"""The write path: every value written into a Variable or a Ref goes through here, and
every eager read of many Refs at once.

Start with README.md beside this file: what the unit promises, its entry points, and the
path of one ``st.update`` through it. The rest of statetree uses only the names below:
four facets, each a module of this package, and ``WritePlan``.
"""

from . import _bulk as bulk
from . import _plan as plan
from . import _rules as rules
from . import _storage as storage
from ._plan import WritePlan as WritePlan

__all__ = ["WritePlan", "bulk", "plan", "rules", "storage"]
