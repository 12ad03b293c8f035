#!/usr/bin/env python3
"""Writes wire-format fixtures with Python confluent-kafka serializers.

For each case, OUT_DIR/<format>-<name>.bin holds the serialized message and
OUT_DIR/<format>-<name>.json the JSON that kafka-pg-sink's decoder must produce
(src/format mapping rules). tests/registry.rs (python_serializers_interoperate)
decodes them against the same registry.

    V=~/.cache/kafka-pg-sink/venv-registry-interop
    python3 -m venv $V && $V/bin/pip install 'confluent-kafka[avro,json,protobuf]'
    PY_INTEROP_PYTHON=$V/bin/python REGISTRY_URL="$(scripts/registry.sh url)" \
        cargo test --test registry python_serializers_interoperate
(the test runs this script: registry-interop.py URL OUT_DIR)
"""
import datetime
import decimal
import json
import os
import sys
import time
import uuid

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

url, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
sr = SchemaRegistryClient({"url": url})
run = f"py{os.getpid()}-{int(time.time())}"


def write(name, data, want):
    with open(os.path.join(out, name + ".bin"), "wb") as f:
        f.write(data)
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump(want, f)
    print(name, len(data), "bytes, schema id", int.from_bytes(data[1:5], "big"))


AVRO = json.dumps({
    "type": "record", "name": "Order", "namespace": "py",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 3}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "raw", "type": "bytes"},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "ratio", "type": "double"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "attrs", "type": {"type": "map", "values": "int"}},
        {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [
            {"name": "name", "type": "string"},
            {"name": "vip", "type": "boolean"}]}},
    ],
})
ser = AvroSerializer(sr, AVRO)
ctx = SerializationContext(f"{run}-orders", MessageField.VALUE)
record = {
    "id": 2**62 + 1,
    "amount": decimal.Decimal("-12345.678"),
    "at": datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc),
    "day": datetime.date(2024, 2, 29),
    "uid": uuid.UUID("6f9619ff-8b86-d011-b42d-00c04fc964ff"),
    "raw": b"\x00\xff",
    "status": "PAID",
    "note": None,
    "ratio": 0.1,
    "tags": ["a", "b"],
    "attrs": {"x": 1},
    "customer": {"name": "Zoë", "vip": True},
}
write("avro-order", ser(record, ctx), {
    "id": 2**62 + 1, "amount": -12345.678, "at": "2024-05-06T07:08:09.123456Z",
    "day": "2024-02-29", "uid": "6f9619ff-8b86-d011-b42d-00c04fc964ff", "raw": "\\x00ff",
    "status": "PAID", "note": None, "ratio": 0.1, "tags": ["a", "b"], "attrs": {"x": 1},
    "customer": {"name": "Zoë", "vip": True},
})

JSON_SCHEMA = json.dumps({
    "$schema": "http://json-schema.org/draft-07/schema#", "title": "Event", "type": "object",
    "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
    "required": ["id"],
})
jser = JSONSerializer(JSON_SCHEMA, sr)
jctx = SerializationContext(f"{run}-events", MessageField.VALUE)
write("json_schema-event", jser({"id": 5, "name": "x"}, jctx), {"id": 5, "name": "x"})

try:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer

    fdp = descriptor_pb2.FileDescriptorProto(name=f"{run}.proto", package="pyshop", syntax="proto3")
    m = fdp.message_type.add(name="Item")
    F = descriptor_pb2.FieldDescriptorProto
    m.field.add(name="id", number=1, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    m.field.add(name="sku", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    m.field.add(name="qty", number=3, type=F.TYPE_UINT32, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    Item = message_factory.GetMessageClass(pool.FindMessageTypeByName("pyshop.Item"))
    pser = ProtobufSerializer(Item, sr, {"use.deprecated.format": False})
    pctx = SerializationContext(f"{run}-items", MessageField.VALUE)
    write("protobuf-item", pser(Item(id=-7, sku="A-1"), pctx), {"id": -7, "sku": "A-1", "qty": 0})
except Exception as e:  # noqa: BLE001 - optional case, reported
    print("protobuf case skipped:", type(e).__name__, e)
