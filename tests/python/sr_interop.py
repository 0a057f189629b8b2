#!/usr/bin/env python3
"""Cross-client check of siklus' Schema Registry support with Confluent's
Python client (confluent-kafka's AvroSerializer and AvroDeserializer).

    sr_interop.py encode --registry URL --topic T --schema FILE [--auth user:pw]
        reads events as JSON lines on stdin, serializes each with
        AvroSerializer (registering FILE under T-value) and prints the
        Confluent wire-format bytes as one hex line each.

    sr_interop.py decode --registry URL --topic T [--auth user:pw]
        reads hex lines on stdin, deserializes each with AvroDeserializer
        (writer schema fetched by the id in the record) and prints JSON lines;
        timestamps are printed as epoch milliseconds.

Used by tests/tests/registry_python.rs; exits non-zero on any failure.
"""
import argparse
import datetime
import json
import sys

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def to_json(value):
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return round(value.timestamp() * 1000)
    raise TypeError(f"cannot print {type(value).__name__}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["encode", "decode"])
    ap.add_argument("--registry", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--schema")
    ap.add_argument("--auth")
    args = ap.parse_args()

    conf = {"url": args.registry}
    if args.auth:
        conf["basic.auth.user.info"] = args.auth
    client = SchemaRegistryClient(conf)
    ctx = SerializationContext(args.topic, MessageField.VALUE)

    if args.mode == "encode":
        with open(args.schema, encoding="utf-8") as f:
            schema = f.read()
        ser = AvroSerializer(client, schema, conf={"auto.register.schemas": True})
        for line in sys.stdin:
            if line.strip():
                print(ser(json.loads(line), ctx).hex(), flush=True)
    else:
        de = AvroDeserializer(client)
        for line in sys.stdin:
            if line.strip():
                record = de(bytes.fromhex(line.strip()), ctx)
                print(json.dumps(record, default=to_json, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
