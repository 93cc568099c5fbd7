# One image for every service; the command chooses which: chat-gateway, chat-writer,
# chat-notifier, chat-query or chat-migrate.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY gateway ./gateway
COPY writer ./writer
COPY notifier ./notifier
COPY query ./query
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home chat
COPY --from=build /install /usr/local
USER 10001
ENV PYTHONUNBUFFERED=1
# exec form: the service is PID 1's only child and receives SIGTERM directly
ENTRYPOINT ["/usr/bin/env", "--"]
CMD ["chat-gateway"]
