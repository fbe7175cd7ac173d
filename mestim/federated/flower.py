"""The federated protocol on Flower: a ServerApp coordinates, each site's ClientApp answers over its own table.

Each request of :mod:`mestim.federated` travels as a Flower ``Message`` (type ``query``) whose RecordDict holds
the JSON header in a ``ConfigRecord`` and the arrays (θ, the plan; Σψ, ΣJ, the meat) in an ``ArrayRecord``;
:meth:`FlowerSites.exchange` sends one round with ``Grid.send_and_receive`` and waits at most ``timeout`` seconds.

Site (SuperNode) configuration, ``--node-config`` (keys of :func:`mestim.federated.site_from_config`):

- ``site``: the site's name; ``table``: its CSV or Parquet file;
- ``estimators``: the estimators it runs, comma-separated ``module:attribute`` references to
  :class:`mestim.federated.Estimator` objects (code installed at the site);
- ``sources``: SHA-256 digests of user ψ sources it reviewed (default none); ``columns``: the columns estimators
  may read (default all); ``min-rows`` (default 10); ``log``: the audit log file (JSON lines);
- or, instead of these, ``daemon`` (a port on 127.0.0.1) and ``authkey``: the site's own long-lived process
  (``python -m mestim.federated site.toml``, :func:`mestim.federated.serve`) holds the table and the
  configuration above and answers; the ClientApp relays each message to it. Flower answers every message in a
  fresh ClientApp process, so without it every pass reads, prepares and compiles the site's rows anew.

Run configuration of the ServerApp (``flwr run --run-config``): ``estimator`` (``module:attribute``), ``sites``
(the site names to wait for, comma-separated), ``options`` (JSON: keyword arguments of
:func:`mestim.federated.fit`), ``timeout`` (seconds per round, default :data:`~mestim.federated.DEFAULT_TIMEOUT`)
and ``result``: a file where the ServerApp writes ``{"result": Result, "rounds", "bytes", "seconds"}`` (for a
:class:`~mestim.federated.Counts`, the result is :func:`~mestim.federated.tabulate`'s DataFrame) or
``{"error": message}`` (pickled).
"""

from __future__ import annotations

import json
import pickle
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from ..errors import MestimError
from . import DEFAULT_TIMEOUT, FederatedError, decode, encode, load, relay, site_from_config
from . import coordinate as coordinate_sites

STATE = "mestim"  # the key of the site's state in its Flower Context


def to_record(header: dict, arrays: dict) -> RecordDict:
    return RecordDict({"header": ConfigRecord({"json": json.dumps(header, sort_keys=True)}),
                       "arrays": ArrayRecord(array_dict={k: Array(np.asarray(v, float)) for k, v in arrays.items()})})


def from_record(record: RecordDict) -> tuple[dict, dict]:
    arrays = record["arrays"] if "arrays" in record else {}
    return json.loads(record["header"]["json"]), {k: a.numpy() for k, a in arrays.items()}


class FlowerSites:
    """The sites a ServerApp reaches through its Grid: the SuperNodes whose ClientApps name themselves ``sites``."""

    def __init__(self, grid: Grid, sites, timeout: float = DEFAULT_TIMEOUT):
        self.grid, self.timeout, self.rounds, self.bytes = grid, float(timeout), 0, 0
        deadline = time.monotonic() + self.timeout
        while len(list(grid.get_node_ids())) < len(sites) and time.monotonic() < deadline:
            time.sleep(0.5)
        nodes, self.nodes = list(grid.get_node_ids()), {}
        names = {h["site"]: n for n, (h, _) in self._round({n: ({"kind": "hello"}, {}) for n in nodes},
                                                            "who it is").items()}
        missing = sorted(set(sites) - set(names))
        if missing:
            raise FederatedError(f"site(s) {missing} are not connected (connected: {sorted(names)}) after "
                                 f"{self.timeout:g} s")
        self.nodes = {name: names[name] for name in sites}

    @property
    def names(self) -> list[str]:
        return sorted(self.nodes)

    def exchange(self, requests: dict[str, bytes], what: str) -> dict[str, bytes]:
        self.bytes += sum(len(b) for b in requests.values())
        replies = self._round({self.nodes[name]: decode(blob) for name, blob in requests.items()}, what)
        by_name = {name: encode(*replies[node]) for name, node in self.nodes.items()}
        self.bytes += sum(len(b) for b in by_name.values())
        return by_name

    def _round(self, requests: dict, what: str) -> dict:
        """One send_and_receive: {node: (header, arrays)} in, the same out, or an error naming who failed."""
        self.rounds += 1
        names = {node: name for name, node in self.nodes.items()}
        messages = [Message(content=to_record(*request), dst_node_id=node, message_type="query")
                    for node, request in requests.items()]
        start = time.monotonic()
        replies = {m.metadata.src_node_id: m for m in self.grid.send_and_receive(messages, timeout=self.timeout)}
        missing = [f"'{names.get(node, node)}'" for node in requests if node not in replies]
        if missing:
            raise FederatedError(f"site{'s' if len(missing) > 1 else ''} {', '.join(missing)} did not answer {what} "
                                 f"within {self.timeout:g} s (waited {time.monotonic() - start:.0f} s): down, too "
                                 "slow or gone from the fit; no result")
        for node in requests:
            if replies[node].has_error():
                raise FederatedError(f"site '{names.get(node, node)}' failed on {what}: "
                                     f"{replies[node].error.reason}; no result")
        return {node: from_record(replies[node].content) for node in requests}


# ---------------------------------------------------------------------------------------------- the apps
server_app = ServerApp()


@server_app.main()
def coordinate(grid: Grid, context: Context) -> None:
    """Fit the run's estimator over its sites (or tabulate its :class:`~mestim.federated.Counts`); write the Result
    (the counts' table) or the error to the run's ``result`` file."""
    config = context.run_config
    start = time.perf_counter()
    try:
        sites = FlowerSites(grid, str(config["sites"]).split(","), float(config.get("timeout", DEFAULT_TIMEOUT)))
        result = coordinate_sites(load(str(config["estimator"])), sites, **json.loads(str(config.get("options", "{}"))))
        payload = {"result": result, "rounds": sites.rounds, "bytes": sites.bytes,
                   "seconds": time.perf_counter() - start}
    except MestimError as e:
        payload = {"error": f"{type(e).__name__}: {e}"}
    with open(str(config["result"]), "wb") as fh:
        pickle.dump(payload, fh)


client_app = ClientApp()


@client_app.query()
def answer(message: Message, context: Context) -> Message:
    """One request answered by this site (each message is answered by a fresh process: the site's state between
    messages lives in the Context)."""
    config = context.node_config
    header, arrays = from_record(message.content)
    if "daemon" in config:  # the site's own long-lived process answers (mestim.federated.serve)
        if header.get("kind") == "hello":
            return Message(content=to_record({"site": str(config["site"])}, {}), reply_to=message)
        blob = relay(int(config["daemon"]), str(config["authkey"]).encode(), encode(header, arrays),
                     float(config.get("timeout", DEFAULT_TIMEOUT)))
        return Message(content=to_record(*decode(blob)), reply_to=message)
    site = site_from_config(config)
    if STATE in context.state:
        site.state = json.loads(context.state[STATE]["json"])
    reply = ({"site": site.name}, {}) if header.get("kind") == "hello" else site.handle(header, arrays)
    context.state[STATE] = ConfigRecord({"json": json.dumps(site.state)})
    return Message(content=to_record(*reply), reply_to=message)
