"""``python -m fastreid_plugins.patches``: print every patch the package applies to FastReID."""

import fastreid_plugins  # noqa: F401  (applies the patches)
from fastreid_plugins.patches import report

print(report())
