"""``python -m attn_bench ...`` is the ``attn-bench`` command (for machines where the
package sits on PYTHONPATH instead of being installed)."""

import sys

from .cli import main

sys.exit(main())
