"""An OpenAI-compatible HTTP API over a generation engine, with each token's temperature and top-p.

``openai_api`` parses and checks requests and builds responses (pure functions); ``app`` routes a request
to the engine and gathers or streams its tokens (no sockets); ``server`` is the HTTP shell (standard library).
"""
