"""The end of `nightjar demo`: where each result lives and the one line that shows it.

Input: a finished `DemoResult`. Output: text naming the MongoDB database and collections,
the output and dead-letter topics with a `python -c` reader, the metrics URL, the
Fritz-like page, the gallery PNG and how to stop the services.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from broker.settings import masked
from broker.tools.services.fritz import FritzService

if TYPE_CHECKING:
    from broker.tools.demo.main import DemoResult

COLLECTIONS = "alerts, objects, rejected, outbox"


def where_to_look(result: DemoResult) -> str:
    settings, names = result.settings, result.names
    uri = masked(settings)["mongo"]["uri"]
    bootstrap = settings.kafka.bootstrap_servers
    output = names.output_topic("ztf")
    mongo_line = (
        f"python -c \"import pymongo; db = pymongo.MongoClient('{uri}')['{names.database}']; "
        "print(db.alerts.find_one({'survey': 'ztf'}, {'cutouts': 0, 'packet': 0}))\""
    )
    kafka_line = (
        'python -c "import io, fastavro; from confluent_kafka import Consumer; '
        f"c = Consumer({{'bootstrap.servers': '{bootstrap}', 'group.id': 'peek', "
        "'auto.offset.reset': 'earliest', 'enable.auto.commit': False}); "
        f"c.subscribe(['{output}']); m = c.poll(20); "
        "r = next(fastavro.reader(io.BytesIO(m.value()))); "
        "print(r['objectId'], r['candid'], r['nightjar']['scores'])\""
    )
    lines = [
        "Where to look",
        f"  MongoDB      {uri}  database {names.database}  collections {COLLECTIONS}",
        f"               {mongo_line}",
        f"  Kafka        {bootstrap}  output {output}, {names.output_topic('lsst')}, ... "
        "(one per survey)",
        f"               dead letters {names.dead_letter}  filter matches "
        f"{settings.filters.topic_template}",
        f"               {kafka_line}",
        f"  Inputs       {', '.join(names.inputs().values())}",
        "               (kafka.topics patterns pick such topics up)",
        f"  Metrics      {result.metrics_url or 'http://127.0.0.1:9108/metrics'} (while a "
        "broker runs: `nightjar run`)",
        f"  Fritz-like   {_fritz_page(result)}",
        f"  Gallery      {result.gallery or 'not written (see above)'}",
        "  Next run     `nightjar demo` again removes this run's topics and database first",
        "  Stop         nightjar services down",
    ]
    lines += [f"  Note         {note}" for note in result.notes]
    return "\n".join(lines)


def _fritz_page(result: DemoResult) -> str:
    url = result.settings.fritz.url
    if not result.posted:
        return f"{url}/ (not posted: no token or service; `nightjar post` sends the outbox)"
    token_file = result.settings.fritz.token_file or FritzService(dict(os.environ)).token_file()
    return f"{url}/?token=$(cat {token_file})&hours=24  (candidates posted by this demo)"
