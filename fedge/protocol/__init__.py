"""The gRPC wire format: ``fleet.proto`` (services ``fedge.v1.Fleet`` and ``fedge.v1.Admin``)
and its generated messages, :mod:`fedge.protocol.fleet_pb2` (``make proto`` regenerates them
with grpcio-tools; a test checks that the checked-in code matches the ``.proto``).

Only messages live here (protobuf, no grpc): the coordinator's servicers and the edge
client's stubs bind them to method names themselves. :mod:`fedge.protocol.codec` converts
between the messages and the REST JSON documents.
"""

from fedge.protocol import fleet_pb2

__all__ = ["fleet_pb2"]
