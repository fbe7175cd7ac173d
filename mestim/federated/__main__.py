"""``python -m mestim.federated site.toml``: run a site's process (:func:`mestim.federated.serve`).

site.toml holds the site's configuration (:func:`mestim.federated.site_from_config`) and ``port`` and ``authkey``
(the secret its Flower ClientApp presents; give the SuperNode ``--node-config "site='…' daemon=PORT
authkey='…'"``)."""

import sys
import tomllib

from . import serve, site_from_config

with open(sys.argv[1], "rb") as fh:
    config = tomllib.load(fh)
serve(site_from_config(config), int(config["port"]), str(config["authkey"]).encode())
