"""An independent client of `kiln serve`, written with Python's grpcio and hyper-h2 from
kiln's .proto files and nothing of kiln's code: it proves that the daemon speaks plain
gRPC as BuildKit's clients do.

It calls ListWorkers, Info and DiskUsage, then runs a Solve of the Dockerfile in CONTEXT
whose session it serves itself: an HTTP/2 server (hyper-h2) inside the Control.Session
stream, answering FileSync.DiffCopy with fsutil packets. It builds the Dockerfile twice:
once naming the frontend in Control.Solve, once as buildctl and buildx do, through a
build function: a Control.Solve without frontend, and the gateway's (LLBBridge) Ping,
Solve and Return carrying the build's ID.

    python independent_client.py SOCKET PROTO_DIR CONTEXT

prints a JSON object with what it saw, and exits non-zero on any failure.
"""

import json
import os
import queue
import struct
import sys
import tempfile
import threading
import uuid

import grpc
import h2.config
import h2.connection
import h2.events
from grpc_tools import protoc


def generate(proto_dir, out_dir):
    """Compiles kiln's .proto files into Python modules in out_dir."""
    files = [f for f in os.listdir(proto_dir) if f.endswith(".proto") and f != "raw_filesend.proto"]
    # grpc_tools ships the well-known types (google/protobuf/timestamp.proto).
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = ["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}"]
    if protoc.main(args + files) != 0:
        raise SystemExit("protoc failed")
    sys.path.insert(0, out_dir)


def frame(message):
    """A gRPC length-prefixed message."""
    data = message.SerializeToString()
    return struct.pack(">?I", False, len(data)) + data


GO_DIR = 1 << 31


class FileSyncServer:
    """Serves CONTEXT (a flat directory) as the session's `context` and `dockerfile`
    directories, speaking HTTP/2 through the tunnel."""

    def __init__(self, context, wire, send):
        self.context = context
        self.wire = wire
        self.send = send  # bytes -> None, into the tunnel
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.buffers = {}
        self.files = {}
        self.calls = []
        self.conn.initiate_connection()
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.send(data)

    def receive(self, data):
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.start(event.stream_id, event.headers)
            elif isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                self.data(event.stream_id, event.data)
        self.flush()

    def start(self, stream, headers):
        """Answers a call: `headers` is its list of (name, value) pairs."""
        path = next(v for k, v in headers if k == b":path").decode()
        self.calls.append(path)
        self.buffers[stream] = b""
        self.conn.send_headers(stream, [(":status", "200"), ("content-type", "application/grpc")])
        if path != "/moby.filesync.v1.FileSync/DiffCopy":
            self.conn.send_headers(stream, [("grpc-status", "12")], end_stream=True)
            return
        includes = [v.decode() for k, v in headers if k == b"include-patterns"]
        names = sorted(n for n in os.listdir(self.context) if not includes or n in includes)
        files = {}
        for index, name in enumerate(names):
            st = os.lstat(os.path.join(self.context, name))
            stat = self.wire.Stat(path=name, mode=st.st_mode & 0o777, uid=st.st_uid, gid=st.st_gid,
                                  size=st.st_size, modTime=st.st_mtime_ns)
            files[index] = name
            self.packet(stream, type=self.wire.Packet.PACKET_STAT, stat=stat)
        self.packet(stream, type=self.wire.Packet.PACKET_STAT)
        self.files[stream] = files

    def packet(self, stream, **fields):
        self.conn.send_data(stream, frame(self.wire.Packet(**fields)))

    def data(self, stream, data):
        self.buffers[stream] += data
        while len(self.buffers[stream]) >= 5:
            _, size = struct.unpack(">?I", self.buffers[stream][:5])
            if len(self.buffers[stream]) < 5 + size:
                return
            message = self.wire.Packet.FromString(self.buffers[stream][5:5 + size])
            self.buffers[stream] = self.buffers[stream][5 + size:]
            if message.type == self.wire.Packet.PACKET_REQ:
                with open(os.path.join(self.context, self.files[stream][message.ID]), "rb") as f:
                    self.packet(stream, type=self.wire.Packet.PACKET_DATA, ID=message.ID, data=f.read())
                self.packet(stream, type=self.wire.Packet.PACKET_DATA, ID=message.ID)
            elif message.type == self.wire.Packet.PACKET_FIN:
                self.packet(stream, type=self.wire.Packet.PACKET_FIN)
                self.conn.send_headers(stream, [("grpc-status", "0")], end_stream=True)


def main():
    socket, proto_dir, context = sys.argv[1:4]
    out = tempfile.mkdtemp()
    generate(proto_dir, out)
    import control_pb2
    import control_pb2_grpc
    import wire_pb2

    # grpc-core names a unix socket's path as the HTTP/2 authority, which is no valid
    # authority (hyper refuses it); grpc-go, and so BuildKit's clients, send "localhost".
    channel = grpc.insecure_channel(
        f"unix://{socket}", options=[("grpc.default_authority", "localhost")])
    control = control_pb2_grpc.ControlStub(channel)
    seen = {}
    workers = control.ListWorkers(control_pb2.ListWorkersRequest())
    seen["platforms"] = [f"{p.OS}/{p.Architecture}" for p in workers.record[0].platforms]
    seen["version"] = control.Info(control_pb2.InfoRequest()).buildkitVersion.version
    seen["usage"] = [r.ID for r in control.DiskUsage(control_pb2.DiskUsageRequest()).record]

    session_id = uuid.uuid4().hex
    outgoing = queue.Queue()

    def requests():
        while True:
            data = outgoing.get()
            if data is None:
                return
            yield control_pb2.BytesMessage(data=data)

    metadata = [
        ("x-docker-expose-session-uuid", session_id),
        ("x-docker-expose-session-name", "independent"),
        ("x-docker-expose-session-sharedkey", "independent"),
        ("x-docker-expose-session-grpc-method", "/moby.filesync.v1.FileSync/DiffCopy"),
    ]
    server = FileSyncServer(context, wire_pb2, outgoing.put)
    responses = control.Session(requests(), metadata=metadata)

    def serve():
        try:
            for message in responses:
                server.receive(message.data)
        except grpc.RpcError:
            pass

    threading.Thread(target=serve, daemon=True).start()

    ref = uuid.uuid4().hex
    names = []

    def status():
        for response in control.Status(control_pb2.StatusRequest(Ref=ref)):
            names.extend(v.name for v in response.vertexes)

    watcher = threading.Thread(target=status, daemon=True)
    watcher.start()
    solved = control.Solve(control_pb2.SolveRequest(
        Ref=ref,
        Session=session_id,
        Frontend="dockerfile.v0",
        FrontendAttrs={"build-arg:GREETING": "hello from python"},
        Exporters=[control_pb2.Exporter(Type="image", Attrs={"name": "independent:1"})],
    ))
    watcher.join(timeout=30)
    seen["digest"] = solved.ExporterResponse.get("containerimage.digest", "")
    seen["gateway_digest"] = build_through_gateway(channel, control, control_pb2, session_id)
    outgoing.put(None)
    seen["steps"] = sorted(set(names))
    seen["calls"] = server.calls
    print(json.dumps(seen))


def build_through_gateway(channel, control, control_pb2, session_id):
    """Builds as a build function: Control.Solve names no frontend; the LLBBridge calls
    (with the build's ID) ask for it and return its result. Returns the image digest."""
    import gateway_pb2
    import gateway_pb2_grpc

    ref = uuid.uuid4().hex
    bridge = gateway_pb2_grpc.LLBBridgeStub(channel)
    build_id = [("buildkit-controlapi-buildid", ref)]
    answer = {}

    def control_solve():
        answer["response"] = control.Solve(
            control_pb2.SolveRequest(
                Ref=ref,
                Session=session_id,
                Exporters=[control_pb2.Exporter(Type="image", Attrs={"name": "independent:2"})],
            ))

    solving = threading.Thread(target=control_solve)
    solving.start()
    pong = bridge.Ping(gateway_pb2.PingRequest(), metadata=build_id)
    caps = {c.ID for c in pong.FrontendAPICaps if c.Enabled}
    if "return" not in caps:
        raise SystemExit(f"the gateway does not offer Return: {sorted(caps)}")
    solved = bridge.Solve(gateway_pb2.SolveRequest(
        Frontend="dockerfile.v0",
        FrontendOpt={"build-arg:GREETING": "hello from python"},
        allowResultReturn=True,
        allowResultArrayRef=True,
    ), metadata=build_id)
    bridge.Return(gateway_pb2.ReturnRequest(result=solved.result), metadata=build_id)
    solving.join(timeout=60)
    return answer["response"].ExporterResponse.get("containerimage.digest", "")


if __name__ == "__main__":
    main()
