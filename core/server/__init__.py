"""The HTTP server: FastAPI + TokenizerManager in the main process, scheduler and detokenizer
subprocesses over ZMQ (docs/server.md). Entry point: `jackfield.server.launch.launch_server`."""
