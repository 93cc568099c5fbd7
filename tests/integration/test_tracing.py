"""One send, one trace: the services export spans over OTLP/HTTP to a receiver run by the test,
and the spans of gateway, writer, notifier and the recipient's gateway form one chain."""

from __future__ import annotations

import asyncio

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class Collector:
    """An OTLP/HTTP trace receiver on loopback: what an OpenTelemetry collector would get."""

    def __init__(self) -> None:
        self.spans: list[dict[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def receive(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource in export.resource_spans:
            service = next(a.value.string_value for a in resource.resource.attributes if a.key == "service.name")
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        {
                            "service": service,
                            "name": span.name,
                            "trace": span.trace_id.hex(),
                            "id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                        }
                    )
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self.receive)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def test_one_send_is_one_connected_trace_across_the_services(system):
    collector = Collector()
    await collector.start()
    try:
        env = {"CHAT_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        for name in ("writer", "notifier", "gateway", "gateway"):
            await system.start(name, env=env)
        alice, bob = await system.connect("alice", gateway=0), await system.connect("bob", gateway=1)
        cid = await system.conversation(["alice", "bob"])
        await alice.send_message(cid, "trace me", temp_id="traced")
        await bob.wait_frame(type="new-message", tempMessageId="traced")
        await alice.wait_frame(type="new-message", tempMessageId="traced")

        def chain() -> list[dict[str, str]] | None:
            accepts = [s for s in collector.spans if s["name"] == "gateway.accept"]
            if not accepts:
                return None
            trace = [s for s in collector.spans if s["trace"] == accepts[0]["trace"]]
            names = [s["name"] for s in trace]  # each process exports on its own schedule: wait for all
            complete = {"writer.store", "notifier.route"} <= set(names) and names.count("gateway.deliver") >= 2
            return trace if complete else None

        for _ in range(100):
            if chain():
                break
            await asyncio.sleep(0.1)
        trace = chain()
        assert trace is not None, collector.spans
        by_name = {s["name"]: s for s in trace}
        assert by_name["gateway.accept"]["service"] == "chat-gateway" and by_name["gateway.accept"]["parent"] == ""
        assert by_name["writer.store"]["service"] == "chat-writer"
        assert by_name["writer.store"]["parent"] == by_name["gateway.accept"]["id"]
        assert by_name["notifier.route"]["service"] == "chat-notifier"
        assert by_name["notifier.route"]["parent"] == by_name["writer.store"]["id"]
        delivers = [s for s in trace if s["name"] == "gateway.deliver"]
        assert len(delivers) == 2 and {s["parent"] for s in delivers} == {by_name["notifier.route"]["id"]}
    finally:
        await collector.stop()
