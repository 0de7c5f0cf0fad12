"""The evaluation core: models, templating, conditions, extraction and the engine.

Transport-free: nothing here imports grpc, protobuf, httpx, aiohttp or OpenTelemetry (an
import-linter contract says so). It receives `send` and lookups as parameters and returns an
`Outcome`, so it can be tested, fuzzed and benchmarked alone.
"""
