"""``python -m fastreid_plugins.patches [--activate]``: every patch the package can apply to
FastReID, and which are active in this process (none until something activates: ``--activate``
calls :func:`fastreid_plugins.activate` first, to show what applies on this host)."""

import argparse

from fastreid_plugins.patches import report

parser = argparse.ArgumentParser(prog="python -m fastreid_plugins.patches",
                                 description=__doc__.split("\n\n")[0])
parser.add_argument("--activate", action="store_true",
                    help="activate the package first (as train_net.py and the tools do), then "
                         "report which patches applied on this host")
if parser.parse_args().activate:
    import fastreid_plugins

    fastreid_plugins.activate()
print(report())
