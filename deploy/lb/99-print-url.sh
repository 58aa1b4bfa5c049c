#!/bin/sh
# Run by the nginx image's entrypoint just before nginx starts, which compose does only once
# both edges are healthy: the chat is ready at this address.
cat <<EOF

  ==========================================================
    Chat is up:   ${CHAT_PUBLIC_URL:-http://localhost:8080/}
    Traces:       ${JAEGER_PUBLIC_URL:-http://localhost:16686/}
  ==========================================================

EOF
